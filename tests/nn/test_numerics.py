"""Numerics: long sequences through every architecture family stay finite, and so do the Mamba2
functions at the extremes of their inputs.

The 4096-token runs are marked slow (a few seconds each on the tiny fixtures); a 600-token run
of each family, which crosses the 512-token prefill chunk, runs in the default tier. Each long
run also decodes the last tokens one at a time from the prefilled cache and compares them with
the full forward pass, so the step path is checked at long positions too.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_fixture, fixture_path, load_cached, read_tensors, write_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import modelkit
from modelkit.nn.activations import sigmoid, silu, softplus
from modelkit.nn.attention import softmax_inplace

# one fixture per family and layout: rope (default, llama3 scaling, linear), sliding window,
# Falcon's three layouts (multi-query parallel, new decoder, ALiBi sequential), Granite 3 and
# Granite 4.0-H (hybrid NoPE, MoE, all Mamba, rope + untied, attention only), Mixtral (routed
# experts, windowed)
FAMILIES = ["llama_gqa", "llama3_rope_headdim", "llama_linear_rope", "mistral_window", "falcon_7b", "falcon_40b",
            "falcon_rw", "granite3", "gh_hybrid", "gh_moe", "gh_all_mamba", "gh_rope_untied", "gh_attention_only",
            "mixtral"]
LONG = 4096
STEPS = 4  # decoded one at a time after the prefill, compared with the full forward

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def gpt2_long(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2 with 4096 learned positions: the fixture's 64 rows, then N(0, 0.1) rows (as wpe)."""
    folder = copy_fixture("gpt2", tmp_path_factory.mktemp("gpt2_long") / "m", weights=False)
    tensors = read_tensors(fixture_path("gpt2"))
    wpe = tensors["transformer.wpe.weight"]
    extra = np.random.default_rng(0).normal(0.0, 0.1, (LONG - wpe.shape[0], wpe.shape[1])).astype(np.float32)
    tensors["transformer.wpe.weight"] = np.concatenate([wpe, extra])
    write_tensors(folder, tensors)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(n_positions=LONG, n_ctx=LONG)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _model(name: str, gpt2_long: Path) -> modelkit.model.Model:
    return modelkit.load(gpt2_long) if name == "gpt2" else load_cached(name)


def _check_sequence(model: modelkit.model.Model, length: int) -> None:
    """Full forward of ``length`` random tokens is finite; prefill + STEPS decoded tokens agree."""
    ids = np.random.default_rng(length).integers(0, model.vocab_size, length)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # an overflow warning would reach the CLI's stderr
        full = model.forward(ids)
        cache = model.make_cache()
        model.forward(ids[:-STEPS], cache)
        steps = np.concatenate([model.forward([int(t)], cache) for t in ids[-STEPS:]])
    assert full.dtype == np.float32 and full.shape == (length, model.vocab_size)
    assert np.isfinite(full).all() and np.isfinite(steps).all()
    scale = float(np.abs(full).max())
    np.testing.assert_allclose(steps, full[-STEPS:], rtol=0, atol=1e-4 * max(scale, 1.0))


@pytest.mark.parametrize("name", ["gpt2", *FAMILIES])
def test_600_tokens_stay_finite(name: str, gpt2_long: Path) -> None:
    _check_sequence(_model(name, gpt2_long), 600)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", *FAMILIES])
def test_4096_tokens_stay_finite(name: str, gpt2_long: Path) -> None:
    _check_sequence(_model(name, gpt2_long), LONG)


@pytest.mark.parametrize("name", ["llama_gqa", "falcon_rw", "granite3", "gh_hybrid", "qwen3_moe", "granitemoe"])
def test_large_activations_stay_finite(name: str) -> None:
    """Embeddings scaled by 1000 (activations of a few thousand occur in real models): softmax
    and the norms see scores and squares far from 1 and must still give finite logits."""
    model = modelkit.load(fixture_path(name))
    # weights read from a float32 file are read-only views of it: scale a copy (and the tied head)
    scaled = model.embed * np.float32(1000.0)
    if model.head is model.embed:
        model.head = scaled
    model.embed = scaled
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        logits = model.forward(np.arange(1, 200) % model.vocab_size)
    assert np.isfinite(logits).all()


