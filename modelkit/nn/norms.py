"""LayerNorm and RMSNorm blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from .block import Block, ForwardContext, ParamSpec
from .options import Option

# a negative epsilon can make the square root NaN
EPS = Option("float", doc="added to the variance before the square root", min=0.0)
DIM = Option("int", "$hidden_size", "width of the normalised vectors", min=1)


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

    TOKENWISE = True  # each row on its own (see Block.forward_batch)
    SPREADS = True

    OPTIONS = {"eps": EPS, "dim": DIM}
    PARAMETERS = ("weight",)

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        return {"weight": ParamSpec((opts["dim"],))}

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        self.weight = params["weight"]  # [dim]
        self.eps = self.options["eps"]

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        return rms_norm(x, self.weight, self.eps)


class LayerNorm(Block):
    """LayerNorm (GPT-2, Falcon): learned scale and (optional) bias; with ``affine: false``
    neither (OLMo)."""

    TOKENWISE = True  # each row on its own (see Block.forward_batch)
    SPREADS = True

    OPTIONS = {"eps": EPS, "dim": DIM,
               "affine": Option("bool", True, "a learned scale and bias (false: none, as OLMo)")}
    PARAMETERS = ("weight", "bias")

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        d = opts["dim"]
        if not opts["affine"]:
            return {}
        return {"weight": ParamSpec((d,)), "bias": ParamSpec((d,), required=False)}

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        self.weight, self.bias = params.get("weight"), params.get("bias")  # [dim] each
        self.eps = self.options["eps"]

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        return layer_norm(x, self.weight, self.bias, self.eps)
