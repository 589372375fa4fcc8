"""Log-probabilities of tokens under a logits row: what servers report as ``logprobs``."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis of ``logits`` [..., V], float32 and stable (the
    maximum subtracted before exp); a new array."""
    z = logits.astype(np.float32, copy=True)
    z -= z.max(axis=-1, keepdims=True)
    with np.errstate(under="ignore"):
        z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def _shift(row: np.ndarray) -> tuple[np.float32, np.float32]:
    """(max, log of sum(exp(row - max))) of a logits row [V], in float32."""
    top = row.max()
    with np.errstate(under="ignore"):
        return top, np.log(np.exp(row - top).sum(dtype=np.float32))


def token_logprob(row: np.ndarray, token: int) -> float:
    """The log-probability of ``token`` under the logits ``row`` [V] (float32, stable)."""
    top, lse = _shift(row)
    return float(np.float32(row[token] - top) - lse)


def top_logprobs(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely (token, log-probability) pairs of the logits ``row`` [V], best first
    (ties to the lower id)."""
    k = min(int(k), row.size)
    if k <= 0:
        return []
    best = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
    best = best[np.lexsort((best, -row[best]))]  # by logit, descending, then by id
    top, lse = _shift(row)
    return [(int(t), float(np.float32(row[t] - top) - lse)) for t in best.tolist()]
