"""Rotary position embeddings: inverse frequencies (default, linear, llama3) and cos/sin tables.

Two layouts pair the rotated channels: ``halves`` (Llama, GPT-NeoX: channel j with j + rot/2,
transformers' rotate_half) and ``interleaved`` (GPT-J, Cohere: channel 2m with 2m + 1,
rotate_every_two). Pair m turns by the same angle in both; only the channels differ.
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import Any

import numpy as np

from ..errors import ConfigError
from .options import float32_scalar

_tables: dict[tuple, "RotaryTable"] = {}
_tables_lock = threading.Lock()


def inverse_frequencies(dim: int, theta: float, scaling: dict[str, Any] | None) -> np.ndarray:
    """The [dim/2] rotary frequencies, adjusted by ``rope_scaling`` as transformers does.

    Computed in float32 like the reference, so long positions round the same way.
    """
    if isinstance(theta, bool) or not isinstance(theta, numbers.Real) or not theta > 0:
        raise ConfigError(f"rope_theta must be a positive number, got {theta!r}")
    if theta < 1:  # 1 / theta ** x then exceeds 1 and grows with the positions past float32's range
        raise ConfigError(f"rope_theta must be at least 1 (rotary bases are 10,000 and more), got {theta!r}")
    float32_scalar(theta, "rope_theta")
    inv = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32)
                                                   / np.float32(dim)))).astype(np.float32)
    kind = None
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return (inv / np.float32(_positive(scaling, kind, "factor"))).astype(np.float32)
    if kind == "llama3":
        factor = _positive(scaling, kind, "factor")
        low = _positive(scaling, kind, "low_freq_factor", 1.0)
        high = _positive(scaling, kind, "high_freq_factor", 4.0)
        old_ctx = _positive(scaling, kind, "original_max_position_embeddings")
        if not np.float32(high) > np.float32(low):
            raise ConfigError(f"rope scaling llama3: high_freq_factor ({high:g}) must exceed "
                              f"low_freq_factor ({low:g})")
        float32_scalar(float(np.float32(high) - np.float32(low)),
                       "rope scaling llama3: high_freq_factor - low_freq_factor", divisor=True)
        low_wavelen = old_ctx / low
        high_wavelen = old_ctx / high
        wavelen = np.float32(2 * math.pi) / inv
        scaled = np.where(wavelen > low_wavelen, inv / np.float32(factor), inv)
        smooth = (np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)
        smoothed = (np.float32(1.0) - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ConfigError(f"unsupported rope scaling type {kind!r}; modelkit supports default, linear "
                      f"and llama3")


def _positive(scaling: dict[str, Any], kind: str, key: str, default: float | None = None) -> float:
    # a missing or non-numeric value is a config problem, not a KeyError
    value = scaling.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ConfigError(f"rope scaling {kind}: '{key}' must be a positive number, got {value!r}")
    # every one of them divides something, in float32
    return float32_scalar(value, f"rope scaling {kind}: '{key}'", divisor=True)


class RotaryTable:
    """cos/sin for every position up to a capacity that doubles on demand; shared across layers.

    The tables are laid out for ``interleaved`` or halves pairs (see the module docstring)."""

    def __init__(self, inv_freq: np.ndarray, interleaved: bool = False):
        self.inv_freq = inv_freq
        self.interleaved = interleaved
        self.cos = np.empty((0, 2 * inv_freq.size), np.float32)
        self.sin = self.cos
        self.sin_signed = self.cos  # sin negated on each pair's first channel (see rotate)
        self._lock = threading.Lock()

    def get(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin as [stop - start, dim] for positions start..stop-1."""
        if stop > self.cos.shape[0]:
            with self._lock:
                if stop > self.cos.shape[0]:
                    n = max(stop, 2 * self.cos.shape[0], 256)
                    freqs = np.arange(n, dtype=np.float32)[:, None] * self.inv_freq[None, :]
                    if self.interleaved:  # pair m on channels 2m, 2m + 1
                        emb = np.repeat(freqs, 2, axis=-1)
                    else:  # pair m on channels m, m + dim/2
                        emb = np.concatenate([freqs, freqs], axis=-1)
                    sin = np.sin(emb)
                    signed = sin.copy()
                    first = signed[:, 0::2] if self.interleaved else signed[:, : self.inv_freq.size]
                    first *= np.float32(-1.0)
                    self.cos, self.sin, self.sin_signed = np.cos(emb), sin, signed
        return self.cos[start:stop], self.sin[start:stop]

    def get_signed(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """cos and signed sin (each pair's first channel negated) as [stop - start, dim], for
        :func:`rotate`."""
        self.get(start, stop)
        return self.cos[start:stop], self.sin_signed[start:stop]


def rotary_table(dim: int, theta: float, scaling: dict[str, Any] | None,
                 freq_factors: np.ndarray | None = None, interleaved: bool = False) -> RotaryTable:
    """The shared table for these settings (every layer of a model uses the same one).

    ``freq_factors`` [dim/2] divide the frequencies one by one: how llama.cpp stores Llama
    3.1+ scaling (a checkpoint's ``rope_freqs`` tensor) instead of its parameters.
    ``interleaved`` lays the table out for GPT-J's pairs (2m, 2m + 1)."""
    factors = None if freq_factors is None else np.asarray(freq_factors, np.float32).ravel()
    key = (dim, float(theta), repr(sorted((scaling or {}).items())),
           None if factors is None else factors.tobytes(), bool(interleaved))
    with _tables_lock:
        if key not in _tables:
            inv = inverse_frequencies(dim, theta, scaling)
            if factors is not None:
                if factors.shape != inv.shape or not np.all(factors > 0):
                    raise ConfigError(f"rope frequency factors: expected {inv.size} positive values, "
                                      f"got shape {list(factors.shape)}")
                with np.errstate(over="ignore"):
                    inv = (inv / factors).astype(np.float32)
                if not np.isfinite(inv).all():
                    raise ConfigError("rope frequency factors: a factor is so small (subnormal in float32) "
                                      "that the frequency it divides overflows")
            _tables[key] = RotaryTable(inv, bool(interleaved))
        return _tables[key]


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rot_dim: int) -> np.ndarray:
    """Rotate ``x [T, heads, head_dim]`` in place by halves (rotate_half style) on its first
    ``rot_dim`` channels; ``cos``/``sin`` are [T, rot_dim]."""
    half = rot_dim // 2
    x1 = x[..., :half].copy()
    x2 = x[..., half:rot_dim]
    c = cos[:, None, :half]
    s = sin[:, None, :half]
    # cos/sin repeat over both halves, so use one half of the table for each
    x[..., :half] = x1 * c - x2 * s
    x[..., half:rot_dim] = x2 * c + x1 * s
    return x


