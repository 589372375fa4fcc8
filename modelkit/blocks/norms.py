"""LayerNorm and RMSNorm blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import REQUIRED, Block, ForwardContext, ParamSpec


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (float32 throughout)."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    out = x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps)))
    return out * weight if weight is not None else out


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
        return {"weight": ParamSpec((opts["dim"],))}

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        return rms_norm(x, self.p["weight"], self.opts["eps"])


class LayerNorm(Block):
    """LayerNorm (GPT-2, Falcon): learned scale and (optional) bias."""

    OPTIONS = {"eps": REQUIRED, "dim": "$hidden_size"}

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        d = opts["dim"]
        return {"weight": ParamSpec((d,)), "bias": ParamSpec((d,), required=False)}

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        return layer_norm(x, self.p["weight"], self.p.get("bias"), self.opts["eps"])
