"""Batched prefill: the prompts of several sequences read in one forward.

Reading a prompt is bound by the weights as decoding is when the prompt is short: the product
of a few rows with a weight matrix costs nearly what one row's does. So the prompts of B
sequences go through the model together: their tokens are concatenated as rows, token-wise
work (projections, MLPs, experts, norms) runs once over all of them, and per-sequence work
(attention over each sequence's own cache at its own positions, the Mamba2 conv and scan) runs
on each sequence's slice (:meth:`modelkit.nn.block.Block.forward_ragged`). A forward holds at
most ``model.prefill_chunk`` rows, so memory stays bounded however long the prompts: a long
prompt is read in pieces over several forwards, the shorter ones beside its first piece.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .batched import layer_forward_ragged
from .errors import GenerationError
from .nn.block import ForwardContext

if TYPE_CHECKING:
    from .model import Cache, Model


def prefill_batch(model: Model, prompts: Sequence[Sequence[int] | np.ndarray], caches: Sequence[Cache]) -> np.ndarray:
    """Read ``prompts[i]`` into ``caches[i]`` (continuing what it holds) for every i, all in the
    same forwards; returns the logits after each prompt's last token, ``[B, vocab]``. Row i
    equals ``model.forward(prompts[i], caches[i], last_only=True)[0]`` up to float32 rounding.
    Every prompt is checked before any is read."""
    ids = [model._check_ids(p) for p in prompts]
    if len(ids) != len(caches):
        raise GenerationError(f"prefill_batch: {len(ids)} prompts for {len(caches)} caches")
    if len({id(c) for c in caches}) != len(caches):
        raise GenerationError("prefill_batch: one cache appears twice (each sequence needs its own)")
    for p, cache in zip(ids, caches):
        if p.size == 0:
            raise GenerationError("prefill_batch: an empty prompt has no last token to give logits for")
        if model.pos_embed is not None and cache.length + p.size > model.pos_embed.shape[0]:
            raise GenerationError(f"sequence of {cache.length + p.size} tokens is longer than the model's "
                                  f"{model.pos_embed.shape[0]} learned positions")
    out = np.empty((len(ids), model.vocab_size), np.float32)
    done = [0] * len(ids)  # tokens of each prompt read so far
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        while True:
            pieces = _next_pieces(ids, done, model.prefill_chunk)
            if not pieces:
                return out
            h = _forward_pieces(model, [(ids[i][a:b], caches[i]) for i, a, b in pieces])
            ends = np.cumsum([b - a for _, a, b in pieces]) - 1  # each piece's last row
            last = [(i, row) for (i, _, b), row in zip(pieces, ends) if b == ids[i].size]
            if last:  # the head only for the rows whose logits are wanted
                logits = model._head(h[[row for _, row in last]])
                for (i, _), row in zip(last, logits):
                    out[i] = row
            for i, a, b in pieces:
                done[i] = b


def _next_pieces(ids: list[np.ndarray], done: list[int], budget: int) -> list[tuple[int, int, int]]:
    """(sequence, start, stop) of what the next forward reads: the prompts' unread tokens in
    order, at most ``budget`` rows in all."""
    pieces = []
    for i, p in enumerate(ids):
        left = p.size - done[i]
        if left and budget:
            n = min(left, budget)
            pieces.append((i, done[i], done[i] + n))
            budget -= n
    return pieces


def _forward_pieces(model: Model, pieces: list[tuple[np.ndarray, Cache]]) -> np.ndarray:
    """The hidden states after the last layer of every piece's tokens, ``[sum T, hidden]``, the
    pieces' rows one after the other; each piece extends its cache."""
    ctxs = [ForwardContext(cache.length, piece.size) for piece, cache in pieces]
    positions = np.concatenate([np.arange(c.pos, c.pos + c.length) for c in ctxs])
    h = model._embed_rows(np.concatenate([piece for piece, _ in pieces]), positions)
    caches = [cache for _, cache in pieces]
    for i, layer in enumerate(model.layers):
        h = layer_forward_ragged(layer, h, [c.layers[i] for c in caches], ctxs)
    for piece, cache in pieces:
        cache.length += piece.size
        cache.tokens.extend(int(t) for t in piece)
    return h
