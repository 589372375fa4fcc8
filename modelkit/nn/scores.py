"""What attention adds to its scores and bounds them by: ALiBi's slopes, the causal mask of a
block of queries, and the norms that bound a block's scores (for the softmax without a shift)."""

from __future__ import annotations

import math

import numpy as np


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes as in the BLOOM/Falcon reference (geometric, with extras for non powers of 2)."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, closest + 1)]
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, num_heads - closest)
        slopes += [extra_base ** p for p in range(1, 1 + 2 * remaining, 2)]
    return np.asarray(slopes, dtype=np.float32)


def largest_norm(rows: np.ndarray) -> float:
    """The largest Euclidean norm of the rows of ``rows`` [n, d]."""
    return float(np.sqrt(np.einsum("rd,rd->r", rows, rows).max()))


# 0 on and below the diagonal, -inf above; its top-left [n, n] corner serves any smaller n
# (made for attention's default query block of 256, grown for a larger one)
_CAUSAL_BIAS = np.triu(np.full((256, 256), -np.inf, np.float32), 1)


def causal_bias(n: int) -> np.ndarray:
    """[n, n] float32 additive mask hiding each query's future keys."""
    global _CAUSAL_BIAS
    if n > _CAUSAL_BIAS.shape[0]:  # a query_block above the default
        _CAUSAL_BIAS = np.triu(np.full((n, n), -np.inf, np.float32), 1)
    return _CAUSAL_BIAS[:n, :n]
