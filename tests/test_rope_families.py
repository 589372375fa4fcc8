"""GPT-J, Cohere, Cohere 2, StableLM 2 12B's options and Phi's qk_layernorm beyond the model
contract: each fixture's distinctive option changes its logits (so the contract tests it), the
config values these mappings refuse are refused, and stacked weights entries (one tensor per
head) are checked piece by piece."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import (ATOL, copy_fixture, edit_config, fixture_path, load_cached, max_abs, read_tensors,
                      reference, write_tensors)

import modelkit


def _variant_mapping(tmp_path: Path, arch: str, layers: dict[str, Any]) -> Path:
    """A user mapping: ``arch`` with ``layers`` merged over its own."""
    path = tmp_path / f"{arch}_variant.yaml"
    path.write_text(yaml.safe_dump({"extends": arch, "name": f"{arch}_variant", "layers": layers}))
    return path


# (fixture, architecture, layers override, strict): each undoes one option the fixture exercises
UNDONE = [
    ("gptj", "gptj", {"blocks": {"attn": {"rope_layout": "halves"}}}, True),
    ("cohere", "cohere", {"blocks": {"attn": {"rope_layout": "halves"}}}, True),
    ("cohere", "cohere", {"blocks": {"attn": {"qk_norm_kind": "rmsnorm"}}}, True),
    ("cohere2", "cohere2", {"blocks": {"attn": {"positions": "rope"}}}, True),
    # the per-head norms dropped (their tensors become unexpected, hence strict=False)
    ("stablelm_parallel_qknorm", "stablelm", {"variants": {"parallel": {"blocks": {"attn": {"qk_norm": None}}}}},
     False),
    ("phi_qk_layernorm", "phi", {"variants": {"parallel": {"blocks": {"attn": {"qk_norm": None}}}}}, False),
]


@pytest.mark.parametrize("name, arch, layers, strict", UNDONE, ids=[f"{u[0]}-{i}" for i, u in enumerate(UNDONE)])
def test_each_distinctive_option_changes_the_logits(tmp_path: Path, name: str, arch: str, layers: dict,
                                                    strict: bool) -> None:
    ids, ref = reference(name)
    assert max_abs(load_cached(name).forward(ids), ref) < ATOL
    model = modelkit.load(fixture_path(name), mapping=_variant_mapping(tmp_path, arch, layers), strict=strict)
    assert max_abs(model.forward(ids), ref) > 1e-2


def test_stablelm_parallel_qknorm_runs_parallel_layers_with_per_head_weights() -> None:
    model = load_cached("stablelm_parallel_qknorm")
    assert [layer.variant for layer in model.layers] == ["parallel", "parallel"]
    attn = model.layers[0].blocks["attn"]
    assert attn.q_norm.shape == (4, 8) and attn.k_norm.shape == (2, 8)
    stored = read_tensors(fixture_path("stablelm_parallel_qknorm"))
    for j in range(4):  # head j's own LayerNorm, in order
        np.testing.assert_array_equal(attn.q_norm[j], stored[f"model.layers.0.self_attn.q_layernorm.norms.{j}.weight"])
    assert max_abs(attn.q_norm[0], attn.q_norm[1]) > 1e-2


def test_cohere_logit_scale_multiplies_the_logits(tmp_path: Path) -> None:
    ids, ref = reference("cohere")
    folder = copy_fixture("cohere", tmp_path / "unscaled")
    edit_config(folder, logit_scale=1.0)
    unscaled = modelkit.load(folder).forward(ids)
    assert max_abs(unscaled * np.float32(0.37), ref) < ATOL
    assert max_abs(unscaled, ref) > 0.5


def test_cohere2_window_and_nope_layers(tmp_path: Path) -> None:
    """Layers 0 and 2 slide (window 4 < T = 17) with rotary; 1 and 3 see everything, unrotated."""
    model = load_cached("cohere2")
    attn = [layer.blocks["attn"] for layer in model.layers]
    assert [a.window for a in attn] == [4, None, 4, None]
    assert [a.rope is not None for a in attn] == [True, False, True, False]
    ids, ref = reference("cohere2")
    folder = copy_fixture("cohere2", tmp_path / "wide")
    edit_config(folder, sliding_window=64)
    wide = modelkit.load(folder).forward(ids)
    assert max_abs(wide[:4], ref[:4]) < ATOL  # the same while every key is inside the window
    assert max_abs(wide, ref) > 1e-2


# ---- what the mappings refuse ----------------------------------------------------------------

REFUSED = [
    ("gptj", {"rotary_dim": 32}, "rotary_dim (or, when null, n_embd) must be at most n_embd / n_head"),
    ("gptj", {"rotary_dim": None}, "rotary_dim (or, when null, n_embd) must be at most n_embd / n_head"),
    ("gptj", {"rotary_dim": 7}, "rotary_dim must be even"),
    ("cohere", {"logit_scale": 0}, "logit_scale: 0 makes every logit 0"),
    ("cohere2", {"layer_types": ["sliding_attention"]}, "layer_types must name one kind per layer"),
    ("cohere2", {"sliding_window": None}, "sliding_window must be given"),
]


@pytest.mark.parametrize("name, changes, message", REFUSED, ids=[f"{r[0]}-{next(iter(r[1]))}" for r in REFUSED])
def test_config_values_these_mappings_do_not_implement_are_refused(tmp_path: Path, name: str, changes: dict,
                                                                   message: str) -> None:
    folder = copy_fixture(name, tmp_path / name)
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        modelkit.inspect(folder)


def test_gptj_with_one_head_and_no_rotary_dim_rotates_the_whole_head(tmp_path: Path) -> None:
    """transformers' rotary_dim: null rotates a table n_embd wide: the whole head, when there is one."""
    folder = copy_fixture("gptj", tmp_path / "one_head")
    edit_config(folder, rotary_dim=None, n_head=1)
    source, _, plan = modelkit.inspect(folder)
    source.close()
    assert plan.layers[0].blocks["attn"].options["rope_dim"] == 32


