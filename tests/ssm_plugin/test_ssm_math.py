"""The ssm plugin's maths against plain float64 loops over their definitions.

The selective scan (prefill) and the one-step update (decoding) must both equal the Mamba
recurrence, for any length and chunk, a non-zero starting state, and extreme time steps and
decay rates; the causal conv, the whole ``mamba`` mixer and the ``short_conv`` block must equal
direct formulas, whether a sequence comes whole, in pieces or one token at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from modelkit.nn.block import ForwardContext
from modelkit import causal_conv
from modelkit_ssm.mamba_block import Mamba
from modelkit_ssm.selective_scan import (CHUNK_FLOATS, chunk_length, decay_rates, selective_scan,
                                         selective_step)
from modelkit_ssm.short_conv import ShortConv

F32 = np.float32


def _inputs(seed: int, t: int, d: int = 7, n: int = 5, dt_scale: float = 1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, d)).astype(F32)
    dt = (dt_scale * rng.uniform(0.01, 1.5, (t, d))).astype(F32)
    a_log = np.log(rng.uniform(1, 16, (d, n))).astype(F32)
    b = rng.standard_normal((t, n)).astype(F32)
    c = rng.standard_normal((t, n)).astype(F32)
    h0 = rng.standard_normal((d, n)).astype(F32)  # [D, N], as the definition writes it
    return x, dt, a_log, b, c, h0


def _recurrence(x, dt, a_log, b, c, h0):
    """The definition, one step at a time, in float64, in the [D, N] layout: y [T, D], h [D, N]."""
    a = -np.exp(np.minimum(a_log.astype(np.float64), 88.0))
    h = h0.astype(np.float64).copy()
    y = np.zeros(x.shape)
    for i in range(x.shape[0]):
        h = np.exp(dt[i, :, None] * a) * h + (dt[i] * x[i])[:, None] * b[i][None, :]
        y[i] = h @ c[i]
    return y, h


def _state(h0: np.ndarray) -> np.ndarray:
    """[D, N] -> the scan's [N, D] layout (a fresh, writable float32 copy)."""
    return np.ascontiguousarray(h0.T, dtype=F32)


@pytest.mark.parametrize("t,chunk", [(19, 4), (16, 4), (5, 8), (1, 4), (7, 1), (300, 64)])
def test_scan_equals_the_recurrence(t: int, chunk: int) -> None:
    x, dt, a_log, b, c, h0 = _inputs(t, t)
    want_y, want_h = _recurrence(x, dt, a_log, b, c, h0)
    state = _state(h0)
    y = selective_scan(x, dt, decay_rates(a_log), b, c, state, chunk)
    assert y.dtype == np.float32 and state.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.T, want_h, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t", [1, 4, 11])
def test_scan_from_a_fresh_state_never_reads_it(t: int) -> None:
    """``fresh=True`` gives what reading a zero state gives, and writes the final state even
    though it never reads it (here it starts as NaN)."""
    x, dt, a_log, b, c, h0 = _inputs(7, t)
    zeros = np.zeros_like(_state(h0))
    want = selective_scan(x, dt, decay_rates(a_log), b, c, zeros, 4)
    unread = np.full_like(zeros, np.nan)
    got = selective_scan(x, dt, decay_rates(a_log), b, c, unread, 4, fresh=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(unread, zeros)  # both final states


def test_step_equals_the_recurrence_and_the_scan() -> None:
    x, dt, a_log, b, c, h0 = _inputs(3, 19)
    want_y, want_h = _recurrence(x, dt, a_log, b, c, h0)
    a = decay_rates(a_log)
    state = _state(h0)
    scratch = np.empty_like(state)
    ys = [selective_step(x[i], dt[i], a, b[i], c[i], state, scratch) for i in range(19)]
    assert all(v.dtype == np.float32 and v.shape == (7,) for v in ys)
    np.testing.assert_allclose(np.stack(ys), want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state.T, want_h, rtol=1e-4, atol=1e-4)
    scanned = _state(h0)
    np.testing.assert_allclose(selective_scan(x, dt, a, b, c, scanned, 4), np.stack(ys), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scanned, state, rtol=1e-5, atol=1e-5)


def test_scan_continues_from_its_own_state() -> None:
    """Prefill in pieces (cut inside a chunk and on a boundary), then steps, equals one scan."""
    x, dt, a_log, b, c, h0 = _inputs(5, 23)
    a = decay_rates(a_log)
    whole_state = _state(h0)
    whole = selective_scan(x, dt, a, b, c, whole_state, 4)
    state = _state(h0)
    parts = [selective_scan(x[i:j], dt[i:j], a, b[i:j], c[i:j], state, 4) for i, j in [(0, 3), (3, 8), (8, 20)]]
    scratch = np.empty_like(state)
    parts += [selective_step(x[i], dt[i], a, b[i], c[i], state, scratch)[None] for i in range(20, 23)]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state, whole_state, rtol=1e-5, atol=1e-5)


