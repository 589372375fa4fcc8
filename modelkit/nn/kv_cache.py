"""The key/value cache of one attention layer, grown in blocks and updated in place."""

from __future__ import annotations

import numpy as np

# the KV cache grows in steps of this many positions (and at least by half its size)
KV_BLOCK = 256


class KVCache:
    """Keys and values of one attention layer: ``k`` and ``v`` read as [kv_heads, capacity,
    head_dim] each.

    The keys are stored transposed, ``kt`` [kv_heads, head_dim, capacity] (``k`` is a view of
    it), so that query-key scores are a plain matrix product: BLAS is several times slower on
    the transposed operand for a few query rows, which is every decoding step.
    Capacity grows in blocks as the sequence grows: never the whole context up front, and a
    token's append writes only its own positions (the arrays are re-allocated only on growth).
    """

    def __init__(self, kv_heads: int, head_dim: int):
        self.kt = np.empty((kv_heads, head_dim, 0), np.float32)
        self.k = self.kt.transpose(0, 2, 1)
        self.v = np.empty((kv_heads, 0, head_dim), np.float32)
        self.length = 0

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Add ``k``, ``v`` given as [T, kv_heads, head_dim] at the end."""
        t = k.shape[0]
        need = self.length + t
        if need > self.v.shape[1]:
            cap = max(need, self.v.shape[1] + self.v.shape[1] // 2)
            cap = -(-cap // KV_BLOCK) * KV_BLOCK
            kv, hd = self.v.shape[0], self.v.shape[2]
            kt = np.empty((kv, hd, cap), np.float32)
            kt[:, :, : self.length] = self.kt[:, :, : self.length]
            v_new = np.empty((kv, cap, hd), np.float32)
            v_new[:, : self.length] = self.v[:, : self.length]
            self.kt, self.k, self.v = kt, kt.transpose(0, 2, 1), v_new
        self.kt[:, :, self.length:need] = k.transpose(1, 2, 0)
        self.v[:, self.length:need] = v.transpose(1, 0, 2)
        self.length = need

    def nbytes(self) -> int:
        """Bytes allocated (capacity, not length)."""
        return self.kt.nbytes + self.v.nbytes