# ---- stacked weights entries -----------------------------------------------------------------

PIECE = "model.layers.1.self_attn.k_layernorm.norms.{}.weight"


def _plan_report(folder: Path) -> list[str]:
    source, _, plan = modelkit.inspect(folder)
    source.close()
    return plan.report.lines()


def test_a_missing_piece_of_a_stack_is_reported_by_name(tmp_path: Path) -> None:
    folder = copy_fixture("stablelm_parallel_qknorm", tmp_path / "missing")
    tensors = read_tensors(folder)
    del tensors[PIECE.format(1)]
    write_tensors(folder, tensors)
    assert _plan_report(folder) == [f"missing     {PIECE.format(1)}  (canonical layers.1.attn.k_norm.weight, "
                                    f"expected shape [8])"]
    with pytest.raises(modelkit.WeightMismatchError, match=r"norms\.1\.weight"):
        modelkit.load(folder)


def test_a_mis_shaped_or_extra_piece_is_reported(tmp_path: Path) -> None:
    folder = copy_fixture("stablelm_parallel_qknorm", tmp_path / "shapes")
    tensors = read_tensors(folder)
    tensors[PIECE.format(0)] = tensors[PIECE.format(0)][:6].copy()
    tensors[PIECE.format(2)] = tensors[PIECE.format(1)].copy()  # a third key head the config lacks
    write_tensors(folder, tensors)
    lines = _plan_report(folder)
    assert f"unexpected  {PIECE.format(2)}  (shape [8]; neither mapped nor ignored)" in lines
    assert (f"mis-shaped  {PIECE.format(0)}  (canonical layers.1.attn.k_norm.weight): shape [6], expected [2, 8]; "
            f"2 stacked: [2, 6]") in lines
    assert len(lines) == 2