# ---- Mamba2 at the extremes ---------------------------------------------------------------------

def _extreme_mamba(tmp: Path) -> Path:
    """gh_hybrid with A_log and dt_bias spanning -1e4..1e4 in every Mamba layer."""
    tensors = read_tensors(fixture_path("gh_hybrid"))
    a_log = np.array([-1e4, -100.0, -30.0, 0.0, 30.0, 88.0, 100.0, 1e4], np.float32)
    dt_bias = np.array([1e4, -1e4, 100.0, -100.0, 30.0, -30.0, 0.0, 1e3], np.float32)
    for name in tensors:
        if name.endswith("mamba.A_log"):
            tensors[name] = a_log.copy()
        elif name.endswith("mamba.dt_bias"):
            tensors[name] = dt_bias.copy()
    folder = copy_fixture("gh_hybrid", tmp / "m", weights=False)
    write_tensors(folder, tensors)
    return folder


def test_extreme_decay_rates_and_time_steps_in_a_model(tmp_path: Path) -> None:
    """Decays that underflow to exactly 0 and time steps of 1e4: prefill (chunked scan) and
    decoding (one step at a time) stay finite and agree."""
    model = modelkit.load(_extreme_mamba(tmp_path))
    ids = np.random.default_rng(0).integers(0, model.vocab_size, 600)
    with np.errstate(over="ignore"):  # see the next test
        full = model.forward(ids)
        cache = model.make_cache()
        model.forward(ids[:-STEPS], cache)
        steps = np.concatenate([model.forward([int(t)], cache) for t in ids[-STEPS:]])
    assert np.isfinite(full).all() and np.isfinite(steps).all()
    np.testing.assert_allclose(steps, full[-STEPS:], rtol=0, atol=1e-4)


def test_extreme_decay_rates_print_no_warning(tmp_path: Path) -> None:
    model = modelkit.load(_extreme_mamba(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.forward(np.arange(1, 40))


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# |dt + dt_bias| stays below the float32 maximum
half32 = st.floats(-float(np.float32(1e38)), float(np.float32(1e38)), width=32)


@settings(FUZZ)
@given(x=hnp.arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_softplus_sigmoid_silu_are_finite_everywhere(x: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sp = softplus(x)
        sg = sigmoid(x)
        si = silu(x)
    for out in (sp, sg, si):
        assert out.dtype == np.float32 and np.isfinite(out).all()
    assert (sp >= 0).all() and (sp >= x).all()
    assert ((sg >= 0) & (sg <= 1)).all()


@settings(FUZZ)
@given(dt=hnp.arrays(np.float32, (3, 4), elements=half32), bias=hnp.arrays(np.float32, (4,), elements=half32),
       a_log=hnp.arrays(np.float32, (4,), elements=finite32))
def test_mamba2_time_steps_and_decay_rates_are_finite(dt: np.ndarray, bias: np.ndarray, a_log: np.ndarray) -> None:
    from modelkit_granite.mamba2 import decay_rates, time_steps

    steps = time_steps(dt, bias, (0.0, math.inf))
    a = decay_rates(a_log)
    assert steps.dtype == np.float32 and np.isfinite(steps).all() and (steps >= 0).all()
    assert a.dtype == np.float32 and np.isfinite(a).all() and (a <= 0).all()
    with np.errstate(over="ignore"):  # dt * A may overflow to -inf: a decay of exactly 0
        decay = np.exp(steps * a)
    assert np.isfinite(decay).all() and ((decay >= 0) & (decay <= 1)).all()


@settings(FUZZ)
@given(scores=hnp.arrays(np.float32, (3, 16), elements=st.one_of(finite32, st.just(-np.inf))))
def test_softmax_is_finite_for_any_scores(scores: np.ndarray) -> None:
    scores[:, 0] = np.where(np.isfinite(scores[:, 0]), scores[:, 0], 0.0)  # a causal row always sees itself
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        p = softmax_inplace(scores.copy())
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-5)
