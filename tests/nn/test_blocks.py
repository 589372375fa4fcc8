"""Unit tests of the NumPy blocks: activations, norms, rotary tables, ALiBi, the KV cache and
attention against direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

import modelkit.nn.attention as attention
from modelkit.nn.activations import erf, gelu, gelu_tanh, sigmoid, silu, softplus
from modelkit.nn.attention import KV_BLOCK, Attention, KVCache, alibi_slopes, softmax_inplace
from modelkit.nn.block import ForwardContext
from modelkit.nn.norms import layer_norm, rms_norm
from modelkit.nn.rope import apply_rotary, inverse_frequencies, rotary_table, rotate
from modelkit.errors import ConfigError

GRID = np.concatenate([np.linspace(-6, 6, 2401), [-30.0, -10.0, 0.0, 1e-8, 10.0, 30.0]]).astype(np.float32)


def test_erf_matches_math_erf() -> None:
    got = erf(GRID)
    assert got.dtype == np.float32
    want = np.array([math.erf(float(x)) for x in GRID])
    assert np.max(np.abs(got - want)) < 3e-7
    assert erf(np.float32(0.0)) == 0.0 and np.all(erf(-GRID) == -erf(GRID))


def test_gelu_exact_and_tanh() -> None:
    x = GRID[np.abs(GRID) < 10]
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert gelu(x).dtype == np.float32
    assert np.max(np.abs(gelu(x) - exact)) < 2e-6
    tanh = np.array([0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
                     for v in x.astype(np.float64)])
    assert np.max(np.abs(gelu_tanh(x) - tanh)) < 2e-6
    assert np.max(np.abs(gelu(x) - gelu_tanh(x))) < 1e-3  # close, but different functions
    assert np.max(np.abs(gelu(x) - gelu_tanh(x))) > 1e-5


def test_softplus_is_stable() -> None:
    x = np.array([-1e4, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1e4, 3e38], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = softplus(x)
    assert y.dtype == np.float32 and np.all(np.isfinite(y)) and np.all(y >= 0)
    for xi, yi in zip(x.astype(np.float64), y.astype(np.float64)):
        want = xi + math.log1p(math.exp(-xi)) if xi > 0 else math.log1p(math.exp(xi))
        assert yi == pytest.approx(want, rel=1e-6, abs=1e-45)
    assert y[-2] == np.float32(1e4) and y[0] == 0.0 and y[4] == pytest.approx(math.log(2), rel=1e-7)
    assert 0 < y[1] < 1e-43  # exp(-100), not rounded to zero by log(1 + tiny)


def test_sigmoid_and_silu_are_stable() -> None:
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = sigmoid(x)
        si = silu(x)
    assert s.dtype == np.float32 and list(s[[0, 2, 4]]) == [0.0, 0.5, 1.0]
    # far below zero SiLU holds x at -88: silu(-88) = -5.3e-37, where the exact value is nearer 0
    assert si[-1] == np.float32(1e4) and -1e-36 < si[0] <= 0.0 and np.isclose(si[1], -50 * np.exp(-50.0), rtol=1e-5)
    x32 = np.linspace(-80, 80, 1601).astype(np.float32)
    exact = x32.astype(np.float64) / (1.0 + np.exp(-x32.astype(np.float64)))
    assert (np.abs(silu(x32) - exact) / np.abs(exact).clip(1e-30)).max() < 1e-6


def test_norms_match_formulas() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 16)).astype(np.float32) * 3 + 1
    w = rng.normal(size=16).astype(np.float32)
    b = rng.normal(size=16).astype(np.float32)
    x64 = x.astype(np.float64)
    rms = x64 / np.sqrt(np.mean(x64 ** 2, -1, keepdims=True) + 1e-6) * w
    got = rms_norm(x, w, 1e-6)
    assert got.dtype == np.float32 and np.max(np.abs(got - rms)) < 1e-5
    ln = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * w + b
    got = layer_norm(x, w, b, 1e-5)
    assert got.dtype == np.float32 and np.max(np.abs(got - ln)) < 1e-5


# ---- rotary ----------------------------------------------------------------------------------

def _llama3_direct(dim: int, theta: float, factor: float, low: float, high: float, old: int) -> list[float]:
    """transformers' _compute_llama3_parameters, one frequency at a time in float64."""
    out = []
    for k in range(0, dim, 2):
        f = 1.0 / theta ** (k / dim)
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(f)
        elif wavelen > old / low:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


