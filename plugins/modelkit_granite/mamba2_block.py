"""The ``mamba2`` block kind: a Mamba2 mixer over the math in :mod:`modelkit_granite.mamba2`.

Parameters (local names; PyTorch [out, in] layout, D = d_inner, C = D + 2 * groups * d_state,
H heads)::

    in_proj.weight  [D + C + H, hidden]   rows z | xBC | dt
    in_proj.bias    [D + C + H]           only with proj_bias
    conv.weight     [C, d_conv]           depthwise taps (the checkpoint's [C, 1, d_conv] reshaped)
    conv.bias       [C]                   only with conv_bias
    dt_bias, A_log, D  [H]
    norm.weight     [D]                   gated RMSNorm (none with norm: none)
    out_proj.weight [hidden, D]
    out_proj.bias   [hidden]              only with out_proj_bias (null: as proj_bias)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from modelkit import (ACTIVATIONS, Block, ConfigError, ForwardContext, Option, ParamSpec, causal_conv, linear,
                      product_layout, row_spans)

from .mamba2 import (PENDING_WINDOW, PendingSteps, decay_rates, fold_pending, gated,
                     gated_rms_norm, ssd_chunked, ssd_step, state_shape, time_steps)
from .mamba2_batch import SlotPool


# where the gated RMSNorm sits: rmsnorm(y * silu(z)) (Mamba2, Granite 4.0-H, Bamba),
# rmsnorm(y) * silu(z) (Falcon-H1's mamba_norm_before_gate), or y * silu(z) (mamba_rms_norm false)
NORM_PLACES = ("after_gate", "before_gate", "none")


class Mamba2State:
    """What a Mamba2 layer remembers about one sequence, preallocated and updated in place.

    ``conv`` [d_conv - 1, C]: the last raw (pre-convolution) xBC inputs, oldest first;
    ``base`` [G, N, H/G * P] and ``pending``: the recurrent state, as a folded part and up to
    :data:`~modelkit_granite.mamba2.PENDING_WINDOW` decoding steps not yet folded into it;
    :attr:`ssm` folds them and returns the whole state. ``fresh`` until the first token: the
    state is still all zeros, and a prompt's scan need not read it.
    """

    def __init__(self, d_conv: int, conv_dim: int, heads: int, head_dim: int, groups: int,
                 d_state: int, window: int = PENDING_WINDOW):
        self.conv = np.zeros((d_conv - 1, conv_dim), np.float32)
        self.base = np.zeros(state_shape(heads, head_dim, groups, d_state), np.float32)
        self.pending = PendingSteps(window, heads, head_dim, groups, d_state)
        self.fresh = True

    @property
    def ssm(self) -> np.ndarray:
        """The recurrent state after the last token, [G, N, H/G * P] (folds pending steps)."""
        fold_pending(self.base, self.pending)
        return self.base

    def nbytes(self) -> int:
        """Bytes held (conv history, SSM state and the pending decoding steps)."""
        return self.conv.nbytes + self.base.nbytes + self.pending.nbytes()


class Mamba2(Block):
    """Mamba2 mixer: in_proj, causal conv, selective state space scan, gated RMSNorm, out_proj.

    Options: ``hidden_size``; ``d_inner`` (D), ``num_heads`` (H), ``head_dim`` (P, H * P = D),
    ``n_groups`` (G), ``d_state`` (N), ``d_conv`` (K), ``chunk_size`` (prefill chunk length);
    ``conv_bias`` / ``proj_bias`` / ``out_proj_bias`` (whether the checkpoint has those
    biases); ``norm``: where the gated RMSNorm sits (``after_gate``: rmsnorm(y * silu(z)),
    ``before_gate``: rmsnorm(y) * silu(z), ``none``: y * silu(z)) and its ``eps``;
    ``time_step_limit`` (dt is clamped into it); ``activation`` after the conv.
    """

    OPTIONS = {
        "hidden_size": Option("int", "$hidden_size", "width of the hidden states", min=1),
        "d_inner": Option("int", doc="inner width D (heads x head_dim)", min=1),
        "num_heads": Option("int", doc="SSM heads H", min=1),
        "head_dim": Option("int", doc="channels per head P", min=1),
        "n_groups": Option("int", 1, "groups G sharing B and C", min=1),
        "d_state": Option("int", doc="state size N", min=1),
        "d_conv": Option("int", 4, "causal conv taps K", min=1),
        "chunk_size": Option("int", 256, "prefill chunk length of the scan", min=1),
        "conv_bias": Option("bool", True, "the checkpoint has conv biases"),
        "proj_bias": Option("bool", False, "the checkpoint has in/out projection biases"),
        "out_proj_bias": Option("bool", None, "the checkpoint has out_proj.bias (null: as proj_bias)",
                                nullable=True),
        "norm": Option("str", "after_gate", "the gated RMSNorm: after the gate, before it, or none",
                       choices=NORM_PLACES),
        "eps": Option("float", 1e-6, "epsilon of the gated RMSNorm", min=0.0),
        "time_step_limit": Option("float_pair", (0.0, float("inf")), "dt is clamped into it", min=0.0),
        "activation": Option("str", "silu", "activation after the conv", choices=tuple(sorted(ACTIVATIONS))),
        "pending_window": Option("int", PENDING_WINDOW, "decoding steps kept before folding", min=1,
                                 max=1024, tunable=True),  # each state preallocates this many steps
    }
    PARAMETERS = ("in_proj.weight", "in_proj.bias", "conv.weight", "conv.bias", "dt_bias", "A_log", "D",
                  "norm.weight", "out_proj.weight", "out_proj.bias")

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        if opts["num_heads"] * opts["head_dim"] != opts["d_inner"]:
            raise ConfigError(f"mamba2: {opts['num_heads']} heads x {opts['head_dim']} channels "
                              f"!= d_inner {opts['d_inner']}")
        if opts["num_heads"] % opts["n_groups"]:
            raise ConfigError(f"mamba2: {opts['num_heads']} heads do not divide into "
                              f"{opts['n_groups']} groups")
        low, high = opts["time_step_limit"]
        if not low <= high:
            raise ConfigError(f"mamba2: time_step_limit must be a pair 0 <= low <= high, got {[low, high]!r}")
        d, hidden, h = opts["d_inner"], opts["hidden_size"], opts["num_heads"]
        conv_dim = d + 2 * opts["n_groups"] * opts["d_state"]
        proj = d + conv_dim + h
        out = {
            "in_proj.weight": ParamSpec((proj, hidden)),
            "conv.weight": ParamSpec((conv_dim, opts["d_conv"])),
            "dt_bias": ParamSpec((h,)),
            "A_log": ParamSpec((h,)),
            "D": ParamSpec((h,)),
            "out_proj.weight": ParamSpec((hidden, d)),
        }
        if opts["norm"] != "none":
            out["norm.weight"] = ParamSpec((d,))
        if opts["conv_bias"]:
            out["conv.bias"] = ParamSpec((conv_dim,))
        if opts["proj_bias"]:
            out["in_proj.bias"] = ParamSpec((proj,))
        if opts["proj_bias"] if opts["out_proj_bias"] is None else opts["out_proj_bias"]:
            out["out_proj.bias"] = ParamSpec((hidden,))
        return out

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        o = self.options
        self.d, self.h, self.hd = o["d_inner"], o["num_heads"], o["head_dim"]
        self.g, self.n, self.k = o["n_groups"], o["d_state"], o["d_conv"]
        self.conv_dim = self.d + 2 * self.g * self.n
        self.chunk = o["chunk_size"]
        self.window = o["pending_window"]
        self.norm, self.eps = o["norm"], o["eps"]
        self.limit = o["time_step_limit"]
        self.act = ACTIVATIONS[o["activation"]]
        self.w_in, self.b_in = product_layout(params["in_proj.weight"]), params.get("in_proj.bias")  # [D + C + H, hidden]
        self.conv_w = np.ascontiguousarray(params["conv.weight"].T)  # [C, K] -> [K, C]: one row per tap
        self.conv_b = params.get("conv.bias")  # [C]
        self.dt_bias, self.skip = params["dt_bias"], params["D"]  # [H] each
        self.a = decay_rates(params["A_log"])  # [H]
        self.norm_w = params.get("norm.weight")  # [D], or None with norm: none
        self.w_out, self.b_out = product_layout(params["out_proj.weight"]), params.get("out_proj.bias")  # [hidden, D]
        self._pool: SlotPool | None = None  # the states of a running batch (forward_batch)

    def new_state(self) -> Mamba2State:
        return Mamba2State(self.k, self.conv_dim, self.h, self.hd, self.g, self.n, self.window)

    def forward(self, x: np.ndarray, state: Mamba2State | None, ctx: ForwardContext) -> np.ndarray:
        return self._mix(x, [state if state is not None else self.new_state()], [(0, x.shape[0])])

    def forward_batch(self, x: np.ndarray, states: Sequence[Mamba2State], positions: Sequence[int]) -> np.ndarray:
        """One token of each of B sequences, ``x [B, hidden]``: the projections, gate and norm
        over every row at once; the conv and the SSM step too, over the states seated side by
        side in this layer's :class:`~modelkit_granite.mamba2_batch.SlotPool` (one row alone
        takes the one-sequence step: seating it would only add work)."""
        if x.shape[0] == 1:
            return self._mix(x, states, [(0, 1)])
        if self._pool is None:
            self._pool = SlotPool(self.k, self.conv_dim, self.h, self.hd, self.g, self.n, self.window)
        slots = self._pool.seat(states)  # row i's state is in slot slots[i]
        t = x.shape[0]
        d, cd, h, hd, g, n = self.d, self.conv_dim, self.h, self.hd, self.g, self.n
        proj = linear(x, self.w_in)  # [B, hidden] -> [B, D + C + H]
        if self.b_in is not None:
            proj += self.b_in
        in_order = bool((slots == np.arange(t)).all())
        by_slot = proj if in_order else proj[np.argsort(slots)]  # row of slot s: argsort(slots)[s]
        xbc = self.act(self._pool.conv_step(by_slot[:, d:d + cd], self.conv_w, self.conv_b))
        dt = time_steps(by_slot[:, d + cd:], self.dt_bias, self.limit)  # [B, H]
        xs = xbc[:, :d].reshape(t, h, hd)  # [B, H, P]
        y = self._pool.ssd_step(xs, dt, self.a, xbc[:, d:d + g * n].reshape(t, g, n),
                                xbc[:, d + g * n:].reshape(t, g, n))
        y += xs * self.skip[:, None]
        y = y.reshape(t, d)
        if not in_order:
            y = y[slots]  # back to row order
        return self._out(y, proj[:, :d])

    def end_batch(self) -> None:
        """The running batch is over: its states get arrays of their own, the pool is dropped."""
        if self._pool is not None:
            self._pool.seat([])
            self._pool = None

    def forward_ragged(self, x: np.ndarray, states: Sequence[Mamba2State], ctxs: Sequence[ForwardContext]) -> np.ndarray:
        """The prompts of B sequences, their rows one after the other: the projections, gate and
        norm over every row at once, the conv and the scan of each sequence on its own state."""
        return self._mix(x, states, row_spans(ctxs))

    def _mix(self, x: np.ndarray, states: Sequence[Mamba2State], spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """Rows ``start:stop`` of ``x`` continue ``states[i]`` for each ``spans[i]``: token-wise
        work over all rows, the conv and the scan per sequence."""
        t = x.shape[0]
        d, cd, h, hd, g, n = self.d, self.conv_dim, self.h, self.hd, self.g, self.n
        proj = linear(x, self.w_in)  # [T, hidden] -> [T, D + C + H]
        if self.b_in is not None:
            proj += self.b_in
        z = proj[:, :d]
        if len(spans) == 1:
            xbc = causal_conv(proj[:, d:d + cd], states[0].conv, self.conv_w, self.conv_b)
        else:
            xbc = np.empty((t, cd), np.float32)
            for (s0, s1), state in zip(spans, states):  # each sequence continues its own conv history
                xbc[s0:s1] = causal_conv(proj[s0:s1, d:d + cd], state.conv, self.conv_w, self.conv_b)
        xbc = self.act(xbc)
        dt = time_steps(proj[:, d + cd:], self.dt_bias, self.limit)  # [T, H]
        xs = xbc[:, :d].reshape(t, h, hd)  # [T, H, P]
        b = xbc[:, d:d + g * n].reshape(t, g, n)  # [T, G, N]
        c = xbc[:, d + g * n:].reshape(t, g, n)
        if len(spans) == 1:  # one sequence: its scan's own output, no copy into a fresh buffer
            y = self._scan(xs, dt, b, c, states[0])
        else:
            y = np.empty((t, h, hd), np.float32)
            for (s0, s1), state in zip(spans, states):
                y[s0:s1] = self._scan(xs[s0:s1], dt[s0:s1], b[s0:s1], c[s0:s1], state)
        y += xs * self.skip[:, None]  # skip connection from x (before the dt scaling)
        return self._out(y.reshape(t, d), z)

    def _out(self, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The gate (and norm) of the scan's output ``y [T, D]`` by ``z [T, D]``, then out_proj."""
        if self.norm == "none":
            out = gated(y, z)
        else:
            out = gated_rms_norm(y, z, self.norm_w, self.g, self.eps, norm_first=self.norm == "before_gate")
        res = linear(out, self.w_out)  # [T, D] -> [T, hidden]
        if self.b_out is not None:
            res += self.b_out
        return res

    def _scan(self, xs: np.ndarray, dt: np.ndarray, b: np.ndarray, c: np.ndarray, state: Mamba2State) -> np.ndarray:
        """One sequence's SSM over its rows, ``xs [T, H, P]`` -> ``[T, H, P]`` (without the D skip):
        the decoding step for one row, the chunked scan for more."""
        if xs.shape[0] == 1:
            y = ssd_step(xs[0], dt[0], self.a, b[0], c[0], state.base, state.pending)[None]
        else:
            y = ssd_chunked(xs, dt, self.a, b, c, state.ssm, self.chunk, state.fresh)
        state.fresh = False
        return y
