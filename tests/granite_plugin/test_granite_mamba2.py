"""The Mamba2 math of the granite plugin, against a plain float64 loop over the recurrence.

The chunked scan (prefill) and the one-step update (decoding) must both equal the recurrence
itself, for any length, a partial last chunk, a non-zero starting state, several groups, and
extreme time steps and decay rates.
"""

from __future__ import annotations

import numpy as np
import pytest

from modelkit import causal_conv
from modelkit.nn.block import ForwardContext
from modelkit_granite.mamba2 import (PendingSteps, decay_rates, fold_pending, gated,
                                     gated_rms_norm, ssd_chunked, ssd_step, time_steps)
from modelkit_granite.mamba2_block import Mamba2

F32 = np.float32


def _inputs(seed: int, t: int, h: int = 6, p: int = 3, g: int = 2, n: int = 5, dt_scale: float = 1.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, h, p)).astype(F32)
    dt = (dt_scale * rng.uniform(0.01, 1.5, (t, h))).astype(F32)
    a = decay_rates(np.log(rng.uniform(1, 16, h)).astype(F32))
    b = rng.standard_normal((t, g, n)).astype(F32)
    c = rng.standard_normal((t, g, n)).astype(F32)
    state = rng.standard_normal((h, p, n)).astype(F32)
    return x, dt, a, b, c, state