def test_extreme_time_steps_and_decay_rates_stay_finite() -> None:
    """A zero step (no decay, no input), enormous steps (the state forgotten at once) and an
    A_log far beyond exp's range (capped, so A stays finite): finite, and still the recurrence."""
    x, dt, a_log, b, c, h0 = _inputs(11, 12, dt_scale=1.0)
    dt[0] = 0.0
    dt[3] = 1e4
    dt[5, :3] = 3e30  # dt * A overflows to -inf in float32: a decay of exactly 0
    a_log[0, :] = 200.0
    a_log[1, :] = -30.0  # A ~ -1e-13: (almost) no decay at all
    want_y, want_h = _recurrence(x, dt, a_log, b, c, h0)
    scale = 1.0 + np.abs(want_y).max(axis=0)  # per channel: channels 0-2 reach ~1e31 at step 5

    def close(got: np.ndarray) -> bool:
        return bool(np.all(np.abs(got - want_y) <= 1e-4 * scale))

    for chunk in (1, 4, 64):
        state = _state(h0)
        with np.errstate(invalid="raise"):  # no NaN on the way (the overflow to -inf is intended)
            y = selective_scan(x, dt, decay_rates(a_log), b, c, state, chunk)
        assert np.isfinite(y).all() and np.isfinite(state).all() and close(y)
    state = _state(h0)
    scratch = np.empty_like(state)
    steps = np.stack([selective_step(x[i], dt[i], decay_rates(a_log), b[i], c[i], state, scratch)
                      for i in range(12)])
    assert np.isfinite(steps).all() and close(steps)


def test_decay_rates_are_negative_finite_and_transposed() -> None:
    a_log = np.array([[0.0, 1.0, 500.0], [-50.0, 2.0, 3.0]], F32)  # [D=2, N=3]
    a = decay_rates(a_log)
    assert a.shape == (3, 2) and a.dtype == np.float32 and a.flags.c_contiguous
    assert np.isfinite(a).all() and (a < 0).all()
    np.testing.assert_allclose(a[:2, 0], -np.exp([0.0, 1.0]), rtol=1e-6)


def test_chunk_length_keeps_the_buffers_near_a_megabyte() -> None:
    assert chunk_length(64, 1536, 16) == CHUNK_FLOATS // (1536 * 16) == 10  # mamba-130m
    assert chunk_length(64, 64, 8) == 64  # a small state: the option's bound
    assert chunk_length(64, 1 << 20, 16) == 1  # a huge one: still one step
    assert chunk_length(3, 8, 8) == 3


# ---- the causal conv ---------------------------------------------------------------------------