def rotate(x: np.ndarray, cos: np.ndarray, sin_signed: np.ndarray, rot_dim: int,
           interleaved: bool = False) -> np.ndarray:
    """Rotate ``x [T, heads, head_dim]`` in place on its first ``rot_dim`` channels, in four
    array operations (it runs per layer and token): x * cos + swap_pairs(x) * sin_signed.

    Halves (:func:`apply_rotary`'s layout): the swap exchanges the two halves and
    ``sin_signed`` = [-sin, sin]. Interleaved (GPT-J's rotate_every_two): the swap exchanges
    channels 2m and 2m + 1 and ``sin_signed`` = [-sin_0, sin_0, -sin_1, sin_1, ...]. Tables from
    :meth:`RotaryTable.get_signed` of the same layout. Bit for bit the same products as
    x * cos + rotate(x) * sin: negation is exact."""
    half = rot_dim // 2
    r = x[..., :rot_dim]
    if interleaved:  # channels (1, 0, 3, 2, ...)
        swapped = np.empty(r.shape, r.dtype)
        swapped[..., 0::2] = r[..., 1::2]
        swapped[..., 1::2] = r[..., 0::2]
    else:
        swapped = np.concatenate((r[..., half:], r[..., :half]), axis=-1)
    swapped *= sin_signed[:, None, :]
    r *= cos[:, None, :]
    r += swapped
    return x
