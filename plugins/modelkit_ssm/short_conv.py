"""The ``short_conv`` block kind: LFM2's gated short convolution, a token mixer with a tiny state.

    B, C, x = in_proj(h)          # [T, 3H] rows B | C | x
    y = C * conv(B * x)           # causal depthwise conv over time, d_conv taps per channel
    out = out_proj(y)

Each output sees only the last ``d_conv`` tokens (LFM2: 3), through input-dependent gates
before and after the convolution. Decoding keeps the last d_conv - 1 gated inputs ``B * x`` and
costs the same for every token.

Parameters (local names; PyTorch [out, in] layout, H = hidden_size)::

    in_proj.weight  [3H, H]     rows B | C | x
    in_proj.bias    [3H]        only with bias
    conv.weight     [H, d_conv] depthwise taps (the checkpoint's [H, 1, d_conv] reshaped)
    conv.bias       [H]         only with bias
    out_proj.weight [H, H]
    out_proj.bias   [H]         only with bias
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from modelkit import Block, ForwardContext, Option, ParamSpec, causal_conv, linear


class ShortConvState:
    """What a short-convolution layer remembers about one sequence: ``conv`` [d_conv - 1, H],
    the last gated inputs ``B * x`` (oldest first; zeros at the start), updated in place."""

    def __init__(self, d_conv: int, hidden: int):
        self.conv = np.zeros((d_conv - 1, hidden), np.float32)

    def nbytes(self) -> int:
        """Bytes held (the conv history)."""
        return self.conv.nbytes


class ShortConv(Block):
    """Gated short convolution: in_proj to B, C, x; ``C * conv(B * x)``; out_proj.

    Options: ``hidden_size``; ``d_conv`` (taps per channel, LFM2's ``conv_L_cache``); ``bias``
    (the checkpoint has biases on in_proj, conv and out_proj, LFM2's ``conv_bias``).
    """

    OPTIONS = {
        "hidden_size": Option("int", "$hidden_size", "width of the hidden states (and of the conv)", min=1),
        "d_conv": Option("int", 3, "causal conv taps", min=1),
        "bias": Option("bool", False, "the checkpoint has in_proj, conv and out_proj biases"),
    }
    PARAMETERS = ("in_proj.weight", "in_proj.bias", "conv.weight", "conv.bias", "out_proj.weight",
                  "out_proj.bias")

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        h = opts["hidden_size"]
        out = {
            "in_proj.weight": ParamSpec((3 * h, h)),
            "conv.weight": ParamSpec((h, opts["d_conv"])),
            "out_proj.weight": ParamSpec((h, h)),
        }
        if opts["bias"]:
            out["in_proj.bias"] = ParamSpec((3 * h,))
            out["conv.bias"] = ParamSpec((h,))
            out["out_proj.bias"] = ParamSpec((h,))
        return out

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        self.h, self.k = self.options["hidden_size"], self.options["d_conv"]
        self.w_in, self.b_in = params["in_proj.weight"], params.get("in_proj.bias")  # [3H, H]
        self.conv_w = np.ascontiguousarray(params["conv.weight"].T)  # [H, K] -> [K, H]: one row per tap
        self.conv_b = params.get("conv.bias")  # [H]
        self.w_out, self.b_out = params["out_proj.weight"], params.get("out_proj.bias")  # [H, H]

    def new_state(self) -> ShortConvState:
        return ShortConvState(self.k, self.h)

    def forward(self, x: np.ndarray, state: ShortConvState | None, ctx: ForwardContext) -> np.ndarray:
        if state is None:
            state = self.new_state()
        h = self.h
        bcx = linear(x, self.w_in)  # [T, H] -> [T, 3H]: B | C | x
        if self.b_in is not None:
            bcx += self.b_in
        gated = bcx[:, :h] * bcx[:, 2 * h:]  # B * x, [T, H]
        y = causal_conv(gated, state.conv, self.conv_w, self.conv_b)  # [T, H]
        y *= bcx[:, h:2 * h]  # C * conv(B * x)
        out = linear(y, self.w_out)  # [T, H] -> [T, H]
        if self.b_out is not None:
            out += self.b_out
        return out

    def forward_batch(self, x: np.ndarray, states: Sequence[ShortConvState], positions: Sequence[int]) -> np.ndarray:
        """One token of each of B sequences, ``x [B, H]``: the projections and gates over all
        rows at once, the convolution of each row over its own history."""
        h = self.h
        bcx = linear(x, self.w_in)  # [B, H] -> [B, 3H]: B | C | x
        if self.b_in is not None:
            bcx += self.b_in
        gated = bcx[:, :h] * bcx[:, 2 * h:]  # B * x, [B, H]
        y = np.empty_like(gated)
        for i, state in enumerate(states):
            y[i] = causal_conv(gated[i:i + 1], state.conv, self.conv_w, self.conv_b)[0]
        y *= bcx[:, h:2 * h]  # C * conv(B * x)
        out = linear(y, self.w_out)  # [B, H] -> [B, H]
        if self.b_out is not None:
            out += self.b_out
        return out