def _packed(state: np.ndarray, g: int) -> np.ndarray:
    """[H, P, N] -> the scan's state layout [G, N, H/G * P]."""
    h, p, n = state.shape
    return np.ascontiguousarray(state.reshape(g, h // g * p, n).transpose(0, 2, 1))


def _unpacked(state: np.ndarray, h: int) -> np.ndarray:
    """[G, N, H/G * P] -> [H, P, N]."""
    g, n, cols = state.shape
    return state.transpose(0, 2, 1).reshape(h, cols * g // h, n)


def _recurrence(x, dt, a, b, c, state):
    """The definition, one step and one head at a time, in float64."""
    t, h, p = x.shape
    g = b.shape[1]
    s = state.astype(np.float64).copy()
    y = np.zeros((t, h, p))
    for i in range(t):
        for j in range(h):
            grp = j // (h // g)
            s[j] = np.exp(dt[i, j] * a[j]) * s[j] + dt[i, j] * np.outer(x[i, j], b[i, grp])
            y[i, j] = s[j] @ c[i, grp]
    return y, s


@pytest.mark.parametrize("t,chunk", [(19, 4), (16, 4), (5, 8), (1, 4), (7, 1), (300, 128)])
def test_chunked_scan_equals_the_recurrence(t: int, chunk: int) -> None:
    x, dt, a, b, c, state = _inputs(t, t)
    want_y, want_state = _recurrence(x, dt, a, b, c, state)
    s = _packed(state, b.shape[1])
    y = ssd_chunked(x, dt, a, b, c, s, chunk)
    assert y.dtype == np.float32 and s.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_unpacked(s, x.shape[1]), want_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t", [1, 4, 11])
def test_chunked_scan_from_a_fresh_state_skips_reading_it(t: int) -> None:
    """``fresh=True`` (a zero state, as a new sequence has) gives what reading the zeros gives,
    and writes the state even though it never reads it (here it starts as garbage)."""
    x, dt, a, b, c, _ = _inputs(7, t)
    read = np.zeros((b.shape[1], b.shape[2], x.shape[1] // b.shape[1] * x.shape[2]), F32)
    want = ssd_chunked(x, dt, a, b, c, read, 4)
    unread = np.full_like(read, np.nan)
    got = ssd_chunked(x, dt, a, b, c, unread, 4, fresh=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(unread, read, rtol=1e-6, atol=1e-6)  # both final states


def _pending(window: int, x: np.ndarray, b: np.ndarray) -> PendingSteps:
    h, p = x.shape[1:]
    g, n = b.shape[1:]
    return PendingSteps(window, h, p, g, n)


@pytest.mark.parametrize("window", [1, 4, 19, 32])
def test_step_equals_the_recurrence_and_the_chunked_scan(window: int) -> None:
    """Steps kept pending (folded every ``window`` steps, and at the end) equal the recurrence
    step by step: both the outputs and the state."""
    x, dt, a, b, c, state = _inputs(3, 19)
    want_y, want_state = _recurrence(x, dt, a, b, c, state)
    s = _packed(state, b.shape[1])
    pending = _pending(window, x, b)
    ys = []
    for i in range(19):
        ys.append(ssd_step(x[i], dt[i], a, b[i], c[i], s, pending))
        assert 1 <= pending.count <= window
        if i == 9:  # a fold in the middle (as a prefill after decoding does) changes nothing
            fold_pending(s, pending)
            assert pending.count == 0
    assert all(v.dtype == np.float32 for v in ys)
    np.testing.assert_allclose(np.stack(ys), want_y, rtol=1e-4, atol=1e-4)
    fold_pending(s, pending)
    np.testing.assert_allclose(_unpacked(s, x.shape[1]), want_state, rtol=1e-4, atol=1e-4)
    s2 = _packed(state, b.shape[1])
    np.testing.assert_allclose(ssd_chunked(x, dt, a, b, c, s2, 4), np.stack(ys), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2, s, rtol=1e-5, atol=1e-5)


def test_chunked_scan_continues_from_its_own_state() -> None:
    """Prefill in pieces (cut inside a chunk and on a boundary) equals one scan."""
    x, dt, a, b, c, state = _inputs(5, 23)
    whole_state = _packed(state, b.shape[1])
    whole = ssd_chunked(x, dt, a, b, c, whole_state, 4)
    s = _packed(state, b.shape[1])
    parts = [ssd_chunked(x[i:j], dt[i:j], a, b[i:j], c[i:j], s, 4) for i, j in [(0, 3), (3, 8), (8, 23)]]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, whole_state, rtol=1e-5, atol=1e-5)


def test_extreme_time_steps_and_decay_rates_stay_finite() -> None:
    raw = np.array([[-1e4, -200.0, -30.0, 0.0, 30.0, 1e4]], F32)
    dt = time_steps(raw, np.zeros(6, F32), (0.0, float("inf")))
    assert dt.dtype == np.float32 and np.isfinite(dt).all() and (dt >= 0).all()
    np.testing.assert_allclose(dt[0, 3:], [np.log(2.0), 30.0, 1e4], rtol=1e-6)
    assert dt[0, 0] == 0.0  # underflows to exactly zero, never NaN
    a = decay_rates(np.array([-50.0, 0.0, 5.0, 50.0, 88.0, 1000.0], F32))
    assert a.dtype == np.float32 and np.isfinite(a).all() and (a < 0).all()

    rng = np.random.default_rng(0)
    t, h, p, g, n = 9, 6, 2, 1, 3
    x = rng.standard_normal((t, h, p)).astype(F32)
    b = rng.standard_normal((t, g, n)).astype(F32)
    c = rng.standard_normal((t, g, n)).astype(F32)
    dts = np.broadcast_to(dt, (t, h)).copy()
    s1 = np.ones((g, n, h // g * p), F32)
    s2 = s1.copy()
    with np.errstate(over="ignore"):  # dt * A may overflow to -inf: a decay of exactly zero
        y_chunk = ssd_chunked(x, dts, a, b, c, s1, 4)
        pending = _pending(4, x, b)
        y_step = np.stack([ssd_step(x[i], dts[i], a, b[i], c[i], s2, pending) for i in range(t)])
        fold_pending(s2, pending)
    for arr in (y_chunk, y_step, s1, s2):
        assert np.isfinite(arr).all()
    np.testing.assert_allclose(y_chunk, y_step, rtol=1e-4, atol=1e-2)


def test_time_step_limit_clamps() -> None:
    raw = np.array([[-5.0, 0.0, 5.0]], F32)
    dt = time_steps(raw, np.zeros(3, F32), (0.1, 1.0))
    np.testing.assert_allclose(dt, [[0.1, np.log(2.0), 1.0]], rtol=1e-6)


def test_causal_conv_continues_from_history() -> None:
    rng = np.random.default_rng(1)
    t, ch, k = 11, 5, 4
    x = rng.standard_normal((t, ch)).astype(F32)
    w = rng.standard_normal((k, ch)).astype(F32)  # [K, C]
    bias = rng.standard_normal(ch).astype(F32)
    padded = np.concatenate([np.zeros((k - 1, ch)), x.astype(np.float64)])
    want = np.stack([(padded[i:i + k] * w).sum(0) for i in range(t)]) + bias
    hist = np.zeros((k - 1, ch), F32)
    pieces = [causal_conv(x[i:j], hist, w, bias) for i, j in [(0, 1), (1, 3), (3, 11)]]
    got = np.concatenate(pieces)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(hist, x[-(k - 1):])  # the raw inputs, not the outputs
    # a kernel of one tap keeps no history
    np.testing.assert_allclose(causal_conv(x, np.zeros((0, ch), F32), w[:1], None), x * w[0], rtol=1e-6)


def test_gated_rms_norm_normalises_each_group_after_the_gate() -> None:
    rng = np.random.default_rng(2)
    y = rng.standard_normal((3, 8)).astype(F32)
    z = rng.standard_normal((3, 8)).astype(F32)
    w = rng.standard_normal(8).astype(F32)
    g = y.astype(np.float64) * z / (1 + np.exp(-z.astype(np.float64)))
    grouped = g.reshape(3, 2, 4)
    want = (grouped / np.sqrt((grouped ** 2).mean(-1, keepdims=True) + 1e-5)).reshape(3, 8) * w
    got = gated_rms_norm(y, z, w, 2, 1e-5)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gated_rms_norm_before_the_gate_and_without_a_norm() -> None:
    """Falcon-H1's two other placements: rmsnorm(y) * w * silu(z) per group, and y * silu(z)."""
    rng = np.random.default_rng(5)
    y = rng.standard_normal((3, 12)).astype(F32)
    z = rng.standard_normal((3, 12)).astype(F32)
    w = rng.standard_normal(12).astype(F32)
    gate = z.astype(np.float64) / (1 + np.exp(-z.astype(np.float64)))
    grouped = y.astype(np.float64).reshape(3, 3, 4)
    normed = (grouped / np.sqrt((grouped ** 2).mean(-1, keepdims=True) + 1e-5)).reshape(3, 12)
    y_before = y.copy()
    got = gated_rms_norm(y, z, w, 3, 1e-5, norm_first=True)
    assert got.dtype == np.float32 and np.array_equal(y, y_before)  # y is left alone
    np.testing.assert_allclose(got, normed * w * gate, rtol=1e-5, atol=1e-5)
    plain = gated(y, z)
    assert plain.dtype == np.float32
    np.testing.assert_allclose(plain, y * gate, rtol=1e-6, atol=1e-6)


def _block(seed: int = 0, **over) -> Mamba2:
    opts = dict(hidden_size=12, d_inner=16, num_heads=4, head_dim=4, n_groups=2, d_state=3,
                d_conv=4, chunk_size=3, conv_bias=True, proj_bias=True, eps=1e-5,
                time_step_limit=[0.0, float("inf")], activation="silu")
    opts = Mamba2.resolve_options(**{**opts, **over})
    rng = np.random.default_rng(seed)
    params = {}
    for name, spec in Mamba2.params(opts).items():
        params[name] = (0.3 * rng.standard_normal(spec.shape)).astype(F32)
    params["A_log"] = np.log(rng.uniform(1, 8, opts["num_heads"])).astype(F32)
    return Mamba2(opts, params)


@pytest.mark.parametrize("cuts", [[1, 1, 1, 1, 1, 1, 1, 1, 1, 1], [2, 5, 3], [4, 6], [10]])
def test_block_prefill_in_pieces_and_decoding_equal_one_pass(cuts: list[int]) -> None:
    block = _block()
    x = np.random.default_rng(3).standard_normal((10, 12)).astype(F32)
    whole_state = block.new_state()
    whole = block.forward(x, whole_state, ForwardContext(0, 10))
    state = block.new_state()
    out, pos = [], 0
    for n in cuts:
        out.append(block.forward(x[pos:pos + n], state, ForwardContext(pos, n)))
        pos += n
    got = np.concatenate(out)
    assert got.dtype == np.float32 and got.shape == (10, 12)
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.ssm, whole_state.ssm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.conv, whole_state.conv, rtol=1e-5, atol=1e-6)


def test_block_state_is_preallocated_float32() -> None:
    block = _block()
    state = block.new_state()
    assert state.conv.shape == (3, 16 + 2 * 2 * 3) and state.ssm.shape == (2, 3, 8)
    assert state.conv.dtype == state.ssm.dtype == np.float32
    ssm, conv = state.ssm, state.conv
    block.forward(np.ones((5, 12), F32), state, ForwardContext(0, 5))
    block.forward(np.ones((1, 12), F32), state, ForwardContext(5, 1))
    assert state.ssm is ssm and state.conv is conv  # updated in place
    assert state.nbytes() == conv.nbytes + ssm.nbytes + state.pending.nbytes()
    assert np.abs(ssm).sum() > 0


def test_block_clamps_time_steps_in_both_paths() -> None:
    block = _block(time_step_limit=[0.2, 0.3])
    free = _block()
    x = np.random.default_rng(4).standard_normal((6, 12)).astype(F32)
    whole = block.forward(x, block.new_state(), ForwardContext(0, 6))
    assert np.abs(whole - free.forward(x, free.new_state(), ForwardContext(0, 6))).max() > 1e-3
    state = block.new_state()
    steps = np.concatenate([block.forward(x[i:i + 1], state, ForwardContext(i, 1)) for i in range(6)])
    np.testing.assert_allclose(steps, whole, rtol=1e-5, atol=1e-5)


def test_block_options_are_checked() -> None:
    from modelkit.errors import ConfigError

    with pytest.raises(ConfigError, match="d_inner"):
        _block(head_dim=5)
    with pytest.raises(ConfigError, match="groups"):
        _block(n_groups=3)
    with pytest.raises(ConfigError, match="time_step_limit"):
        _block(time_step_limit=[1.0, 0.5])


@pytest.mark.parametrize("norm", ["after_gate", "before_gate", "none"])
def test_block_norm_placements_decode_as_they_prefill(norm: str) -> None:
    """Each placement of the gated norm gives the same result token by token as in one pass,
    and the placements differ (so the option reaches the math)."""
    block = _block(norm=norm)
    x = np.random.default_rng(6).standard_normal((7, 12)).astype(F32)
    whole = block.forward(x, block.new_state(), ForwardContext(0, 7))
    state = block.new_state()
    steps = np.concatenate([block.forward(x[i:i + 1], state, ForwardContext(i, 1)) for i in range(7)])
    np.testing.assert_allclose(steps, whole, rtol=1e-5, atol=1e-5)
    if norm != "after_gate":
        other = _block()
        assert np.abs(whole - other.forward(x, other.new_state(), ForwardContext(0, 7))).max() > 1e-2


def test_block_declares_the_parameters_its_options_imply() -> None:
    base = dict(hidden_size=12, d_inner=16, num_heads=4, head_dim=4, d_state=3)
    names = lambda **o: set(Mamba2.params(Mamba2.resolve_options(**base, **o)))  # noqa: E731
    assert "norm.weight" in names() and "norm.weight" not in names(norm="none")
    assert {"in_proj.bias", "out_proj.bias"} <= names(proj_bias=True)
    assert "out_proj.bias" not in names(proj_bias=True, out_proj_bias=False)
    assert "in_proj.bias" not in names(out_proj_bias=True) and "out_proj.bias" in names(out_proj_bias=True)
    from modelkit.errors import ConfigError

    with pytest.raises(ConfigError, match="norm"):
        Mamba2.resolve_options(**base, norm="before")
