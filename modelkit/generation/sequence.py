"""One sequence of a running batch: its cache, its sampler and where it stands.

:class:`BatchSequence` holds what :class:`modelkit.generation.batch.BatchDecoder` keeps per
sequence: the cache (prefilled when the sequence joins), the logits its next token is chosen
from, its own :class:`~modelkit.generation.sampling.Sampler` (its own seeded generator), its stop
ids, how many tokens it may still add, and, when asked, the text of each token and stop strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import GenerationError, TokenizerError
from .diagnose import explain_non_finite
from ..evaluation.logprobs import token_logprob
from .options import SamplingOptions
from .sampling import NonFiniteLogits, Sampler
from .stop import StopStrings

if TYPE_CHECKING:
    from ..model import Cache, Model

DEFAULT_MAX_NEW_TOKENS = 16  # as model.generate
# the sampling options a sequence takes, as model.generate names them
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")


@dataclass(frozen=True)
class TokenEvent:
    """One token a batched step chose for one sequence.

    ``logprob``: its log-probability under the model's logits (float32, stable log-softmax,
    before any temperature or truncation); ``finished``: the sequence has left the batch, with
    ``finish_reason`` ``"stop"`` (an EOS, a stop id or a stop string) or ``"length"``
    (``max_new_tokens``, or the model's learned positions are full), or ``"error"`` when no
    token could be chosen (non-finite logits: ``error`` says where they began, ``token`` is -1
    and ``logprob`` NaN; the other sequences go on). ``top_logprobs``: the
    most likely (token, logprob) pairs when the sequence asked for them; ``text``: the text this
    token adds when the sequence decodes text (held-back partial characters come later, a stop
    string and what follows it never), else None.
    """

    seq_id: int
    token: int
    logprob: float
    finished: bool = False
    finish_reason: str | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    text: str | None = None
    error: str | None = None


class BatchSequence:
    """A sequence in a batch, from its prefill to its last token (see the module docstring)."""

    def __init__(self, model: Model, seq_id: int, prompt_ids: Sequence[int], cache: Cache | None,
                 options: dict[str, Any]):
        options = dict(options)
        max_new = options.pop("max_new_tokens", None)
        stop_ids = options.pop("stop_ids", None)
        stop_strings = options.pop("stop_strings", None)
        self.top_k_logprobs = _count("top_logprobs", options.pop("top_logprobs", 0))
        want_text = bool(options.pop("text", False))
        sampling = {k: options.pop(k) for k in SAMPLING if k in options}
        if options:
            raise GenerationError(f"unknown generation option(s): {', '.join(sorted(options))}")
        self.id = seq_id
        self.model = model
        self.max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else max_new
        if not isinstance(self.max_new, (int, np.integer)) or isinstance(self.max_new, bool) or self.max_new < 1:
            raise GenerationError(f"max_new_tokens must be at least 1, got {max_new!r}")
        self.sampler = Sampler(SamplingOptions.resolve(model.generation_config, **sampling))
        extra = [stop_ids] if isinstance(stop_ids, (int, np.integer)) else list(stop_ids or ())
        self.stops = set(model.eos_token_ids) | {int(i) for i in extra}
        self.cache, self.prompt = self._prepare(prompt_ids, cache)
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        self.stop_strings = stop_strings
        if (want_text or stop_strings) and model.tokenizer is None:
            raise TokenizerError("the model has no tokenizer.json, so its output cannot be decoded to text")
        self.want_text = want_text
        if not self.prompt:
            self.start(None)

    def start(self, row: np.ndarray | None) -> None:
        """Begin after the prompt is read: ``row`` [vocab] is the logits after its last token
        (None when the prompt was empty and the cache kept them); the next token is chosen
        from them."""
        if row is not None:
            self.cache.keep_logits(row)
        self.logits = self.cache.next_logits()
        self.new_tokens = 0
        self.history = None
        if self.sampler.options.repetition_penalty != 1.0:  # every id seen, in one buffer
            self.history = np.empty(len(self.cache.tokens) + self.max_new, dtype=np.intp)
            self.history[:len(self.cache.tokens)] = self.cache.tokens
        self.seen = len(self.cache.tokens)
        self.decoder = self.matcher = None
        if self.want_text or self.stop_strings:
            from ..text.decoding import IncrementalDecoder

            self.decoder = IncrementalDecoder(self.model.tokenizer, context=self.cache.tokens[-8:])
            self.matcher = StopStrings(self.stop_strings) if self.stop_strings else None

    def _prepare(self, prompt_ids: Sequence[int], cache: Cache | None) -> tuple[Cache, list[int]]:
        """The cache the prompt continues (a new one, or ``cache``) and the prompt's ids,
        checked; the prompt is read by the caller (alone, or with others in one batched
        prefill), which then calls :meth:`start` with its last logits."""
        model = self.model
        prompt = [int(i) for i in prompt_ids]
        if cache is not None and not hasattr(cache, "tokens"):
            raise GenerationError("cache must come from model.make_cache() or Cache.snapshot()")
        cache = cache if cache is not None else model.make_cache()
        limit = model.max_positions
        if limit is not None and cache.length + len(prompt) > limit:
            raise GenerationError(f"the prompt has {cache.length + len(prompt)} tokens; this model has {limit} "
                                  f"learned positions, so it cannot read more than {limit} tokens")
        if not prompt and cache.next_logits() is None:
            raise GenerationError("the prompt is empty: give at least one token (or a cache whose last "
                                  "logits were kept, such as a batch sequence's)")
        if prompt:
            bad = [i for i in prompt if not 0 <= i < model.vocab_size]
            if bad:
                raise GenerationError(f"token id {bad[0]} is outside the vocabulary (0..{model.vocab_size - 1})")
        return cache, prompt

    def choose(self) -> TokenEvent:
        """Pick the next token from the kept logits; the event says whether the sequence ends."""
        row = self.logits
        try:
            token = self.sampler(row, self.history[:self.seen] if self.history is not None else ())
        except NonFiniteLogits:
            message = explain_non_finite(self.model, self.cache.tokens)
            return TokenEvent(self.id, -1, float("nan"), True, "error", error=message)
        self.new_tokens += 1
        limit = self.model.max_positions
        reason = None
        if token in self.stops:
            reason = "stop"
        elif self.new_tokens == self.max_new or (limit is not None and self.cache.length >= limit):
            reason = "length"  # out of tokens, or no position embedding left to feed it back at
        text = None
        if self.decoder is not None:
            text, hit = self._text(token, reason is not None)
            if hit:
                reason = "stop"
        scored = token_logprob(row, token, self.top_k_logprobs)
        return TokenEvent(self.id, token, scored.logprob, reason is not None, reason, scored.top, text)

    def _text(self, token: int, last: bool) -> tuple[str, bool]:
        """The text ``token`` adds (all that is held back when it is the last), and whether it
        completes a stop string (the text then ends before it)."""
        text = self.decoder.add(token)
        if last:
            text += self.decoder.flush()
        if self.matcher is None:
            return text, False
        text, hit = self.matcher.feed(text)
        if last and not hit:
            text += self.matcher.flush()
        return text, hit

    def fed(self, token: int, row: np.ndarray) -> None:
        """``token`` is now in the cache and ``row`` [V] its logits: the next choice's."""
        self.logits = row
        self.cache.keep_logits(row)
        if self.history is not None:
            self.history[self.seen] = token
        self.seen += 1


def _count(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise GenerationError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)
