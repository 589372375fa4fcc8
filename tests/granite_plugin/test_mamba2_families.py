"""Mamba2, Bamba and Falcon-H1 (the granite plugin's other mappings over its mamba2 block)
beyond the model contract (test_model_contract.py): config spellings, refusals, strict loading
of what the options imply, and the Falcon-H1 multipliers each reaching the logits."""

from __future__ import annotations

import pytest
from conftest import (ATOL, DELETE, copy_fixture, edit_config, load_cached, max_abs, read_tensors,
                      reference, write_tensors)

import modelkit
from modelkit import plugins
from modelkit.loading import inspect


def _load_edited(tmp_path, name: str, **changes):
    folder = copy_fixture(name, tmp_path / "m")
    edit_config(folder, **changes)
    return modelkit.load(folder)


def test_plugin_registers_the_three_architectures() -> None:
    archs = plugins.registry().architectures
    for name in ("mamba2", "bamba", "falcon_h1"):
        assert archs[name].plugin == "granite" and name in modelkit.architectures()
    assert load_cached("falcon_h1").mapping.extends  # falcon_h1.yaml is bamba.yaml plus its own


# ---- mamba2 ------------------------------------------------------------------------------------

def test_mamba2_keys_transformers_does_not_read_change_nothing(tmp_path) -> None:
    """Mamba-Codestral's config says norm_before_gate: true and rms_norm: true; transformers'
    Mamba2 reads neither (gate, then norm), and neither does the mapping."""
    model = _load_edited(tmp_path, "mamba2", norm_before_gate=True, rms_norm=False, residual_in_fp32=False,
                         rescale_prenorm_residual=True, time_step_rank=7)
    ids, ref = reference("mamba2")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_mamba2_early_embedding_name(tmp_path) -> None:
    """Early conversions store backbone.embedding.weight (transformers renames it on load)."""
    folder = copy_fixture("mamba2_tied", tmp_path / "m")
    tensors = read_tensors(folder)
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    write_tensors(folder, tensors)
    ids, ref = reference("mamba2_tied")
    assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL


@pytest.mark.parametrize("changes, needle", [
    ({"head_dim": 4}, "num_heads \\* head_dim must equal expand \\* hidden_size"),
    ({"n_groups": 3}, "multiple of n_groups"),
    ({"hidden_act": "tanh"}, "activation must be one of"),
])
def test_mamba2_bad_configs_are_refused(tmp_path, changes: dict, needle: str) -> None:
    with pytest.raises(modelkit.ConfigError, match=needle):
        _load_edited(tmp_path, "mamba2", **changes)


def test_mamba2_biases_follow_use_bias(tmp_path) -> None:
    folder = copy_fixture("mamba2", tmp_path / "m")
    edit_config(folder, use_bias=False)  # the checkpoint has in_proj.bias and out_proj.bias
    with pytest.raises(modelkit.WeightMismatchError) as err:
        modelkit.load(folder)
    lines = err.value.report.lines()
    for name in ("in_proj.bias", "out_proj.bias"):
        assert any(f"backbone.layers.0.mixer.{name}" in s and s.startswith("unexpected") for s in lines)


# ---- bamba -------------------------------------------------------------------------------------

def test_bamba_hub_config_spelling(tmp_path) -> None:
    """Hub configs: rope_theta at the top, no rope_parameters (so partial_rotary_factor is
    transformers' fixed 0.5), mamba_d_head "auto"."""
    model = _load_edited(tmp_path, "bamba", rope_parameters=DELETE, rope_theta=10000.0, mamba_d_head="auto",
                         partial_rotary_factor=1.0)  # a top-level factor is overridden by 0.5
    assert model.config.rope_dim == 4 and model.config.mamba_head_dim == 8
    ids, ref = reference("bamba")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_bamba_rotary_fraction_from_rope_parameters(tmp_path) -> None:
    model = _load_edited(tmp_path, "bamba", rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 1.0})
    assert model.config.rope_dim == 8
    ids, ref = reference("bamba")
    assert max_abs(model.forward(ids), ref) > 1e-3  # the fixture rotates half of each head


def test_bamba_without_attention_layers_every_layer_is_mamba2(tmp_path) -> None:
    folder = copy_fixture("bamba", tmp_path / "m")
    edit_config(folder, attn_layer_indices=DELETE)
    source, _, plan = inspect(folder)
    source.close()
    assert plan.variants == ["mamba"] * 4
    assert "model.layers.1.mamba.in_proj.weight" in str(plan.report.lines())  # and the weights say otherwise


