"""LayerNorm and RMSNorm blocks."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import REQUIRED, Block, ForwardContext, ParamSpec


def _check_eps(opts: dict[str, Any]) -> None:
    eps = opts["eps"]  # a negative epsilon can make the square root NaN
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ConfigError(f"norm eps must be a number >= 0, got {eps!r}")


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (float32 throughout)."""
    inv_d = np.float32(1.0 / x.shape[-1])
    if x.ndim == 2 and x.shape[0] == 1:  # one token (decoding): scalar work, two array passes
        v = x[0]
        r = np.float32(1.0) / np.sqrt(np.dot(v, v) * inv_d + np.float32(eps))
        return x * (weight * r) if weight is not None else x * r
    ms = np.einsum("...d,...d->...", x, x)[..., None]  # sum of squares, no [T, D] temporary
    ms *= inv_d
    ms += np.float32(eps)
    np.sqrt(ms, out=ms)
    out = x / ms
    if weight is not None:
        out *= weight
    return out


def layer_norm(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis."""
    mean = np.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(np.square(centred), axis=-1, keepdims=True)
    out = centred * (np.float32(1.0) / np.sqrt(var + np.float32(eps)))
    if weight is not None:
        out *= weight
    if bias is not None:
        out += bias
    return out


class RMSNorm(Block):
    """RMSNorm (Llama, Mistral, Granite): a learned scale, no bias, no centring."""

    OPTIONS = {"eps": REQUIRED, "dim": "$hidden_size"}

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        _check_eps(opts)
        return {"weight": ParamSpec((opts["dim"],))}

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        return rms_norm(x, self.p["weight"], self.opts["eps"])


class LayerNorm(Block):
    """LayerNorm (GPT-2, Falcon): learned scale and (optional) bias."""

    OPTIONS = {"eps": REQUIRED, "dim": "$hidden_size"}

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        _check_eps(opts)
        d = opts["dim"]
        return {"weight": ParamSpec((d,)), "bias": ParamSpec((d,), required=False)}

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        return layer_norm(x, self.p["weight"], self.p.get("bias"), self.opts["eps"])
