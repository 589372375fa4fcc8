"""Feed-forward blocks: a plain two-layer MLP and the gated (SwiGLU-style) MLP."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .activations import ACTIVATIONS
from .base import REQUIRED, Block, ForwardContext, ParamSpec
from .linear import linear


def _activation(name: Any) -> Any:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def _adjacent_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``concatenate([a, b])`` without a copy when b's rows follow a's in one buffer (a
    checkpoint that stores gate and up fused, split at load), else None."""
    if (a.ndim != 2 or b.shape[1:] != a.shape[1:] or a.dtype != b.dtype or a.base is None
            or b.base is not a.base or not (a.flags.c_contiguous and b.flags.c_contiguous)):
        return None
    start = a.__array_interface__["data"][0]
    if b.__array_interface__["data"][0] != start + a.nbytes:
        return None
    base = np.asarray(a.base)
    if base.nbytes != a.nbytes + b.nbytes:  # the view must not keep a larger buffer alive
        return None
    offset = start - base.__array_interface__["data"][0]
    return np.ndarray((a.shape[0] + b.shape[0], a.shape[1]), a.dtype, buffer=base, offset=offset)


class MLP(Block):
    """down(act(up(x))) with optional biases (GPT-2, Falcon)."""

    OPTIONS = {"hidden_size": "$hidden_size", "intermediate_size": REQUIRED, "activation": REQUIRED}

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        d, i = opts["hidden_size"], opts["intermediate_size"]
        _activation(opts["activation"])
        return {"up.weight": ParamSpec((i, d)), "up.bias": ParamSpec((i,), False),
                "down.weight": ParamSpec((d, i)), "down.bias": ParamSpec((d,), False)}

    def setup(self) -> None:
        self.act = _activation(self.opts["activation"])

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        h = linear(x, self.p["up.weight"])  # [T, D] -> [T, I]
        if self.p.get("up.bias") is not None:
            h += self.p["up.bias"]
        y = linear(self.act(h), self.p["down.weight"])  # [T, I] -> [T, D]
        if self.p.get("down.bias") is not None:
            y += self.p["down.bias"]
        return y


class GatedMLP(Block):
    """down(act(gate(x)) * up(x)) (Llama, Mistral, Granite); gate and up fused at load."""

    OPTIONS = {"hidden_size": "$hidden_size", "intermediate_size": REQUIRED, "activation": "silu"}

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        d, i = opts["hidden_size"], opts["intermediate_size"]
        _activation(opts["activation"])
        return {"gate.weight": ParamSpec((i, d)), "up.weight": ParamSpec((i, d)),
                "down.weight": ParamSpec((d, i)), "gate.bias": ParamSpec((i,), False),
                "up.bias": ParamSpec((i,), False), "down.bias": ParamSpec((d,), False)}

    def setup(self) -> None:
        self.act = _activation(self.opts["activation"])
        self.i = self.opts["intermediate_size"]
        p = self.p
        self.w_gate_up = _adjacent_rows(p["gate.weight"], p["up.weight"])
        if self.w_gate_up is None:
            self.w_gate_up = np.concatenate([p["gate.weight"], p["up.weight"]], 0)
        gb, ub = p.get("gate.bias"), p.get("up.bias")
        self.b_gate_up = None
        if gb is not None or ub is not None:
            zeros = np.zeros(self.i, np.float32)
            self.b_gate_up = np.concatenate([gb if gb is not None else zeros, ub if ub is not None else zeros])
        p["gate.weight"] = p["up.weight"] = None  # the fused copy replaces them

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        gu = linear(x, self.w_gate_up)  # [T, D] -> [T, 2I]
        if self.b_gate_up is not None:
            gu += self.b_gate_up
        h = self.act(gu[:, : self.i])
        h *= gu[:, self.i:]
        y = linear(h, self.p["down.weight"])  # [T, I] -> [T, D]
        if self.p.get("down.bias") is not None:
            y += self.p["down.bias"]
        return y
