"""Llama 3's rope scaling settings recovered from the divisors llama.cpp keeps instead.

llama.cpp's converter turns ``rope_scaling: {rope_type: llama3, factor, low_freq_factor,
high_freq_factor, original_max_position_embeddings}`` into one divisor per rotary frequency
(``rope_freqs.weight``). config.json needs the settings. With ``u = 1 / wavelength`` of a
frequency, the scaling is ``d = 1`` where ``s(u) >= 1``, ``d = factor`` where ``s(u) <= 0`` and
``1 / d = (1 - s) / factor + s`` between, for the line ``s(u) = a * u + b`` with
``a = old_ctx / (high - low)`` and ``b = -low / (high - low)``. The divisors fix ``factor``, and
the line only through the frequencies they hold, so several settings give the same divisors;
any of them is the same model. The settings found are checked by recomputing the divisors.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .export import llama3_rope_freqs

# the divisors recomputed from the settings found must agree this closely (relative)
AGREEMENT = 1e-5


def llama3_scaling(divisors: np.ndarray, rope_theta: float, rot_dim: int,
                   original_context: int | None = None) -> dict[str, Any] | None:
    """``rope_scaling`` settings whose llama3 divisors equal ``divisors`` [rot_dim / 2], or
    None when no such settings exist (the divisors do not follow Llama 3's scaling)."""
    d = np.asarray(divisors, np.float64).ravel()
    if d.size != rot_dim // 2 or not np.all(np.isfinite(d)) or np.any(d <= 0):
        return None
    inv = 1.0 / (np.float32(rope_theta) ** (np.arange(0, rot_dim, 2, dtype=np.float32) / np.float32(rot_dim)))
    u = inv.astype(np.float64) / (2 * math.pi)  # 1 / wavelength
    factor = float(d.max())
    if factor <= 1 + AGREEMENT:
        return None  # no scaling at all: nothing for llama3 to say
    high = np.abs(d - 1) <= AGREEMENT  # kept as they are
    low = np.abs(d - factor) <= AGREEMENT * factor  # divided by the factor
    mid = ~high & ~low
    s = (1 / d - 1 / factor) / (1 - 1 / factor)  # the line's value where it is seen
    line = _line(u, s, high, low, mid)
    if line is None:
        return None
    a, b = line
    # the original context that makes low_freq_factor 1 (Llama 3's own choice, so its settings
    # come back as they were), unless the file says
    old = max(1, round(original_context or a / -b))
    width = old / a  # high - low
    low_factor = -b * width
    for digits in (6, None):  # round values that are round up to noise, if they still agree
        scaling = {"rope_type": "llama3", "factor": _round(factor, digits),
                   "low_freq_factor": _round(low_factor, digits),
                   "high_freq_factor": _round(low_factor + width, digits),
                   "original_max_position_embeddings": int(old)}
        again = llama3_rope_freqs(scaling, rot_dim, rope_theta).astype(np.float64)
        if np.max(np.abs(again - d) / d) <= AGREEMENT:
            return scaling
    return None


def _round(value: float, digits: int | None) -> float:
    return float(value) if digits is None else float(round(value, digits))


def _line(u: np.ndarray, s: np.ndarray, high: np.ndarray, low: np.ndarray,
          mid: np.ndarray) -> tuple[float, float] | None:
    """``(a, b)`` with ``a > 0`` and ``b < 0`` through the in-between points, at or above 1 on the
    kept ones and at or below 0 on the divided ones; None when the points allow no such line."""
    if mid.sum() >= 2:
        a, b = np.polyfit(u[mid], s[mid], 1)
    elif mid.sum() == 1:
        um, sm = float(u[mid][0]), float(s[mid][0])
        # b = sm - a * um; every other point bounds a from below (u above um: kept, below: divided)
        bounds = [sm / um]  # b < 0
        bounds += [(1 - sm) / (x - um) for x in u[high] if x > um]
        bounds += [sm / (um - x) for x in u[low] if x < um]
        if any(x < um for x in u[high]) or any(x > um for x in u[low]):
            return None
        a = 2 * max(bounds) if max(bounds) > 0 else 1.0 / um
        b = sm - a * um
    else:  # no point in between: put the band between the last divided and the first kept
        if u[high].size and u[low].size:
            u_kept, u_divided = float(u[high].min()), float(u[low].max())
            if u_kept <= u_divided:
                return None
            a = 1 / (u_kept - u_divided)
            b = -a * u_divided
        elif u[high].size:
            a, b = 2 / float(u[high].min()), -1.0
        else:
            a, b = 1 / (2 * float(u[low].max())), -1.0
    if not a > 0 or not b < 0:
        return None
    return float(a), float(b)