@pytest.mark.parametrize("changes, needle", [
    ({"mamba_d_head": 6}, "mamba_n_heads \\* mamba_d_head"),
    ({"mamba_n_groups": 3}, "multiple of mamba_n_groups"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.375}},
     "even number of rotary channels"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "yarn"),
])
def test_bamba_bad_configs_are_refused(tmp_path, changes: dict, needle: str) -> None:
    with pytest.raises(modelkit.ConfigError, match=needle):
        _load_edited(tmp_path, "bamba", **changes)


# ---- falcon_h1 ---------------------------------------------------------------------------------

MULTIPLIERS = {  # a changed value for each of the fixture's multipliers
    "embedding_multiplier": 1.0,
    "lm_head_multiplier": 1.0,
    "key_multiplier": 1.0,
    "attention_in_multiplier": 1.0,
    "attention_out_multiplier": 1.0,
    "ssm_in_multiplier": 1.0,
    "ssm_out_multiplier": 1.0,
    "ssm_multipliers": [0.5, 1.5, 0.8, 1.25, 1.0],  # only dt's factor changed
    "mlp_multipliers": [1.3, 1.0],  # only down's
}


@pytest.mark.parametrize("key", MULTIPLIERS)
def test_falcon_h1_every_multiplier_reaches_the_logits(tmp_path, key: str) -> None:
    ids, ref = reference("falcon_h1")
    assert max_abs(_load_edited(tmp_path, "falcon_h1", **{key: MULTIPLIERS[key]}).forward(ids), ref) > 1e-3


def test_falcon_h1_folded_multipliers_are_exact_in_float32() -> None:
    """Folding the multipliers into the weights changes only float rounding: the two fixtures,
    every multiplier != 1, stay far inside the 1e-4 tolerance."""
    for name in ("falcon_h1", "falcon_h1_nonorm"):
        ids, ref = reference(name)
        assert max_abs(load_cached(name).forward(ids), ref) < 1e-5


def test_falcon_h1_defaults_and_auto_head_size(tmp_path) -> None:
    model = _load_edited(tmp_path, "falcon_h1", mamba_d_head="auto")  # mamba_d_ssm 48 / 6 heads
    assert model.config.mamba_d_inner == 48 and model.config.mamba_head_dim == 8
    ids, ref = reference("falcon_h1")
    assert max_abs(model.forward(ids), ref) < ATOL
    nonorm = load_cached("falcon_h1_nonorm")  # mamba_d_ssm null: expand * hidden
    assert nonorm.config.mamba_d_inner == 64 and nonorm.config.rope_dim == nonorm.config.head_dim


@pytest.mark.parametrize("changes, needle", [
    ({"ssm_multipliers": [1.0, 1.0, 1.0, 1.0]}, "ssm_multipliers must hold 5"),
    ({"mlp_multipliers": [1.0]}, "mlp_multipliers must hold 2"),
    ({"lm_head_multiplier": 0.0}, "lm_head_multiplier 0"),
    ({"mamba_d_ssm": 40}, "mamba_n_heads \\* mamba_d_head"),
])
def test_falcon_h1_bad_configs_are_refused(tmp_path, changes: dict, needle: str) -> None:
    with pytest.raises(modelkit.ConfigError, match=needle):
        _load_edited(tmp_path, "falcon_h1", **changes)


@pytest.mark.parametrize("name, changes, tensor, kind", [
    # the gated norm switched off: the checkpoint's norm.weight is left over
    ("falcon_h1", {"mamba_rms_norm": False}, "model.layers.0.mamba.norm.weight", "unexpected"),
    # out_proj's bias follows projectors_bias, not mamba_proj_bias
    ("falcon_h1", {"projectors_bias": True}, "model.layers.0.mamba.out_proj.bias", "missing"),
    ("falcon_h1_nonorm", {"projectors_bias": False}, "model.layers.0.mamba.out_proj.bias", "unexpected"),
    ("falcon_h1_nonorm", {"mamba_proj_bias": True}, "model.layers.0.mamba.in_proj.bias", "missing"),
])
def test_falcon_h1_options_hold_the_checkpoint_to_its_tensors(tmp_path, name: str, changes: dict,
                                                              tensor: str, kind: str) -> None:
    folder = copy_fixture(name, tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(modelkit.WeightMismatchError) as err:
        modelkit.load(folder)
    assert any(tensor in s and s.startswith(kind) for s in err.value.report.lines())


def test_falcon_h1_norm_placement_matters(tmp_path) -> None:
    """The fixture normalises before the gate; after the gate is another model."""
    ids, ref = reference("falcon_h1")
    assert max_abs(_load_edited(tmp_path, "falcon_h1", mamba_norm_before_gate=False).forward(ids), ref) > 1e-3
