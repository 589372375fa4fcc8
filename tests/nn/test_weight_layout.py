"""The weight layout (modelkit.nn.layout): the setting is honoured and checked, the probe runs
once per BLAS thread count and picks a layout by shape class, and a model gives the same logits
in either layout."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ATOL, fixture_path, max_abs, reference
from threadpoolctl import threadpool_limits

import modelkit
from modelkit.errors import ConfigError
from modelkit.nn import layout
from modelkit.nn.linear import product_layout


def test_the_setting_picks_the_layout_and_a_bad_one_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    w = np.ones((8, 4), np.float32)
    monkeypatch.setenv(layout.ENV, "columns")
    assert product_layout(w).flags.f_contiguous and not product_layout(w).flags.c_contiguous
    monkeypatch.setenv(layout.ENV, "rows")
    assert product_layout(w) is w  # float32 already [out, in]: no copy
    monkeypatch.setenv(layout.ENV, "sideways")
    with pytest.raises(ConfigError, match="MODELKIT_PRODUCT_LAYOUT"):
        product_layout(w)


def test_measure_probes_once_per_thread_count_and_splits_tall_from_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_probe(out: int, inp: int) -> layout.Choice:
        calls.append((out, inp))
        return layout.Choice("F", False) if out > inp else layout.Choice("C", True)

    monkeypatch.setenv(layout.ENV, "measure")
    monkeypatch.setattr(layout, "probe", fake_probe)
    monkeypatch.setattr(layout, "_measured", {})
    monkeypatch.setattr(layout, "blas_threads", lambda: 2)
    assert layout.weight_order(100, 10) == "F" and layout.weight_order(10, 100) == "C"
    assert layout.weight_order(10, 10) == "C" and layout.turned(10, 100) and not layout.turned(100, 10)
    assert calls == [layout.PROBE_SHAPES["tall"], layout.PROBE_SHAPES["wide"]]  # each class once, when first asked
    assert layout.measured() == {2: {"tall": ("F", False), "wide": ("C", True)}}
    monkeypatch.setattr(layout, "blas_threads", lambda: 1)  # one thread: [in, out], turned, no probe
    assert layout.weight_order(10, 100) == "F" and layout.turned(100, 10) and len(calls) == 2


def test_the_probe_answers_with_a_layout_and_a_form() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        choice = layout.probe(256, 64, total_bytes=1 << 20, rounds=2)
    assert choice.order in ("C", "F") and isinstance(choice.turned, bool)


@pytest.mark.parametrize("rows", [1, 2, 16, 32, 33])
@pytest.mark.parametrize("order", ["C", "F"])
def test_linear_gives_the_product_in_every_form(rows: int, order: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from modelkit.nn.linear import linear

    module = sys.modules["modelkit.nn.linear"]  # (modelkit.nn.linear, as an attribute, is the function)
    rng = np.random.default_rng(rows)
    w = np.asarray(rng.standard_normal((48, 24), dtype=np.float32), order=order)
    x = rng.standard_normal((rows, 24), dtype=np.float32)
    for is_turned in (False, True):
        monkeypatch.setattr(module, "turned", lambda out, inp: is_turned)
        y = linear(x, w)
        assert y.flags.c_contiguous and y.dtype == np.float32 and y.shape == (rows, 48)
        assert max_abs(y, x.astype(np.float64) @ w.T.astype(np.float64)) < 1e-5


@pytest.mark.parametrize("name", ["llama_gqa", "gh_hybrid"])
def test_a_model_gives_the_same_logits_in_either_layout(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ids, ref = reference(name)
    out = {}
    for setting in ("rows", "columns"):
        monkeypatch.setenv(layout.ENV, setting)
        model = modelkit.load(fixture_path(name))
        assert model.layers[0].blocks  # loaded
        out[setting] = model.forward(ids.tolist())
        assert max_abs(out[setting], ref) < ATOL
    assert max_abs(out["rows"], out["columns"]) < 2e-5


def test_a_bad_setting_is_one_line_from_the_cli() -> None:
    from conftest import cli_env, run_cli

    proc = run_cli("run", "--model", fixture_path("llama_gqa"), "--prompt", "hi", "--max-tokens", "1",
                   env=cli_env(MODELKIT_PRODUCT_LAYOUT="sideways"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "modelkit: error: MODELKIT_PRODUCT_LAYOUT='sideways': expected one of measure, rows, columns"]


def test_widened_rows_probes_only_small_weights_and_only_when_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_probe_rows(out: int, inp: int) -> int:
        calls.append((out, inp))
        return out + 16

    monkeypatch.setattr(layout, "probe_rows", fake_probe_rows)
    monkeypatch.setattr(layout, "_widened", {})
    monkeypatch.setattr(layout, "blas_threads", lambda: 2)
    monkeypatch.setenv(layout.ENV, "rows")  # a pinned layout: no padding, no probe
    assert layout.widened_rows(64, 64) == 64 and not calls
    monkeypatch.setenv(layout.ENV, "measure")
    assert layout.widened_rows(64, 64) == 80 and layout.widened_rows(64, 64) == 80 and calls == [(64, 64)]
    assert layout.widened_rows(2048, 2048) == 2048 and len(calls) == 1  # above WIDEN_BELOW: never probed
    monkeypatch.setattr(layout, "blas_threads", lambda: 1)  # one thread: nothing to spread the product over
    assert layout.widened_rows(32, 64) == 32 and len(calls) == 1


def test_the_row_probe_answers_within_twice_the_rows() -> None:
    with threadpool_limits(limits=2, user_api="blas"):
        rows = layout.probe_rows(48, 64, total_bytes=1 << 20, rounds=2)
    assert 48 <= rows <= 96


def test_a_widened_weight_gives_the_same_product() -> None:
    import sys

    from modelkit.nn.linear import linear, widen

    module = sys.modules["modelkit.nn.linear"]
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 24), dtype=np.float32)
    for rows in (1, 3, 40):
        x = rng.standard_normal((rows, 24), dtype=np.float32)
        saved = module.widened_rows
        module.widened_rows = lambda out, inp: out + 9
        try:
            wide = widen(w)
        finally:
            module.widened_rows = saved
        assert wide.shape == (49, 24) and not wide[40:].any() and np.array_equal(wide[:40], w)
        assert max_abs(linear(x, wide, 40), x @ w.T) < 1e-5 and linear(x, wide, 40).shape == (rows, 40)
        # two or more rows multiply the weight's own rows: a whole array, no view of a wider one
        assert linear(x, wide, 40).flags.c_contiguous and (rows == 1 or linear(x, wide, 40).base is None)
    assert widen(np.asfortranarray(w)).shape == (40, 24)  # an [in, out] weight is never padded


@pytest.mark.parametrize("name", ["llama_gqa", "llama_biases"])
def test_a_model_with_widened_weights_gives_the_same_logits_alone_and_batched(name: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    module = sys.modules["modelkit.nn.linear"]
    ids, ref = reference(name)
    monkeypatch.setattr(module, "widened_rows", lambda out, inp: out + 5)
    model = modelkit.load(fixture_path(name))
    attn = next(b for b in model.layers[0].blocks.values() if hasattr(b, "w_o"))
    assert attn.w_o.shape[0] == attn.d + 5
    assert max_abs(model.forward(ids.tolist()), ref) < ATOL
    caches = [model.make_cache() for _ in range(3)]
    prompts = [ids[:n].tolist() for n in (3, 5, 4)]
    for cache, prompt in zip(caches, prompts):
        model.forward(prompt, cache)
    nxt = [int(ids[n]) for n in (3, 5, 4)]
    batched = model.decode_batch(nxt, caches)
    for row, (prompt, token) in zip(batched, zip(prompts, nxt)):
        alone = model.forward(prompt + [token])[-1]
        assert max_abs(row, alone) < ATOL
