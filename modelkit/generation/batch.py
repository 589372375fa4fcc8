"""Continuous batching: sequences join and leave between steps; one forward decodes all of them.

Decoding is bound by reading the weights, so one step over B sequences costs far less than B
steps of one. :class:`BatchDecoder` keeps a set of sequences, each with its own cache, sampler
and options; :meth:`~BatchDecoder.step` picks one token for every active sequence and feeds
them all back through :meth:`modelkit.Model.decode_batch`. A sequence gives the same tokens and
(to float32 rounding) the same logits as it would alone, whatever else shares its steps::

    decoder = BatchDecoder(model, max_batch=8)
    a = decoder.add(prompt_a, max_new_tokens=32)
    b = decoder.add(prompt_b, temperature=0.8, seed=1)
    while decoder.active:
        for event in decoder.step():
            ...  # event.seq_id, event.token, event.logprob, event.finished, event.finish_reason

:meth:`~BatchDecoder.add_many` lets several sequences join at once, their prompts read together
in one batched prefill (:meth:`modelkit.Model.prefill_batch`); a server admits the requests that
arrived during a step so. :func:`generate_batch` (also ``Model.generate_batch``) is the offline
form: a list of prompts in, a list of new ids out. Not thread-safe: one thread adds, steps and removes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import GenerationError
from .sequence import BatchSequence, TokenEvent

if TYPE_CHECKING:
    from ..model import Cache, Model

__all__ = ["BatchDecoder", "TokenEvent", "generate_batch"]


class BatchDecoder:
    """Sequences join and leave between steps; one forward decodes all of them.

    ``max_batch`` bounds the active sequences (:meth:`add` refuses one more). A finished
    sequence leaves the batch in the step that finishes it; its cache stays readable with
    :meth:`cache_of` (to snapshot it) until the next :meth:`step` or its :meth:`remove`.
    ``n`` samples of one prompt read it once: add it, then add ``[]`` with
    ``cache=decoder.cache_of(first).snapshot()`` (and another seed) for each other sample.
    """

    def __init__(self, model: Model, max_batch: int = 16):
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise GenerationError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.model = model
        self.max_batch = max_batch
        self._active: dict[int, BatchSequence] = {}  # in joining order
        self._finished: dict[int, BatchSequence] = {}  # finished in the last step
        self._next_id = 0

    @property
    def active(self) -> list[int]:
        """Ids of the sequences still decoding, in the order they joined."""
        return list(self._active)

    @property
    def full(self) -> bool:
        """True when ``max_batch`` sequences are active (:meth:`add` would refuse another)."""
        return len(self._active) >= self.max_batch

    def add(self, prompt_ids: Sequence[int], *, cache: Cache | None = None, **options: Any) -> int:
        """Prefill ``prompt_ids`` and register a sequence; returns its id.

        With ``cache`` (from ``model.make_cache()`` or ``Cache.snapshot()``, not shared with any
        other sequence) the prompt ids are those after ``cache.tokens`` and the cache is
        extended (pass ``kept.snapshot()`` to leave a kept snapshot as it is); they may be empty
        when the cache kept its last logits (a snapshot of a batch sequence's cache does).
        Options as ``model.generate``: ``max_new_tokens`` (16), ``temperature``, ``top_k``,
        ``top_p``, ``min_p``, ``repetition_penalty``, ``seed``, ``stop_ids``, ``stop_strings``
        (events then carry text); and ``top_logprobs`` (k: each event carries the k most likely
        tokens) and ``text`` (events carry each token's text). The prompt is read here, before
        the call returns; the first token comes from the next :meth:`step`.
        """
        return self.add_many([prompt_ids], [cache], options)[0]

    def add_many(self, prompts: Sequence[Sequence[int]], caches: Sequence[Cache | None] | None = None,
                 options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Register several sequences whose prompts are read together, in one batched prefill
        (:meth:`modelkit.Model.prefill_batch`: the weights are read once for all of them, not
        once a prompt); returns their ids, in order. Each sequence gets what :meth:`add` would
        give it alone (the same logits to float32 rounding, the same greedy tokens).

        ``caches[i]`` (or None) is what :meth:`add`'s ``cache`` is to prompt i; ``options`` is
        one dict of :meth:`add`'s options for every prompt, or one dict per prompt. Every
        prompt and its options are checked before any is read: an error adds none of them."""
        prompts = list(prompts)
        caches = list(caches) if caches is not None else [None] * len(prompts)
        if isinstance(options, Mapping) or options is None:
            options = [dict(options or {})] * len(prompts)
        options = list(options)
        if not len(prompts) == len(caches) == len(options):
            raise GenerationError(f"add_many: {len(prompts)} prompts, {len(caches)} caches and "
                                  f"{len(options)} option sets")
        if len(self._active) + len(prompts) > self.max_batch:
            raise GenerationError(f"the batch is full ({self.max_batch} sequences); wait for one to finish")
        given = [c for c in caches if c is not None]
        if any(c is s.cache for c in given for s in self._active.values()):
            raise GenerationError("that cache belongs to an active sequence (snapshot it to share its state)")
        if len({id(c) for c in given}) != len(given):
            raise GenerationError("add_many: one cache is given twice (each sequence needs its own)")
        seqs = [BatchSequence(self.model, self._next_id + i, p, c, o)
                for i, (p, c, o) in enumerate(zip(prompts, caches, options))]
        reading = [seq for seq in seqs if seq.prompt]
        if len(reading) == 1:  # one prompt: the plain forward
            seq = reading[0]
            reading[0].start(self.model.forward(seq.prompt, seq.cache, last_only=True)[0])
        elif reading:
            rows = self.model.prefill_batch([seq.prompt for seq in reading], [seq.cache for seq in reading])
            for seq, row in zip(reading, rows):
                seq.start(row)
        self._next_id += len(seqs)
        for seq in seqs:
            self._active[seq.id] = seq
        return [seq.id for seq in seqs]

    def step(self) -> list[TokenEvent]:
        """One token for every active sequence, in joining order: each chooses from its logits,
        then every unfinished one is fed back in one batched forward (whose logits the next
        step chooses from). Sequences that finish leave the batch."""
        self._finished.clear()
        if not self._active:
            return []
        events = [seq.choose() for seq in self._active.values()]
        going = []
        for event in events:
            if event.finished:
                self._finished[event.seq_id] = self._active.pop(event.seq_id)
            else:
                going.append((self._active[event.seq_id], event.token))
        if going:
            logits = self.model.decode_batch(np.array([t for _, t in going], dtype=np.int64),
                                             [seq.cache for seq, _ in going])  # [B, vocab]
            for row, (seq, token) in zip(logits, going):
                seq.fed(token, row)
        if not self._active:
            self.model.end_batch()
        return events

    def remove(self, seq_id: int) -> None:
        """Take a sequence out of the batch now (its client is gone) and drop its cache. A
        sequence that already finished and was dropped is no error; an id never given is."""
        if not isinstance(seq_id, (int, np.integer)) or not 0 <= seq_id < self._next_id:
            raise KeyError(f"no sequence {seq_id!r} was ever added")
        self._active.pop(seq_id, None)
        self._finished.pop(seq_id, None)
        if not self._active:
            self.model.end_batch()

    def cache_of(self, seq_id: int) -> Cache:
        """The sequence's cache: its prompt and every token fed back so far (not a finishing
        token, which is never fed back), with the logits after them kept. Snapshot it
        (``Cache.snapshot()``) to keep that state beyond the sequence."""
        seq = self._active.get(seq_id) or self._finished.get(seq_id)
        if seq is None:
            raise KeyError(f"sequence {seq_id!r} is not in the batch (finished sequences stay until the "
                           f"next step)")
        return seq.cache


def generate_batch(model: Model, prompts: Sequence[Sequence[int]], *, max_batch: int = 16,
                   **options: Any) -> list[list[int]]:
    """New ids after each prompt, decoded together (at most ``max_batch`` at a time, the next
    prompt joining as soon as one finishes): for each prompt the ids ``model.generate`` gives
    it alone with the same options (an EOS or stop id that ends a sequence is its last id). The
    prompts that join in the same step are read in one batched prefill.
    Options as :meth:`BatchDecoder.add`, the same for every prompt (a ``seed`` seeds each
    sequence's own generator alike)."""
    prompts = list(prompts)
    cache = options.pop("cache", None)  # add's cache: a one-prompt call continuing it
    out: list[list[int]] = [[] for _ in prompts]
    decoder = BatchDecoder(model, max_batch)
    owner: dict[int, int] = {}  # sequence id -> prompt index
    waiting = iter(range(len(prompts)))
    pending = True
    while pending or decoder.active:
        joining = []
        while pending and len(decoder.active) + len(joining) < decoder.max_batch:
            index = next(waiting, None)
            if index is None:
                pending = False
                break
            joining.append(index)
        if joining:  # the prompts that join in the same step are read together
            added = decoder.add_many([prompts[i] for i in joining], [cache] * len(joining), options)
            for seq_id, index in zip(added, joining):
                owner[seq_id] = index
        for event in decoder.step():
            if event.finish_reason == "error":
                raise GenerationError(event.error)
            out[owner[event.seq_id]].append(event.token)
    return out