@pytest.mark.parametrize("old", [16, 32, 8192])
def test_rope_llama3_against_direct_formula(old: int) -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": old}
    dim, theta = 64, 5e5
    got = inverse_frequencies(dim, theta, scaling)
    assert got.dtype == np.float32 and got.shape == (dim // 2,)
    np.testing.assert_allclose(got, _llama3_direct(dim, theta, 8.0, 1.0, 4.0, old), rtol=2e-6)


def test_rope_default_linear_and_legacy_type_key() -> None:
    base = 1.0 / 1e4 ** (np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(inverse_frequencies(16, 1e4, None), base, rtol=1e-6)
    np.testing.assert_allclose(inverse_frequencies(16, 1e4, {"rope_type": "default", "rope_theta": 1e4}),
                               base, rtol=1e-6)
    np.testing.assert_allclose(inverse_frequencies(16, 1e4, {"type": "linear", "factor": 4.0}), base / 4,
                               rtol=1e-6)
    with pytest.raises(ConfigError, match="yarn"):
        inverse_frequencies(16, 1e4, {"rope_type": "yarn", "factor": 4.0})


def test_apply_rotary_rotates_halves() -> None:
    rng = np.random.default_rng(1)
    t, h, d = 6, 2, 8
    x = rng.normal(size=(t, h, d)).astype(np.float32)
    inv = inverse_frequencies(d, 1e4, None)
    ang = np.arange(t)[:, None] * inv[None, :].astype(np.float64)  # [T, d/2]
    # pair (j, j + d/2) rotated by angle j, as a complex number
    z = (x[..., : d // 2] + 1j * x[..., d // 2:]).astype(np.complex128) * np.exp(1j * ang)[:, None, :]
    emb = np.concatenate([ang, ang], -1)
    got = apply_rotary(x.copy(), np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32), d)
    np.testing.assert_allclose(got[..., : d // 2], z.real, atol=1e-5)
    np.testing.assert_allclose(got[..., d // 2:], z.imag, atol=1e-5)


@pytest.mark.parametrize("rot", [8, 4])
def test_rotate_interleaved_turns_neighbouring_channels(rot: int) -> None:
    """GPT-J's rotate_every_two: pair m is channels (2m, 2m + 1), turned by position * inv[m];
    channels past rot pass through. Positions 5.. (a cached continuation) from the shared table."""
    rng = np.random.default_rng(2)
    t, h, d, start = 6, 3, 8, 5
    x = rng.normal(size=(t, h, d)).astype(np.float32)
    inv = inverse_frequencies(rot, 1e4, None)
    ang = np.arange(start, start + t)[:, None] * inv[None, :].astype(np.float64)  # [T, rot/2]
    z = (x[..., 0:rot:2] + 1j * x[..., 1:rot:2]).astype(np.complex128) * np.exp(1j * ang)[:, None, :]
    table = rotary_table(rot, 1e4, None, interleaved=True)
    cos, sin_signed = table.get_signed(start, start + t)
    got = rotate(x.copy(), cos, sin_signed, rot, interleaved=True)
    np.testing.assert_allclose(got[..., 0:rot:2], z.real, atol=1e-5)
    np.testing.assert_allclose(got[..., 1:rot:2], z.imag, atol=1e-5)
    np.testing.assert_array_equal(got[..., rot:], x[..., rot:])
    assert table is not rotary_table(rot, 1e4, None)  # the halves table is another one


def test_attention_qk_layernorm_with_each_heads_own_weights() -> None:
    """qk_norm per_head + qk_norm_kind layernorm + qk_norm_weights per_head: head j of q and k
    normalised over its channels (mean subtracted) and scaled by its own weight row."""
    rng = np.random.default_rng(3)
    h, kv, hd, d, t = 4, 2, 8, 16, 3
    opts = Attention.resolve_options(num_heads=h, num_kv_heads=kv, head_dim=hd, hidden_size=d, positions="none",
                                     qk_norm="per_head", qk_norm_kind="layernorm", qk_norm_weights="per_head",
                                     qk_norm_eps=1e-5)
    specs = Attention.params(opts)
    assert specs["q_norm.weight"].shape == (h, hd) and specs["k_norm.weight"].shape == (kv, hd)
    assert not specs["q_norm.bias"].required and specs["k_norm.bias"].shape == (kv, hd)
    w = {"q.weight": rng.normal(size=(h * hd, d)), "k.weight": rng.normal(size=(kv * hd, d)),
         "v.weight": rng.normal(size=(kv * hd, d)), "o.weight": rng.normal(size=(d, h * hd)),
         "q_norm.weight": 1 + 0.1 * rng.normal(size=(h, hd)), "k_norm.weight": 1 + 0.1 * rng.normal(size=(kv, hd)),
         "k_norm.bias": 0.1 * rng.normal(size=(kv, hd))}
    block = Attention(opts, {k: v.astype(np.float32) for k, v in w.items()})
    qkv = rng.normal(size=(t, (h + 2 * kv) * hd)).astype(np.float32)
    before = qkv.astype(np.float64)
    block._norm_qk(qkv, t, h * hd, kv * hd)

    def ln(a, weight, bias):  # [T, heads, hd], float64
        c = a - a.mean(-1, keepdims=True)
        return c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-5) * weight + bias

    q = ln(before[:, :h * hd].reshape(t, h, hd), w["q_norm.weight"], 0.0)
    k = ln(before[:, h * hd:(h + kv) * hd].reshape(t, kv, hd), w["k_norm.weight"], w["k_norm.bias"])
    np.testing.assert_allclose(qkv[:, :h * hd], q.reshape(t, -1), atol=1e-5)
    np.testing.assert_allclose(qkv[:, h * hd:(h + kv) * hd], k.reshape(t, -1), atol=1e-5)
    np.testing.assert_array_equal(qkv[:, (h + kv) * hd:], before[:, (h + kv) * hd:])  # v untouched
    with pytest.raises(ConfigError, match="qk_norm_weights: per_head needs qk_norm: per_head"):
        Attention.resolve_options(**{**opts, "qk_norm": "full"})


# ---- ALiBi, softmax, KV cache ----------------------------------------------------------------

def test_alibi_slopes_8_and_12_heads() -> None:
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -k for k in range(1, 9)], rtol=1e-7)
    twelve = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -(k / 2) for k in (1, 3, 5, 7)]
    np.testing.assert_allclose(alibi_slopes(12), twelve, rtol=1e-7)
    np.testing.assert_allclose(alibi_slopes(16), [2.0 ** -(k / 2) for k in range(1, 17)], rtol=1e-7)
    assert alibi_slopes(12).dtype == np.float32


def test_softmax_is_stable_and_respects_masks() -> None:
    s = np.array([[1000.0, 1000.0, -np.inf], [-1e4, 0.0, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        p = softmax_inplace(s)
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], atol=1e-7)


def test_kv_cache_grows_in_blocks() -> None:
    cache = KVCache(kv_heads=2, head_dim=4)
    assert cache.k.shape == (2, 0, 4) and cache.k.dtype == np.float32
    rng = np.random.default_rng(2)
    written = []

    def add(t: int) -> None:
        k = rng.normal(size=(t, 2, 4)).astype(np.float32)
        written.append(k)
        cache.append(k, -k)

    add(3)
    assert cache.length == 3 and cache.k.shape[1] == KV_BLOCK and cache.nbytes() == 2 * 2 * KV_BLOCK * 4 * 4
    k_array, v_array = cache.k, cache.v
    for _ in range(KV_BLOCK - 3):
        add(1)
    assert cache.length == KV_BLOCK
    assert cache.k is k_array and cache.v is v_array  # filled to capacity without reallocating
    add(1)
    assert cache.k is not k_array and cache.k.shape[1] % KV_BLOCK == 0 and cache.k.shape[1] > KV_BLOCK
    grown = cache.k
    add(5)
    assert cache.k is grown  # room left after growth
    add(10 * KV_BLOCK)
    assert cache.k.shape[1] >= cache.length and cache.k.shape[1] % KV_BLOCK == 0
    everything = np.concatenate(written)  # [T, kv, hd]
    np.testing.assert_array_equal(cache.k[:, : cache.length], everything.transpose(1, 0, 2))
    np.testing.assert_array_equal(cache.v[:, : cache.length], -everything.transpose(1, 0, 2))


# ---- attention against a direct implementation -----------------------------------------------

def _naive_attention(x, wq, wk, wv, wo, h, kv, hd, theta, window):
    """Per-head float64 attention with rotate-half RoPE and an optional sliding window."""
    t = x.shape[0]
    x = x.astype(np.float64)
    q = (x @ wq.T).reshape(t, h, hd)
    k = (x @ wk.T).reshape(t, kv, hd)
    v = (x @ wv.T).reshape(t, kv, hd)
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rot(a):
        a1, a2 = a[..., : hd // 2], a[..., hd // 2:]
        return np.concatenate([a1 * cos - a2 * sin, a2 * cos + a1 * sin], -1)

    q, k = rot(q), rot(k)
    out = np.zeros((t, h, hd))
    for head in range(h):
        g = head // (h // kv)
        for i in range(t):
            lo = 0 if window is None else max(0, i - window + 1)
            s = k[lo:i + 1, g] @ q[i, head] / math.sqrt(hd)
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, head] = p @ v[lo:i + 1, g]
    return out.reshape(t, h * hd) @ wo.T


@pytest.mark.parametrize("h, kv, window", [(4, 4, None), (4, 2, None), (4, 1, 3), (6, 2, 5)])
def test_attention_block_against_naive(h: int, kv: int, window: int | None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(h * 10 + kv)
    d, hd, t = 16, 8, 13
    w = {"q.weight": rng.normal(size=(h * hd, d)) * 0.3, "k.weight": rng.normal(size=(kv * hd, d)) * 0.3,
         "v.weight": rng.normal(size=(kv * hd, d)) * 0.3, "o.weight": rng.normal(size=(d, h * hd)) * 0.3}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    x = rng.normal(size=(t, d)).astype(np.float32)
    expected = _naive_attention(x, w["q.weight"], w["k.weight"], w["v.weight"], w["o.weight"],
                                h, kv, hd, 1e4, window)
    opts = Attention.resolve_options(num_heads=h, num_kv_heads=kv, head_dim=hd, hidden_size=d,
                                     positions="rope", window=window)
    assert set(Attention.params(opts)) >= set(w)
    block = Attention(opts, {**dict(w), "o.bias": None, "q.bias": None, "k.bias": None, "v.bias": None})
    # query blocks smaller than the window, for the pieces below
    small_blocks = Attention({**opts, "query_block": 2}, {**dict(w)})

    full = block.forward(x, block.new_state(), ForwardContext(0, t))
    assert full.dtype == np.float32
    assert np.max(np.abs(full - expected)) < 1e-4

    state = small_blocks.new_state()
    pieces = [small_blocks.forward(x[:5], state, ForwardContext(0, 5))]
    for i in range(5, t):
        pieces.append(small_blocks.forward(x[i:i + 1], state, ForwardContext(i, 1)))
    assert np.max(np.abs(np.concatenate(pieces) - expected)) < 1e-4


def test_attention_rejects_impossible_heads() -> None:
    opts = dict(num_heads=4, num_kv_heads=3, head_dim=8, hidden_size=32, positions="rope")
    with pytest.raises(ConfigError, match="3 key/value heads"):
        Attention.resolve_options(**opts)
    with pytest.raises(ConfigError, match="head_dim"):
        Attention.resolve_options(**{**opts, "num_kv_heads": 2, "head_dim": 0})
    with pytest.raises(ConfigError, match="positions"):
        Attention.resolve_options(**{**opts, "num_kv_heads": 2, "positions": "sinusoidal"})


def test_windowed_kv_cache_is_bounded_and_exact() -> None:
    """A sliding-window layer's cache keeps only what later queries see: decoding 700 tokens
    holds about two windows' worth, and every logit equals the full forward's."""
    import modelkit
    from conftest import fixture_path, max_abs

    model = modelkit.load(fixture_path("mistral_window"))  # window 5
    ids = np.random.default_rng(1).integers(1, model.vocab_size, 700)
    full = model.forward(ids)
    cache = model.make_cache()
    rows = [model.forward(ids[:40], cache)]
    sizes = []
    for t in ids[40:]:
        rows.append(model.forward([int(t)], cache))
        sizes.append(cache.layers[0]["attn"].nbytes())
    assert max_abs(np.concatenate(rows), full) < 2e-5
    state = cache.layers[0]["attn"]
    assert state.length == 700 and state.offset > 400  # old positions were dropped
    assert max(sizes) == sizes[0]  # never grew while decoding
    assert state.v.shape[1] <= 256  # one growth block, for a window of 5 and a 40-token piece


@pytest.mark.parametrize("rows", [2, 7, 32, 300])
def test_gated_mlp_turned_equals_its_plain_path(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Biases on gate, up and down, and a down weight padded with zero rows (widen): the turned
    path that keeps [2I, T] between the products gives what the plain path gives."""
    import sys

    from modelkit.nn.mlp import GatedMLP

    monkeypatch.setattr(sys.modules["modelkit.nn.linear"], "widened_rows", lambda out, inp: out + 3)
    rng = np.random.default_rng(rows)
    d, i = 12, 20
    params = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in
              {"gate.weight": (i, d), "up.weight": (i, d), "down.weight": (d, i),
               "gate.bias": (i,), "up.bias": (i,), "down.bias": (d,)}.items()}
    mlp = GatedMLP({"hidden_size": d, "intermediate_size": i, "activation": "silu"}, params)
    assert mlp._turned and mlp.w_down.shape == (d + 3, i)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    turned = mlp.forward(x, None, ForwardContext(0, rows))
    mlp._turned = False
    plain = mlp.forward(x, None, ForwardContext(0, rows))
    assert turned.shape == plain.shape == (rows, d)
    assert turned.flags.f_contiguous and not plain.flags.f_contiguous  # the turned path ran, at any row count
    np.testing.assert_allclose(turned, plain, rtol=1e-5, atol=1e-5)
    g = x @ params["gate.weight"].T + params["gate.bias"]
    u = x @ params["up.weight"].T + params["up.bias"]
    expected = (g / (1 + np.exp(-g)) * u) @ params["down.weight"].T + params["down.bias"]
    np.testing.assert_allclose(turned, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("q_size", "v_size", "scored"), [
    (2.0, 3.0, 1),      # scores within DIRECT_EXP_BOUND: exponentials without the shift
    (20.0, 3.0, 1),     # |q| |k| = 80 > 64: the shifted softmax
    (15.75, 1e12, 2)])  # |q| |k| = 63 but the values so large that unshifted sums overflow: again, shifted
def test_prompt_attention_takes_the_unshifted_softmax_only_where_it_is_exact(
        q_size: float, v_size: float, scored: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelkit.nn.kv_cache import KVCache

    opts = Attention.resolve_options(num_heads=1, num_kv_heads=1, head_dim=4, hidden_size=4, positions="none")
    eye = np.eye(4, dtype=np.float32)
    block = Attention(opts, {"q.weight": eye, "k.weight": eye, "v.weight": eye, "o.weight": eye})
    calls = []
    original = Attention._scores
    monkeypatch.setattr(Attention, "_scores", lambda self, *a: calls.append(1) or original(self, *a))
    t = 3
    keys = np.zeros((t, 1, 4), np.float32)
    keys[:, 0, 0] = 8.0  # every key alike: each query's weights are equal, its output the mean value
    values = np.zeros((t, 1, 4), np.float32)
    values[:, 0, 1] = v_size * np.arange(1, t + 1)
    cache = KVCache(1, 4)
    cache.append(keys, values)
    q = np.zeros((t, 1, 4), np.float32)
    q[:, 0, 0] = q_size  # scaled by 1/2 in attend: |q| |k| = 4 q_size
    out = block.attend(q, cache, 0)  # [T, 4]
    expected = v_size * np.cumsum(np.arange(1, t + 1)) / np.arange(1, t + 1)  # the mean of each query's keys
    assert len(calls) == scored and np.isfinite(out).all()
    np.testing.assert_allclose(out[:, 1], expected, rtol=1e-6)