def _conv_reference(x: np.ndarray, history: np.ndarray, w: np.ndarray, bias) -> np.ndarray:
    """out[t, c] = sum_k w[c, k] * padded[t + k, c] (+ bias), in float64; w [C, K] as stored."""
    padded = np.concatenate([history, x]).astype(np.float64)
    k = w.shape[1]
    out = np.stack([(padded[t:t + k] * w.T).sum(axis=0) for t in range(x.shape[0])])
    return out + bias if bias is not None else out


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv_whole_in_pieces_and_by_token(k: int, with_bias: bool) -> None:
    rng = np.random.default_rng(k)
    x = rng.standard_normal((11, 6)).astype(F32)
    w = rng.standard_normal((6, k)).astype(F32)  # [C, K]
    bias = rng.standard_normal(6).astype(F32) if with_bias else None
    start = rng.standard_normal((k - 1, 6)).astype(F32)  # a history from earlier tokens
    want = _conv_reference(x, start, w, bias)
    w_t = np.ascontiguousarray(w.T)
    for cuts in ([11], [1, 10], [2, 5, 4], [1] * 11):
        history = start.copy()
        out, at = [], 0
        for size in cuts:
            out.append(causal_conv(x[at:at + size], history, w_t, bias))
            at += size
        np.testing.assert_allclose(np.concatenate(out), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(history, np.concatenate([start, x])[len(x):])  # the last K-1 inputs


# ---- the blocks --------------------------------------------------------------------------------

def _mamba(seed: int, conv_bias: bool, proj_bias: bool, chunk: int = 64, d_conv: int = 4) -> tuple[Mamba, dict]:
    rng = np.random.default_rng(seed)
    opts = Mamba.resolve_options(hidden_size=8, d_inner=12, d_state=5, d_conv=d_conv, dt_rank=3,
                                 conv_bias=conv_bias, proj_bias=proj_bias, scan_chunk=chunk)
    params = {}
    for name, spec in Mamba.params(opts).items():
        params[name] = (0.4 * rng.standard_normal(spec.shape)).astype(F32)
    params["A_log"] = np.log(rng.uniform(1, 16, params["A_log"].shape)).astype(F32)
    params["dt_proj.bias"] = (params["dt_proj.bias"] - 1.0).astype(F32)
    return Mamba(opts, params), params


def _silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def _mamba_reference(p: dict, x: np.ndarray, d: int = 12, r: int = 3, n: int = 5) -> np.ndarray:
    """transformers' MambaMixer (its slow path) written out in float64, one sequence from the start."""
    f = {k: v.astype(np.float64) for k, v in p.items()}
    proj = x.astype(np.float64) @ f["in_proj.weight"].T + f.get("in_proj.bias", 0.0)
    xs, z = proj[:, :d], proj[:, d:]
    k = f["conv.weight"].shape[1]
    xs = _silu(_conv_reference(xs, np.zeros((k - 1, d)), f["conv.weight"], f.get("conv.bias")))
    sel = xs @ f["x_proj.weight"].T
    raw = sel[:, :r] @ f["dt_proj.weight"].T + f["dt_proj.bias"]
    dt = np.log1p(np.exp(raw))
    y, _ = _recurrence(xs, dt, f["A_log"], sel[:, r:r + n], sel[:, r + n:], np.zeros((d, n)))
    y = (y + xs * f["D"]) * _silu(z)
    return y @ f["out_proj.weight"].T + f.get("out_proj.bias", 0.0)


@pytest.mark.parametrize("conv_bias,proj_bias,chunk,d_conv", [(True, False, 64, 4), (False, True, 3, 3),
                                                              (True, True, 1, 2)])
def test_mamba_block_prefill_steps_and_reference_agree(conv_bias: bool, proj_bias: bool, chunk: int,
                                                       d_conv: int) -> None:
    block, params = _mamba(1, conv_bias, proj_bias, chunk, d_conv)
    x = np.random.default_rng(2).standard_normal((17, 8)).astype(F32)
    want = _mamba_reference(params, x)
    whole = block.forward(x, block.new_state(), ForwardContext(0, 17))
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole, want, rtol=1e-4, atol=1e-4)
    state = block.new_state()
    rows = [block.forward(x[:5], state, ForwardContext(0, 5))]
    rows += [block.forward(x[i:i + 1], state, ForwardContext(i, 1)) for i in range(5, 12)]
    rows.append(block.forward(x[12:], state, ForwardContext(12, 5)))  # a prompt piece after decoding
    np.testing.assert_allclose(np.concatenate(rows), whole, rtol=1e-5, atol=1e-5)
    assert state.ssm.shape == (5, 12) and state.conv.shape == (d_conv - 1, 12)


def _short_conv(seed: int, bias: bool, d_conv: int) -> tuple[ShortConv, dict]:
    rng = np.random.default_rng(seed)
    opts = ShortConv.resolve_options(hidden_size=6, d_conv=d_conv, bias=bias)
    params = {name: (0.5 * rng.standard_normal(spec.shape)).astype(F32)
              for name, spec in ShortConv.params(opts).items()}
    return ShortConv(opts, params), params


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_conv", [1, 3, 4])
def test_short_conv_prefill_steps_and_reference_agree(bias: bool, d_conv: int) -> None:
    block, p = _short_conv(d_conv, bias, d_conv)
    x = np.random.default_rng(5).standard_normal((13, 6)).astype(F32)
    f = {k: v.astype(np.float64) for k, v in p.items()}
    bcx = x @ f["in_proj.weight"].T + f.get("in_proj.bias", 0.0)
    b, c, xs = bcx[:, :6], bcx[:, 6:12], bcx[:, 12:]  # transformers' chunk(3): B, C, x
    conv = _conv_reference(b * xs, np.zeros((d_conv - 1, 6)), f["conv.weight"], f.get("conv.bias"))
    want = (c * conv) @ f["out_proj.weight"].T + f.get("out_proj.bias", 0.0)
    whole = block.forward(x, block.new_state(), ForwardContext(0, 13))
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole, want, rtol=1e-5, atol=1e-5)
    state = block.new_state()
    rows = [block.forward(x[:2], state, ForwardContext(0, 2))]
    rows += [block.forward(x[i:i + 1], state, ForwardContext(i, 1)) for i in range(2, 13)]
    np.testing.assert_allclose(np.concatenate(rows), whole, rtol=1e-6, atol=1e-6)
    assert state.conv.shape == (d_conv - 1, 6)
