"""The attention softmax (stable, in place, never subnormal) and the soft cap of scores before it."""

from __future__ import annotations

import numpy as np

# exp() of a score this far below the row's maximum is < 1e-26: negligible as a weight, but
# below about -87 it is a subnormal float32, and subnormals make exp and the matrix product
# with the values many times slower (tens of times, on rows where most keys are far below the
# maximum, which peaked attention and masked keys give). Scores are floored here first.
EXP_FLOOR = np.float32(-60.0)


def softmax_inplace(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable (max subtracted), written into ``scores``.

    Weights below exp(-60) relative to the largest come out as exp(-60) (masked keys
    included): a change of < 1e-26 per key that keeps every value a normal float."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.maximum(scores, EXP_FLOOR, out=scores)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def soft_cap(scores: np.ndarray, cap: float) -> None:
    """Soft-cap scores in place: cap * tanh(scores / cap)."""
    scores /= cap
    np.tanh(scores, out=scores)
    scores *= cap
