"""The routed-expert families beyond the model contract: each routing as its reference routes,
both tensor layouts, Qwen3-MoE's dense layers, the hub's config spelling, and the refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ATOL, copy_fixture, edit_config, load_cached, max_abs, reference

import modelkit
from modelkit.nn.mlp import GatedMLP
from modelkit.nn.moe import MoE


@pytest.mark.parametrize("name,routing,renormalize,shared", [
    ("mixtral", "softmax_topk", True, False),
    ("qwen3_moe", "softmax_topk", False, False),     # norm_topk_prob false
    ("qwen3_moe_fused", "softmax_topk", True, False),  # norm_topk_prob true
    ("granitemoe", "topk_softmax", False, False),
    ("gh_moe", "topk_softmax", False, True),          # Granite 4.0-H: the shared MLP beside
])
def test_each_family_routes_as_its_reference(name: str, routing: str, renormalize: bool, shared: bool) -> None:
    blocks = [layer.blocks["mlp"] for layer in load_cached(name).layers]
    moe = [b for b in blocks if isinstance(b, MoE)]
    assert moe and all((b.routing, b.renormalize, b.top_k, b.gate_up.shape[0]) == (routing, renormalize, 2, 4)
                       for b in moe)
    assert all((b.shared is not None) == shared for b in moe)


def test_qwen3_moe_dense_layers_are_gated_mlps() -> None:
    model = load_cached("qwen3_moe")  # mlp_only_layers [2]
    assert [type(layer.blocks["mlp"]) for layer in model.layers] == [MoE, MoE, GatedMLP, MoE]
    assert model.layers[2].blocks["mlp"].w_down.shape == (32, 64)  # intermediate_size, not moe_intermediate_size
    assert model.layers[0].blocks["mlp"].down.shape == (4, 32, 24)
    model = load_cached("qwen3_moe_fused")  # decoder_sparse_step 2
    assert [type(layer.blocks["mlp"]) for layer in model.layers] == [GatedMLP, MoE, GatedMLP, MoE]


def test_both_config_spellings_of_the_expert_count() -> None:
    assert "num_experts" in load_cached("qwen3_moe").config.raw  # the hub's spelling
    assert "num_local_experts" in load_cached("qwen3_moe_fused").config.raw  # transformers 5's
    assert load_cached("qwen3_moe").config["num_experts"] == load_cached("qwen3_moe_fused").config["num_experts"] == 4


def test_qwen3_moe_windows_every_layer_with_use_sliding_window(tmp_path: Path) -> None:
    """Unlike Qwen2 and Qwen3, no max_window_layers: the window is on every layer, or on none."""
    assert [layer.blocks["attn"].options["window"] for layer in load_cached("qwen3_moe_fused").layers] == [5] * 4
    folder = copy_fixture("qwen3_moe_fused", tmp_path / "m")
    edit_config(folder, max_window_layers=2)  # not a Qwen3-MoE setting: transformers does not read it
    source, _, plan = modelkit.inspect(folder)
    source.close()
    assert [layer.blocks["attn"].options["window"] for layer in plan.layers] == [5] * 4
    assert all(layer.blocks["attn"].options["window"] is None for layer in load_cached("qwen3_moe").layers)


def test_mixtral_layouts_give_the_same_logits() -> None:
    ids, ref = reference("mixtral")
    assert max_abs(load_cached("mixtral_fused").forward(ids), load_cached("mixtral").forward(ids)) == 0.0
    assert max_abs(load_cached("mixtral_fused").forward(ids), ref) < ATOL
    assert load_cached("mixtral").layers[0].blocks["attn"].options["window"] == 6


def test_granitemoe_in_memory_names_load(tmp_path: Path) -> None:
    from conftest import rename_tensors

    folder = copy_fixture("granitemoe", tmp_path / "m")
    renames = {".block_sparse_moe.input_linear.weight": ".block_sparse_moe.experts.gate_up_proj",
               ".block_sparse_moe.output_linear.weight": ".block_sparse_moe.experts.down_proj",
               ".block_sparse_moe.router.layer.weight": ".block_sparse_moe.router.weight"}
    rename_tensors(folder, renames)
    ids, ref = reference("granitemoe")
    assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL


def test_expert_tensors_of_a_dense_layer_are_reported(tmp_path: Path) -> None:
    """mlp_only_layers that disagree with the checkpoint: a mismatch, never a silent skip."""
    folder = copy_fixture("qwen3_moe", tmp_path / "m")
    edit_config(folder, mlp_only_layers=[0, 2])
    with pytest.raises(modelkit.WeightMismatchError) as info:
        modelkit.load(folder)
    report = info.value.report
    assert ("model.layers.0.mlp.gate_proj.weight", "layers.0.mlp.gate.weight", (64, 32)) in report.missing
    assert any(name == "model.layers.0.mlp.experts.3.up_proj.weight" for name, _ in report.unexpected)


# ---- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,changes,message", [
    ("mixtral", {"num_experts_per_tok": 5}, "num_experts_per_tok must be at most num_local_experts"),
    ("qwen3_moe", {"num_experts_per_tok": 5}, "num_experts_per_tok must be at most num_experts"),
    ("granitemoe", {"num_experts_per_tok": 5}, "num_experts_per_tok must be at most num_local_experts"),
    ("mixtral", {"hidden_act": "tanh"}, "activation must be one of"),
    ("qwen3_moe", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
])
def test_config_the_mappings_do_not_implement_is_refused(tmp_path: Path, name: str, changes: dict,
                                                         message: str) -> None:
    folder = copy_fixture(name, tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError, match=message):
        modelkit.inspect(folder)
