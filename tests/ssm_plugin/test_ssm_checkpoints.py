"""Real shapes for the ssm plugin: bench/checkpoints.py builds random-weight checkpoints with the
published shapes of mamba-130m and lfm2-350m, and modelkit validates, loads (with the published
parameter counts) and runs them, decoding equal to the full forward (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, max_abs, run_cli

import modelkit

PUBLISHED = {"mamba-130m": 129_135_360, "lfm2-350m": 354_483_968}


def _bench():
    spec = importlib.util.spec_from_file_location("bench_checkpoints", ROOT / "bench" / "checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shapes_give_the_published_parameter_counts() -> None:
    bench = _bench()
    for name, count in PUBLISHED.items():
        assert bench.parameter_count(name) == count, name
    shapes = bench.tensor_shapes(bench.CONFIGS["lfm2-350m"])
    assert shapes["model.layers.0.feed_forward.w1.weight"] == (4608, 1024)  # 6656 auto-adjusted


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_real_shape_checkpoint_validates_loads_and_runs(name: str, tmp_path: Path) -> None:
    folder = _bench().build_checkpoint(name, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())

    out = run_cli("validate", "--model", folder)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"architecture {cfg['model_type']}" in out.stdout

    model = modelkit.load(folder)
    assert model.parameter_count() == PUBLISHED[name]
    ids = np.random.default_rng(0).integers(0, cfg["vocab_size"], 24)
    full = model.forward(ids)
    assert full.shape == (24, cfg["vocab_size"]) and np.isfinite(full).all()
    cache = model.make_cache()
    stepped = np.concatenate([model.forward(ids[:9], cache)] + [model.forward([int(t)], cache) for t in ids[9:]])
    assert max_abs(stepped, full) < 1e-4 * max(1.0, float(np.abs(full).max()))
    out_ids = model.generate(model.tokenizer.encode("hi"), max_new_tokens=4)
    assert 1 <= len(out_ids) <= 4 and all(0 <= t < cfg["vocab_size"] for t in out_ids)
