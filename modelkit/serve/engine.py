"""The decoding engine the server drives: sequences join, one step advances every one of them.

:class:`Decoder` is the whole contract the scheduler (:mod:`modelkit.serve.scheduler`) relies on;
it is the interface of the library's batched decoder (``modelkit.generation.batch.BatchDecoder``),
which decodes all active sequences in one forward. :class:`SequentialDecoder` does the same job by
stepping each sequence's own cache with ``model.forward(ids, cache, last_only=True)`` one after
another: correct for every block kind, and what a block kind without a batched path uses.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Sequence

import numpy as np

from ..errors import GenerationError
from ..evaluation.logprobs import token_logprob
from ..generation.options import SamplingOptions
from ..generation.sampling import NonFiniteLogits, Sampler

if TYPE_CHECKING:
    from ..model import Cache, Model


class TokenEvent(NamedTuple):
    """One token of one sequence from a :meth:`Decoder.step`, as the library's batched decoder
    reports it: its log-probability under the model (before penalty, temperature and
    truncation); whether it ended the sequence, with ``finish_reason`` "stop" (an EOS or stop
    id), "length" (max_new_tokens, or the model's positions are full) or "error" (no token could
    be chosen: ``error`` says why, ``token`` is -1); the ``top_logprobs`` alternatives when the
    sequence asked for them; ``text`` is None here (the scheduler decodes text itself)."""

    seq_id: int
    token: int
    logprob: float
    finished: bool = False
    finish_reason: str | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    text: str | None = None
    error: str | None = None


class Decoder(Protocol):
    """What the scheduler drives. ``add`` prefills a prompt (continuing ``cache`` when given) and
    returns the new sequence's id; ``step`` picks one token for every active sequence and feeds
    it back; a finished sequence leaves ``active`` but its cache stays readable through
    ``cache_of`` until ``remove``; ``remove`` drops a sequence at once (a client gone)."""

    active: list[int]

    def add(self, prompt_ids: Sequence[int], *, cache: Cache | None = None, **options: Any) -> int: ...

    def step(self) -> list[TokenEvent]: ...

    def remove(self, seq_id: int) -> None: ...

    def cache_of(self, seq_id: int) -> Cache: ...


@dataclass
class _Sequence:
    cache: Cache
    sampler: Sampler
    logits: np.ndarray  # [V] the next token's logits
    max_new_tokens: int
    stops: set[int]
    k: int
    history: list[int] = field(default_factory=list)  # every id, for the repetition penalty
    produced: int = 0
    done: bool = False


class SequentialDecoder:
    """:class:`Decoder` over ``model.forward``: each active sequence is stepped on its own cache,
    one after another (one forward per sequence per step)."""

    def __init__(self, model: Model, max_batch: int = 16):
        self.model = model
        self.max_batch = max_batch
        self._seqs: dict[int, _Sequence] = {}
        self._ids = itertools.count()

    @property
    def active(self) -> list[int]:
        return [i for i, s in self._seqs.items() if not s.done]

    def add(self, prompt_ids: Sequence[int], *, cache: Cache | None = None, max_new_tokens: int = 16,
            temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
            min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
            stop_ids: Sequence[int] = (), top_logprobs: int = 0) -> int:
        """Prefill ``prompt_ids`` (after what ``cache`` holds) and return the sequence's id;
        ``top_logprobs=K`` gives each of its events the K most likely tokens."""
        if len(self.active) >= self.max_batch:
            raise GenerationError(f"the batch is full ({self.max_batch} sequences)")
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise GenerationError("the prompt is empty: give at least one token")
        options = SamplingOptions.resolve(self.model.generation_config, temperature=temperature, top_k=top_k,
                                          top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                          seed=seed)
        cache = cache if cache is not None else self.model.make_cache()
        logits = self.model.forward(prompt, cache, last_only=True)[-1]
        seq = _Sequence(cache, Sampler(options), logits, int(max_new_tokens),
                        set(self.model.eos_token_ids) | {int(i) for i in stop_ids}, int(top_logprobs),
                        history=list(cache.tokens) if options.repetition_penalty != 1.0 else [])
        seq_id = next(self._ids)
        self._seqs[seq_id] = seq
        return seq_id

    def step(self) -> list[TokenEvent]:
        """One token for every active sequence, each fed back through its own cache."""
        events = []
        limit = self.model.max_positions
        for seq_id in self.active:
            seq = self._seqs[seq_id]
            try:
                token = seq.sampler(seq.logits, seq.history)
            except NonFiniteLogits as exc:  # this sequence ends; the others go on
                seq.done = True
                events.append(TokenEvent(seq_id, -1, float("nan"), True, "error", error=str(exc)))
                continue
            info = token_logprob(seq.logits, token, seq.k)
            seq.produced += 1
            reason = ("stop" if token in seq.stops else "length" if seq.produced >= seq.max_new_tokens
                      or (limit is not None and seq.cache.length >= limit) else None)
            events.append(TokenEvent(seq_id, token, info.logprob, reason is not None, reason, info.top))
            if reason is not None:
                seq.done = True
                continue
            seq.logits = self.model.forward([token], seq.cache, last_only=True)[-1]
            if seq.sampler.options.repetition_penalty != 1.0:
                seq.history.append(token)
        return events

    def remove(self, seq_id: int) -> None:
        """Forget a sequence (finished or not); unknown ids are ignored."""
        self._seqs.pop(seq_id, None)

    def cache_of(self, seq_id: int) -> Cache:
        """The cache of a sequence that has not been removed: the prompt and every token fed back
        (all but a finished sequence's last token)."""
        return self._seqs[seq_id].cache


def default_decoder(model: Model, max_batch: int) -> Decoder:
    """The decoder the server drives. The library's batched decoder plugs in here
    (``return BatchDecoder(model, max_batch)``); this sequential one stays the fallback for
    models whose blocks have no batched path."""
    return SequentialDecoder(model, max_batch)
