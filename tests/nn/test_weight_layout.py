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
