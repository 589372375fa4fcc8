"""The key/value cache of one attention layer, grown in blocks and updated in place.

A layer with a sliding window keeps only the keys its queries can still see: the last
``window - 1`` positions before a new piece, plus the piece. Its buffers are bounded by the
window and the longest piece, not by the sequence.
"""

from __future__ import annotations

import numpy as np

from ..errors import out_of_memory

# the KV cache grows in steps of this many positions (and at least by half its size)
KV_BLOCK = 256


class KVCache:
    """Keys and values of one attention layer: ``k`` and ``v`` read as [kv_heads, capacity,
    head_dim] each, position ``p`` of the sequence at index ``p - offset``.

    The keys are stored transposed, ``kt`` [kv_heads, head_dim, capacity] (``k`` is a view of
    it), so that query-key scores are a plain matrix product: BLAS is several times slower on
    the transposed operand for a few query rows, which is every decoding step.
    Capacity grows in blocks as the sequence grows: never the whole context up front, and a
    token's append writes only its own positions (the arrays are re-allocated only on growth).
    With a ``window``, positions no later query can see are dropped when room runs out: the
    kept ``window - 1`` move to the front (one copy per ``window`` decoded tokens or so), so
    ``offset`` is the position of index 0 and the buffers never exceed about two windows and
    a prefill piece.
    """

    def __init__(self, kv_heads: int, head_dim: int, window: int | None = None):
        self.kt = np.empty((kv_heads, head_dim, 0), np.float32)
        self.k = self.kt.transpose(0, 2, 1)
        self.v = np.empty((kv_heads, 0, head_dim), np.float32)
        self.length = 0  # positions seen
        self.offset = 0  # the position stored at index 0
        self.window = window

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Add ``k``, ``v`` given as [T, kv_heads, head_dim] at the end."""
        t = k.shape[0]
        if self.window is not None and self.length - self.offset + t > self.v.shape[1]:
            self.drop_unseen()
        held = self.length - self.offset
        need = held + t
        if need > self.v.shape[1]:
            cap = max(need, self.v.shape[1] + self.v.shape[1] // 2)
            if self.window is not None:  # room for a window of decoding before the next drop
                # (a window longer than the sequence so far is no window yet: room grows with
                # the sequence, never with the window's size alone)
                cap = max(cap, need + min(self.window, need))
            cap = -(-cap // KV_BLOCK) * KV_BLOCK
            kv, hd = self.v.shape[0], self.v.shape[2]
            try:
                kt = np.empty((kv, hd, cap), np.float32)
                kt[:, :, :held] = self.kt[:, :, :held]
                v_new = np.empty((kv, cap, hd), np.float32)
                v_new[:, :held] = self.v[:, :held]
            except MemoryError as exc:
                raise out_of_memory(f"growing the KV cache to {cap:,} positions ({2 * kv * hd * cap * 4:,} "
                                    f"bytes for keys and values)", exc) from None
            self.kt, self.k, self.v = kt, kt.transpose(0, 2, 1), v_new
        self.kt[:, :, held:need] = k.transpose(1, 2, 0)
        self.v[:, held:need] = v.transpose(1, 0, 2)
        self.length += t

    def drop_unseen(self) -> None:
        """Move the last ``window - 1`` positions to the front: the next query sees no earlier one."""
        keep_from = max(self.offset, self.length - self.window + 1)
        if keep_from == self.offset:
            return
        a, b = keep_from - self.offset, self.length - self.offset
        self.kt[:, :, : b - a] = self.kt[:, :, a:b].copy()
        self.v[:, : b - a] = self.v[:, a:b].copy()
        self.offset = keep_from

    def snapshot(self) -> "KVCache":
        """An independent copy holding only the stored positions (capacity = what is filled;
        appending to it grows it as any cache grows)."""
        held = self.length - self.offset
        snap = KVCache(self.v.shape[0], self.v.shape[2], self.window)
        snap.kt = self.kt[:, :, :held].copy()  # [KV, hd, held], C-contiguous
        snap.k = snap.kt.transpose(0, 2, 1)
        snap.v = self.v[:, :held].copy()
        snap.length, snap.offset = self.length, self.offset
        return snap

    def nbytes(self) -> int:
        """Bytes allocated (capacity, not length)."""
        return self.kt.nbytes + self.v.nbytes
