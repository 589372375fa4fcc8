"""The KV caches of a running batch side by side, so that one decoding step's attention over B
sequences is one set of array operations instead of B.

Attending one new query over its own cache is a dozen small NumPy calls (the append, two
products, the softmax's passes); with sixteen sequences in each of thirty layers those calls,
not the arithmetic, were a quarter of a batched SmolLM2 step. :class:`KVSlotPool` keeps every
batched sequence's keys and values in slot ``i`` of one pair of arrays, and each sequence's
:class:`~modelkit.nn.kv_cache.KVCache` holds views of its slot, so the cache stays usable on its
own (one-sequence forwards, windows, snapshots, ``nbytes``). A sequence that leaves the batch
gets arrays of its own back the next time the pool sees a batch without it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import out_of_memory
from .kv_cache import KV_BLOCK, KVCache
from .softmax import soft_cap, softmax_inplace

# the pool is used only while no cache holds more positions than this: it removes per-call
# overhead, which longer caches' own reading outweighs (SmolLM2 shape, 16 sequences, 30 layers,
# attention alone: 32 positions 30.5 -> 15.4 ms a step, 512: 75.1 -> 66.2, 1000: 149 -> 143),
# and it bounds what the pool's growth (every slot at once, old and new arrays together) holds
POOL_POSITIONS = 1024
# slots are reserved in steps of this many (see modelkit_granite's SlotPool: a server's batch
# grows one sequence at a time)
SLOT_STEP = 16


class KVSlotPool:
    """Slot-stacked keys ``kt`` [S, KV, hd, cap] (transposed, as :class:`KVCache` stores them)
    and values ``v`` [S, KV, cap, hd] of one attention layer. Slots ``0..len(occupants)-1`` are
    in use; each occupant's positions are at the start of its slot, the rest of the slot holds
    zeros or earlier values (finite, and masked out of every score)."""

    def __init__(self, kv_heads: int, head_dim: int):
        self.kv, self.hd = kv_heads, head_dim
        self.kt = np.zeros((0, kv_heads, head_dim, 0), np.float32)
        self.v = np.zeros((0, kv_heads, 0, head_dim), np.float32)
        self.occupants: list[KVCache] = []

    def seat(self, caches: Sequence[KVCache]) -> np.ndarray:
        """Make ``caches`` exactly the pool's occupants, with room in every slot for one more
        position each, and return each one's slot, [B] int. Caches already seated keep their
        slot; caches no longer in the batch get arrays of their own back and their slots are
        filled from the end, so occupied slots stay 0..B-1."""
        b = len(caches)
        occupants = self.occupants
        if len(occupants) == b and all(c is o and c.v.base is self.v for c, o in zip(caches, occupants)):
            # the same batch as the last step, in the same order: the common case
            self._reserve(b, max(map(_room_for_one_more, caches)))
            return np.arange(b)
        wanted = {id(c) for c in caches}
        if len(wanted) != len(caches):
            raise ValueError("attention: the same cache twice in one batch")
        for slot in range(len(self.occupants) - 1, -1, -1):
            cache = self.occupants[slot]
            if cache.v.base is not self.v:  # (kt and v are re-allocated together)
                self._unseat(slot, detached=True)  # grown on its own since: its arrays are its own
            elif id(cache) not in wanted:
                self._unseat(slot)
        need = max((_room_for_one_more(c) for c in caches), default=0)
        seated = {id(c): i for i, c in enumerate(self.occupants)}
        newcomers = [c for c in caches if id(c) not in seated]
        self._reserve(len(self.occupants) + len(newcomers), need)
        for cache in newcomers:
            seated[id(cache)] = len(self.occupants)
            self._move_in(cache, len(self.occupants))
            self.occupants.append(cache)
        return np.fromiter((seated[id(c)] for c in caches), np.intp, len(caches))

    def _reserve(self, count: int, positions: int) -> None:
        """Room for ``count`` slots of ``positions`` each: on growth the arrays are re-allocated
        (held positions copied) and every occupant is re-pointed."""
        slots, cap = self.kt.shape[0], self.kt.shape[3]
        if count <= slots and positions <= cap:
            return
        if count > slots:
            slots = -(-count // SLOT_STEP) * SLOT_STEP
        if positions > cap:
            cap = -(-max(positions, cap + cap // 2) // KV_BLOCK) * KV_BLOCK
        try:
            kt = np.zeros((slots, self.kv, self.hd, cap), np.float32)
            v = np.zeros((slots, self.kv, cap, self.hd), np.float32)
        except MemoryError as exc:
            raise out_of_memory(f"growing a batch's KV caches to {slots} x {cap:,} positions", exc) from None
        for slot, cache in enumerate(self.occupants):
            held = cache.length - cache.offset
            kt[slot, :, :, :held] = self.kt[slot, :, :, :held]
            v[slot, :, :held] = self.v[slot, :, :held]
        self.kt, self.v = kt, v
        for slot, cache in enumerate(self.occupants):
            self._point(cache, slot)

    def _point(self, cache: KVCache, slot: int) -> None:
        """Rebind ``cache``'s arrays to views of ``slot``."""
        cache.kt = self.kt[slot]
        cache.k = cache.kt.transpose(0, 2, 1)
        cache.v = self.v[slot]

    def _move_in(self, cache: KVCache, slot: int) -> None:
        """Copy ``cache``'s held positions into ``slot`` and point it there."""
        held = cache.length - cache.offset
        self.kt[slot, :, :, :held] = cache.kt[:, :, :held]
        self.v[slot, :, :held] = cache.v[:, :held]
        self._point(cache, slot)

    def _unseat(self, slot: int, detached: bool = False) -> None:
        """Give the occupant of ``slot`` arrays of its own (unless it already has them, having
        grown them in a forward of its own) and fill the slot from the last one."""
        cache = self.occupants[slot]
        if not detached:
            held = cache.length - cache.offset
            cap = -(-(held + 1) // KV_BLOCK) * KV_BLOCK
            kt = np.empty((self.kv, self.hd, cap), np.float32)
            kt[:, :, :held] = cache.kt[:, :, :held]
            v = np.empty((self.kv, cap, self.hd), np.float32)
            v[:, :held] = cache.v[:, :held]
            cache.kt, cache.k, cache.v = kt, kt.transpose(0, 2, 1), v
        last = len(self.occupants) - 1
        if slot != last:
            moved = self.occupants[last]
            held = moved.length - moved.offset
            self.kt[slot, :, :, :held] = self.kt[last, :, :, :held]
            self.v[slot, :, :held] = self.v[last, :, :held]
            self.occupants[slot] = moved
            self._point(moved, slot)
        self.occupants.pop()

    # -- one decoding step of every occupant ---------------------------------------------------

    def append(self, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """One new key and value per slot, ``k``/``v`` [B, KV, hd] in slot order, written at each
        occupant's end; returns each slot's held positions after it, [B] int. A windowed cache
        whose slot is full drops the positions no query can see first, as its own append does."""
        b = k.shape[0]
        caches = self.occupants[:b]
        for cache in caches:
            if cache.window is not None and cache.length - cache.offset + 1 > self.v.shape[2]:
                cache.drop_unseen()
        held = np.fromiter((c.length - c.offset for c in caches), np.intp, b)
        slots = np.arange(b)
        self.kt[slots, :, :, held] = k  # [B, KV, hd] (the advanced axes lead)
        self.v[slots, :, held] = v
        for cache in caches:
            cache.length += 1
        return held + 1

    def attend(self, q: np.ndarray, held: np.ndarray, window: int | None,
               softcap: float | None) -> np.ndarray:
        """Queries ``q`` [B, KV, group, hd] (scaled, in slot order) over each slot's first
        ``held[i]`` positions, the last ``window`` of them with a window -> [B, KV, group, hd]:
        every slot read to the longest one's length, the positions past a slot's own masked."""
        b = q.shape[0]
        n = int(held.max())
        scores = q @ self.kt[:b, :, :, :n]  # [B, KV, group, hd] @ [B, KV, hd, n] -> [B, KV, group, n]
        if softcap is not None:
            soft_cap(scores, softcap)
        positions = np.arange(n)
        hidden = positions[None, :] >= held[:, None]  # [B, n]: past each slot's end (other values)
        if window is not None:
            hidden |= positions[None, :] < (held - window)[:, None]
        if hidden.any():
            np.copyto(scores, np.float32(-np.inf), where=hidden[:, None, None, :])
        softmax_inplace(scores)
        return scores @ self.v[:b, :, :n]  # [B, KV, group, n] @ [B, KV, n, hd] -> [B, KV, group, hd]


def pools_well(caches: Sequence[KVCache]) -> bool:
    """Whether seating ``caches`` side by side costs little: every slot holds (and a step
    reads) as many positions as the longest cache, so the pool is used only while that padding
    is at most the caches' own positions and a block per slot. One long conversation among
    short ones attends row by row instead, each cache sized to itself, as does any batch with a
    cache past ``POOL_POSITIONS``."""
    held = [c.length - c.offset for c in caches]
    longest = max(held)
    return longest <= POOL_POSITIONS and len(held) * longest <= 2 * sum(held) + len(held) * KV_BLOCK


def _room_for_one_more(cache: KVCache) -> int:
    """Positions ``cache``'s slot must hold: what it holds and one more, except that a windowed
    cache holding a window or more drops what no query can see before it appends."""
    held = cache.length - cache.offset
    if cache.window is not None and held >= cache.window:
        return held  # the append drops to window - 1 first
    return held + 1
