"""The ``mamba`` block kind: a Mamba (v1) mixer over the math in :mod:`modelkit_ssm.selective_scan`.

Parameters (local names; PyTorch [out, in] layout, D = d_inner, N = d_state, R = dt_rank)::

    in_proj.weight  [2D, hidden]   rows x | z
    in_proj.bias    [2D]           only with proj_bias
    conv.weight     [D, d_conv]    depthwise taps (the checkpoint's [D, 1, d_conv] reshaped)
    conv.bias       [D]            only with conv_bias
    x_proj.weight   [R + 2N, D]    rows dt (low rank) | B | C
    dt_proj.weight  [D, R]
    dt_proj.bias    [D]
    A_log           [D, N]
    D               [D]
    out_proj.weight [hidden, D]
    out_proj.bias   [hidden]       only with proj_bias
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from modelkit import ACTIVATIONS, Block, ForwardContext, Option, ParamSpec, causal_conv, linear, silu, softplus

from .selective_scan import chunk_length, decay_rates, selective_scan, selective_step


class MambaState:
    """What a Mamba layer remembers about one sequence, preallocated and updated in place.

    ``conv`` [d_conv - 1, D]: the last raw (pre-convolution) x inputs, oldest first;
    ``ssm`` [N, D]: the recurrent state after the last token (``ssm[n, d]`` is h[d, n]);
    ``scratch`` [N, D]: the decoding step's work buffer; ``fresh`` until the first token: the
    state is still all zeros, and a prompt's scan need not read it.
    """

    def __init__(self, d_conv: int, d_inner: int, d_state: int):
        self.conv = np.zeros((d_conv - 1, d_inner), np.float32)
        self.ssm = np.zeros((d_state, d_inner), np.float32)
        self.scratch = np.empty((d_state, d_inner), np.float32)
        self.fresh = True

    def nbytes(self) -> int:
        """Bytes held (conv history, SSM state and the step's work buffer)."""
        return self.conv.nbytes + self.ssm.nbytes + self.scratch.nbytes


class Mamba(Block):
    """Mamba mixer: in_proj, causal conv, input-dependent dt / B / C, selective scan, gate, out_proj.

    Options: ``hidden_size``; ``d_inner`` (D), ``d_state`` (N), ``d_conv`` (K), ``dt_rank`` (R,
    the rank of the time-step projection); ``conv_bias`` / ``proj_bias`` (whether the checkpoint
    has those biases); ``activation`` after the conv; ``scan_chunk`` (at most this many prefill
    steps per batch of the scan's array work; fewer when the state is large, see
    :func:`~modelkit_ssm.selective_scan.chunk_length`).
    """

    OPTIONS = {
        "hidden_size": Option("int", "$hidden_size", "width of the hidden states", min=1),
        "d_inner": Option("int", doc="inner width D", min=1),
        "d_state": Option("int", doc="state size N per channel", min=1),
        "d_conv": Option("int", 4, "causal conv taps K", min=1),
        "dt_rank": Option("int", doc="rank R of the time-step projection", min=1),
        "conv_bias": Option("bool", True, "the checkpoint has conv biases"),
        "proj_bias": Option("bool", False, "the checkpoint has in/out projection biases"),
        "activation": Option("str", "silu", "activation after the conv", choices=tuple(sorted(ACTIVATIONS))),
        "scan_chunk": Option("int", 64, "most prefill steps per batch of the scan's array work", min=1,
                             tunable=True),
    }
    PARAMETERS = ("in_proj.weight", "in_proj.bias", "conv.weight", "conv.bias", "x_proj.weight",
                  "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias")

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        d, n, r, hidden = opts["d_inner"], opts["d_state"], opts["dt_rank"], opts["hidden_size"]
        out = {
            "in_proj.weight": ParamSpec((2 * d, hidden)),
            "conv.weight": ParamSpec((d, opts["d_conv"])),
            "x_proj.weight": ParamSpec((r + 2 * n, d)),
            "dt_proj.weight": ParamSpec((d, r)),
            "dt_proj.bias": ParamSpec((d,)),
            "A_log": ParamSpec((d, n)),
            "D": ParamSpec((d,)),
            "out_proj.weight": ParamSpec((hidden, d)),
        }
        if opts["conv_bias"]:
            out["conv.bias"] = ParamSpec((d,))
        if opts["proj_bias"]:
            out["in_proj.bias"] = ParamSpec((2 * d,))
            out["out_proj.bias"] = ParamSpec((hidden,))
        return out

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        o = self.options
        self.d, self.n, self.k, self.r = o["d_inner"], o["d_state"], o["d_conv"], o["dt_rank"]
        self.chunk = chunk_length(o["scan_chunk"], self.d, self.n)
        self.act = ACTIVATIONS[o["activation"]]
        self.w_in, self.b_in = params["in_proj.weight"], params.get("in_proj.bias")  # [2D, hidden]
        self.conv_w = np.ascontiguousarray(params["conv.weight"].T)  # [D, K] -> [K, D]: one row per tap
        self.conv_b = params.get("conv.bias")  # [D]
        self.w_x = params["x_proj.weight"]  # [R + 2N, D]
        self.w_dt, self.b_dt = params["dt_proj.weight"], params["dt_proj.bias"]  # [D, R], [D]
        self.a = decay_rates(params["A_log"])  # [D, N] -> A as [N, D]
        self.skip = params["D"]  # [D]
        self.w_out, self.b_out = params["out_proj.weight"], params.get("out_proj.bias")  # [hidden, D]

    def new_state(self) -> MambaState:
        return MambaState(self.k, self.d, self.n)

    def forward(self, x: np.ndarray, state: MambaState | None, ctx: ForwardContext) -> np.ndarray:
        if state is None:
            state = self.new_state()
        d, n, r = self.d, self.n, self.r
        proj = linear(x, self.w_in)  # [T, hidden] -> [T, 2D]
        if self.b_in is not None:
            proj += self.b_in
        xs = self.act(causal_conv(proj[:, :d], state.conv, self.conv_w, self.conv_b))  # [T, D]
        sel = linear(xs, self.w_x)  # [T, D] -> [T, R + 2N]: dt (low rank) | B | C
        dt = linear(sel[:, :r], self.w_dt)  # [T, R] -> [T, D]
        dt += self.b_dt
        dt = softplus(dt)
        b = np.ascontiguousarray(sel[:, r:r + n])  # [T, N]
        c = np.ascontiguousarray(sel[:, r + n:])
        if x.shape[0] == 1:
            y = selective_step(xs[0], dt[0], self.a, b[0], c[0], state.ssm, state.scratch)[None]
        else:
            y = selective_scan(xs, dt, self.a, b, c, state.ssm, self.chunk, state.fresh)  # [T, D]
        state.fresh = False
        y += xs * self.skip  # skip connection from the conv output (before the dt scaling)
        y *= silu(proj[:, d:])  # the gate z
        out = linear(y, self.w_out)  # [T, D] -> [T, hidden]
        if self.b_out is not None:
            out += self.b_out
        return out

    def forward_batch(self, x: np.ndarray, states: Sequence[MambaState], positions: Sequence[int]) -> np.ndarray:
        """One token of each of B sequences, ``x [B, hidden]``: every projection over all rows
        at once, the conv and the selective step of each row on its own state."""
        d, n, r = self.d, self.n, self.r
        proj = linear(x, self.w_in)  # [B, hidden] -> [B, 2D]
        if self.b_in is not None:
            proj += self.b_in
        xs = np.empty((x.shape[0], d), np.float32)
        for i, state in enumerate(states):  # each row continues its own conv history
            xs[i] = causal_conv(proj[i:i + 1, :d], state.conv, self.conv_w, self.conv_b)[0]
        xs = self.act(xs)  # [B, D]
        sel = linear(xs, self.w_x)  # [B, D] -> [B, R + 2N]: dt (low rank) | B | C
        dt = linear(sel[:, :r], self.w_dt)  # [B, R] -> [B, D]
        dt += self.b_dt
        dt = softplus(dt)
        b = np.ascontiguousarray(sel[:, r:r + n])  # [B, N]
        c = np.ascontiguousarray(sel[:, r + n:])
        y = np.empty_like(xs)
        for i, state in enumerate(states):
            y[i] = selective_step(xs[i], dt[i], self.a, b[i], c[i], state.ssm, state.scratch)
            state.fresh = False
        y += xs * self.skip
        y *= silu(proj[:, d:])  # the gate z
        out = linear(y, self.w_out)  # [B, D] -> [B, hidden]
        if self.b_out is not None:
            out += self.b_out
        return out
