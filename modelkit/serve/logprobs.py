"""The log-probabilities of a prompt's own tokens (``echo`` in completions, which evaluation
harnesses read as log-likelihoods), from the model's logits through the library's stable
log-softmax (:mod:`modelkit.evaluation.logprobs`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..evaluation.logprobs import TokenLogprob, token_logprob

if TYPE_CHECKING:
    from ..model import Cache, Model


def prompt_logprobs(model: Model, ids: Sequence[int], k: int, cache: Cache) -> list[TokenLogprob | None]:
    """For each prompt token, its :class:`TokenLogprob` given the tokens before it (with ``k``
    alternatives); None for the first token, which nothing predicts.

    Runs ``ids[:-1]`` through ``cache`` (which then holds them), in pieces of the model's
    ``prefill_chunk``, so the caller continues with the last token and loses no work.
    """
    out: list[TokenLogprob | None] = [None]
    chunk = model.prefill_chunk
    body = list(ids[:-1])
    for start in range(0, len(body), chunk):
        logits = model.forward(body[start:start + chunk], cache)  # [n, V]
        for row, target in enumerate(ids[start + 1:start + 1 + logits.shape[0]]):
            out.append(token_logprob(logits[row], int(target), k))
    return out
