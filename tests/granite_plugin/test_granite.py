"""Granite 4.0-H (the granite plugin) beyond the model contract (test_model_contract.py):
both layer_types spellings, configs without layer_types / time_step_limit, "auto" head size,
bf16 weights, routed experts, strict loading and the plugin's registrations.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import (ATOL, DELETE, ROOT, copy_fixture, edit_config, fixture_path, load_cached, max_abs,
                      read_tensors, reference, rename_tensors, run_cli, write_tensors)

import modelkit
from modelkit import plugins
from modelkit.loading.choose import choose_mapping
from modelkit.nn.moe import MoE, route
from modelkit_granite import mamba2_block
from modelkit_granite.mamba2_block import Mamba2, Mamba2State

# fixture -> the kind of each layer
GH_FIXTURES = {
    "gh_hybrid": ["mamba", "attention", "mamba", "mamba"],
    "gh_hybrid_bf16": ["mamba", "attention", "mamba", "mamba"],
    "gh_rope_untied": ["mamba", "attention", "mamba", "mamba"],
    "gh_attention_only": ["attention"] * 4,
    "gh_all_mamba": ["mamba"] * 4,
    "gh_hub_config": ["mamba", "attention", "mamba", "mamba"],
    "gh_moe": ["mamba_moe", "attention_moe", "mamba_moe", "attention_moe"],
}
NAMES = list(GH_FIXTURES)
SELF_ATOL = 2e-5  # the same model with and without its cache


def _step_reference(name: str) -> np.ndarray:
    with np.load(fixture_path(name) / "ref.npz") as ref:
        return ref["logits_step"].copy()


def test_cache_holds_conv_and_ssm_state_per_mamba_layer() -> None:
    model = load_cached("gh_hybrid")
    cache = model.make_cache()
    kinds = [type(states.get("ssm", states.get("attn"))).__name__ for states in cache.layers]
    assert kinds == ["Mamba2State", "KVCache", "Mamba2State", "Mamba2State"]
    state = cache.layers[0]["ssm"]
    assert isinstance(state, Mamba2State)
    cfg = model.config
    conv_dim = cfg.mamba_d_inner + 2 * cfg.mamba_n_groups * cfg.mamba_d_state
    assert state.conv.shape == (cfg.mamba_d_conv - 1, conv_dim)
    groups = cfg.mamba_n_groups
    assert state.ssm.shape == (groups, cfg.mamba_d_state,
                               cfg.mamba_n_heads // groups * cfg.mamba_head_dim)
    before = cache.nbytes()
    model.forward(reference("gh_hybrid")[0][:5], cache)
    assert cache.nbytes() >= before > 0


# ---- configs -----------------------------------------------------------------------------------

def test_hub_and_transformers_spellings_give_the_same_model() -> None:
    hub = json.loads((fixture_path("gh_hub_config") / "config.json").read_text())
    saved = json.loads((fixture_path("gh_hybrid") / "config.json").read_text())
    assert hub["layer_types"] == ["mamba", "attention", "mamba", "mamba"] and "time_step_limit" not in hub
    assert saved["layer_types"][:2] == ["linear_attention", "full_attention"]
    assert saved["time_step_limit"] == [0.0, {"__float__": "Infinity"}]
    a, b = load_cached("gh_hub_config"), load_cached("gh_hybrid")
    assert a.config.layer_types == b.config.layer_types == ["mamba", "attention", "mamba", "mamba"]
    assert tuple(a.config.time_step_limit) == tuple(b.config.time_step_limit) == (0.0, float("inf"))
    ids, _ = reference("gh_hybrid")
    assert max_abs(a.forward(ids), b.forward(ids)) == 0.0


def test_without_layer_types_every_layer_is_mamba(tmp_path) -> None:
    folder = copy_fixture("gh_all_mamba", tmp_path / "m")
    edit_config(folder, layer_types=DELETE)
    model = modelkit.load(folder)
    assert [layer.variant for layer in model.layers] == ["mamba"] * 4
    ids, ref = reference("gh_all_mamba")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_auto_mamba_head_size(tmp_path) -> None:
    folder = copy_fixture("gh_hybrid", tmp_path / "m")
    edit_config(folder, mamba_d_head="auto")  # 2 * 32 // 8 = 8, as stated in the fixture
    model = modelkit.load(folder)
    assert model.config.mamba_head_dim == 8
    ids, ref = reference("gh_hybrid")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_time_step_limit_is_applied(tmp_path) -> None:
    folder = copy_fixture("gh_hybrid", tmp_path / "m")
    edit_config(folder, time_step_limit=[0.05, 0.2])
    model = modelkit.load(folder)
    ids, ref = reference("gh_hybrid")
    full = model.forward(ids)
    assert max_abs(full, ref) > 1e-3
    cache = model.make_cache()
    stepped = np.concatenate([model.forward(ids[:3], cache)] + [model.forward([int(t)], cache) for t in ids[3:]])
    assert max_abs(stepped, full) < SELF_ATOL  # the decoding path clamps too


@pytest.mark.parametrize("changes,needle", [
    ({"layer_types": ["mamba", "attention", "sliding_attention", "mamba"]}, "layer 2 is of kind 'sliding_attention'"),
    ({"layer_types": ["mamba", "attention"]}, "one kind per layer"),
    ({"mamba_d_head": 6}, "mamba_n_heads \\* mamba_d_head"),
    ({"mamba_n_groups": 3}, "multiple of mamba_n_groups"),
    ({"num_local_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok"),
])
def test_bad_configs_are_config_errors(tmp_path, changes: dict, needle: str) -> None:
    folder = copy_fixture("gh_hybrid", tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError, match=needle):
        modelkit.load(folder)


def test_dense_granite_keeps_its_own_mapping() -> None:
    dense = json.loads((fixture_path("granite3") / "config.json").read_text())
    hybrid = json.loads((fixture_path("gh_hybrid") / "config.json").read_text())
    assert choose_mapping(dense, "safetensors").mapping.name == "granite3"
    assert choose_mapping(hybrid, "safetensors").mapping.name == "granite"


# ---- weights -----------------------------------------------------------------------------------

def test_bf16_checkpoint_loads_as_float32() -> None:
    from safetensors import safe_open

    with safe_open(str(fixture_path("gh_hybrid_bf16") / "model.safetensors"), "numpy") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    model = load_cached("gh_hybrid_bf16")
    mixer = model.layers[0].blocks["ssm"]
    assert mixer.w_in.dtype == np.float32
    ids, ref = reference("gh_hybrid_bf16")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_parameter_count_counts_the_tied_head_once() -> None:
    tensors = read_tensors(fixture_path("gh_hybrid"))
    assert "lm_head.weight" not in tensors
    assert load_cached("gh_hybrid").parameter_count() == sum(t.size for t in tensors.values())
    untied = read_tensors(fixture_path("gh_rope_untied"))
    assert load_cached("gh_rope_untied").parameter_count() == sum(t.size for t in untied.values())


def test_missing_and_unexpected_mamba_tensors_are_reported(tmp_path) -> None:
    folder = copy_fixture("gh_hybrid", tmp_path / "m")
    tensors = read_tensors(folder)
    del tensors["model.layers.2.mamba.dt_bias"]
    tensors["model.layers.0.mamba.out_proj.bias"] = np.zeros(32, np.float32)  # mamba_proj_bias is false
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.WeightMismatchError) as err:
        modelkit.load(folder)
    lines = err.value.report.lines()
    assert any("model.layers.2.mamba.dt_bias" in s and s.startswith("missing") for s in lines)
    assert any("model.layers.0.mamba.out_proj.bias" in s and s.startswith("unexpected") for s in lines)


def test_misshaped_conv_weight_is_reported(tmp_path) -> None:
    folder = copy_fixture("gh_hybrid", tmp_path / "m")
    tensors = read_tensors(folder)
    w = tensors["model.layers.0.mamba.conv1d.weight"]
    tensors["model.layers.0.mamba.conv1d.weight"] = w[:, :, :3].copy()
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.WeightMismatchError, match="conv1d.weight"):
        modelkit.load(folder)


# ---- routed experts ------------------------------------------------------------------------------

def test_moe_fixture_uses_several_experts() -> None:
    model = load_cached("gh_moe")
    mlp = model.layers[0].blocks["mlp"]
    assert isinstance(mlp, MoE) and mlp.top_k == 2 and mlp.routing == "topk_softmax"
    assert mlp.shared is not None  # the shared MLP runs beside the experts
    cfg = json.loads((fixture_path("gh_moe") / "config.json").read_text())
    assert cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2
    ids, _ = reference("gh_moe")
    x = model.embed[ids] * model.embedding_multiplier
    idx, _ = route(x @ mlp.router.T, 2, "topk_softmax")
    assert len(np.unique(idx)) == 4


def test_moe_checkpoint_with_transformers_tensor_names(tmp_path) -> None:
    """The in-memory transformers 5 names (experts.gate_up_proj, router.weight) load too."""
    folder = copy_fixture("gh_moe", tmp_path / "m")
    renames = {".block_sparse_moe.input_linear.weight": ".block_sparse_moe.experts.gate_up_proj",
               ".block_sparse_moe.output_linear.weight": ".block_sparse_moe.experts.down_proj",
               ".block_sparse_moe.router.layer.weight": ".block_sparse_moe.router.weight"}
    rename_tensors(folder, renames)
    ids, ref = reference("gh_moe")
    assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL


def test_experts_are_never_ignored(tmp_path) -> None:
    """A dense config with expert tensors in the checkpoint is a mismatch, not a silent skip."""
    folder = copy_fixture("gh_moe", tmp_path / "m")
    edit_config(folder, num_local_experts=0)
    with pytest.raises(modelkit.WeightMismatchError, match="block_sparse_moe"):
        modelkit.load(folder)


# ---- plugin and CLI ------------------------------------------------------------------------------

def test_plugin_registers_the_architecture_and_block_kinds() -> None:
    reg = plugins.registry()
    assert reg.architectures["granite"].plugin == "granite"
    assert reg.block_kinds["mamba2"] is Mamba2 and reg.block_plugins["mamba2"] == "granite"
    assert reg.block_kinds["moe"] is MoE and reg.block_plugins["moe"] == "core"  # routed experts are the core's
    assert "granite" in modelkit.architectures()


def test_cli_validate_and_run() -> None:
    folder = fixture_path("gh_hybrid")
    ok = run_cli("validate", "--model", folder)
    assert ok.returncode == 0, ok.stderr
    assert "architecture granite" in ok.stdout and ok.stdout.rstrip().endswith(
        "ok: every tensor is mapped, present and of the expected shape")
    out = run_cli("run", "--arch", "granite", "--model", folder, "--prompt", "hello", "--max-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


def test_plugin_block_kinds_are_documented() -> None:
    text = (ROOT / "docs" / "granite.md").read_text(encoding="utf-8")
    for kind, plugin in plugins.registry().block_plugins.items():
        if plugin == "granite":
            assert re.search(rf"^### `{kind}`", text, re.MULTILINE), f"docs/granite.md lacks block kind {kind}"
