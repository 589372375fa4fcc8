"""Measuring a model: token log-probabilities (:mod:`.logprobs`), perplexity over a text
(:mod:`.perplexity`), and layer-by-layer comparison with a reference (:mod:`.compare`,
:mod:`.reference`, :mod:`.transformers_run`). See docs/evaluation.md.

Nothing here is imported by ``import modelkit``; torch is imported only by
:mod:`.transformers_run`, and only when it runs.
"""
