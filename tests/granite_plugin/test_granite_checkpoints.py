"""Real shapes: bench/checkpoints.py builds random-weight checkpoints of published models, and
modelkit validates, loads and runs them (slow), with the published parameter counts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

import modelkit


def _bench():
    spec = importlib.util.spec_from_file_location("bench_checkpoints", ROOT / "bench" / "checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PUBLISHED = {"granite-4.0-h-350m": 340_332_224, "granite-4.0-h-1b": 1_461_538_368, "smollm2-135m": 134_515_008}


def test_shapes_give_the_published_parameter_counts() -> None:
    bench = _bench()
    for name, count in PUBLISHED.items():
        assert bench.parameter_count(name) == count, name
    cfg = bench.CONFIGS["granite-4.0-h-350m"]
    assert [i for i, k in enumerate(cfg["layer_types"]) if k == "attention"] == [10, 13, 17, 27]


@pytest.mark.parametrize("name", ["granite-4.0-h-350m", "granite-4.0-h-1b", "granite-3.0-1b-a400m", "smollm2-135m"])
def test_every_shape_plans_cleanly(name: str) -> None:
    """Each bench config's tensors, as headers alone, fit the mapping that serves it (the routed
    experts of granite-3.0-1b-a400m included)."""
    from modelkit.checkpoint.source import TensorInfo
    from modelkit.loading.choose import choose_mapping
    from modelkit.loading.plan import make_plan

    bench = _bench()
    cfg = bench.CONFIGS[name]
    infos = {n: TensorInfo(shape, "BF16", "model.safetensors") for n, shape in bench.tensor_shapes(cfg).items()}
    plan = make_plan(choose_mapping(cfg, "safetensors").mapping, cfg, infos)
    assert plan.report.ok, plan.report.lines()[:5]
    assert sum(int(np.prod(t.shape)) for t in plan.tensors.values()) == bench.parameter_count(name)


def test_tokenizer_covers_the_vocabulary() -> None:
    from tokenizers import Tokenizer

    bench = _bench()
    text = bench.build_tokenizer(1000, {0: "<|pad|>", 700: "<|end_of_text|>", 701: "<|start_of_role|>"})
    tok = Tokenizer.from_str(text)
    assert tok.get_vocab_size(with_added_tokens=True) == 1000
    ids = tok.encode("<|start_of_role|>hi there<|end_of_text|>").ids
    assert ids[0] == 701 and ids[-1] == 700 and all(0 <= i < 1000 for i in ids)
    assert tok.decode(ids, skip_special_tokens=True) == "hi there"
    assert tok.id_to_token(997) == "<tok997>" and tok.decode([997]) == "<tok997>"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_real_shape_checkpoint_validates_loads_and_runs(name: str, tmp_path: Path) -> None:
    folder = _bench().build_checkpoint(name, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    arch = "granite" if cfg["model_type"] == "granitemoehybrid" else "llama"

    out = run_cli("validate", "--model", folder)
    assert out.returncode == 0, out.stdout + out.stderr
    run = run_cli("run", "--arch", arch, "--model", folder, "--prompt", "hi", "--max-tokens", "4", timeout=600)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr

    model = modelkit.load(folder)
    assert model.parameter_count() == PUBLISHED[name]
    ids = model.tokenizer.encode("hi")
    cache = model.make_cache()
    logits = model.forward(ids, cache, last_only=True)
    assert logits.shape == (1, cfg["vocab_size"]) and np.isfinite(logits).all()
    out_ids = model.generate(ids, max_new_tokens=4)
    assert 1 <= len(out_ids) <= 4 and all(0 <= t < cfg["vocab_size"] for t in out_ids)
