"""The ssm plugin (Mamba v1 and LFM2) beyond the model contract (test_model_contract.py): its
registrations, the cache states, config spellings and derived sizes, the refusals, strict
loading, the tunable scan chunk and the command line.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (ATOL, DELETE, copy_fixture, edit_config, fixture_path, load_cached, max_abs,
                      read_tensors, reference, run_cli, write_tensors)

import modelkit
from modelkit import plugins
from modelkit.nn.kv_cache import KVCache
from modelkit_ssm.mamba_block import Mamba, MambaState
from modelkit_ssm.short_conv import ShortConv, ShortConvState

SELF_ATOL = 2e-5  # the same model with and without its cache


def test_plugin_registers_the_architectures_and_block_kinds() -> None:
    reg = plugins.registry()
    assert reg.architectures["mamba"].plugin == reg.architectures["lfm2"].plugin == "ssm"
    assert reg.block_kinds["mamba"] is Mamba and reg.block_plugins["mamba"] == "ssm"
    assert reg.block_kinds["short_conv"] is ShortConv and reg.block_plugins["short_conv"] == "ssm"
    assert {"mamba", "lfm2"} <= set(modelkit.architectures())


# ---- cache states --------------------------------------------------------------------------------

def test_mamba_cache_is_conv_history_and_ssm_state_of_fixed_size() -> None:
    model = load_cached("mamba")
    cfg = model.config
    cache = model.make_cache()
    states = [layer["ssm"] for layer in cache.layers]
    assert all(isinstance(s, MambaState) for s in states)
    assert states[0].conv.shape == (cfg.conv_kernel - 1, cfg.d_inner)
    assert states[0].ssm.shape == (cfg.state_size, cfg.d_inner)
    ids, _ = reference("mamba")
    model.forward(ids[:5], cache)
    size = cache.nbytes()
    for t in ids[5:]:
        model.forward([int(t)], cache)
    assert cache.nbytes() == size  # decoding does not grow the cache


def test_lfm2_cache_is_conv_history_or_kv_by_layer() -> None:
    model = load_cached("lfm2")
    cache = model.make_cache()
    kinds = [type(states.get("conv", states.get("attn"))) for states in cache.layers]
    assert kinds == [ShortConvState, ShortConvState, KVCache, ShortConvState, KVCache, ShortConvState]
    assert cache.layers[0]["conv"].conv.shape == (model.config.conv_L_cache - 1, model.config.hidden_size)


# ---- Mamba configs -------------------------------------------------------------------------------

def test_auto_time_step_rank_is_ceil_hidden_over_16(tmp_path) -> None:
    folder = copy_fixture("mamba", tmp_path / "m")
    edit_config(folder, time_step_rank="auto")  # ceil(32 / 16) = 2, as the fixture states
    model = modelkit.load(folder)
    assert model.config.dt_rank == 2
    ids, ref = reference("mamba")
    assert max_abs(model.forward(ids), ref) < ATOL
    assert load_cached("mamba_options").config.dt_rank == 5


def test_old_embedding_name_loads(tmp_path) -> None:
    """Older checkpoints call the embedding backbone.embedding (transformers renames it)."""
    folder = copy_fixture("mamba", tmp_path / "m")
    tensors = read_tensors(folder)
    tensors["backbone.embedding.weight"] = tensors.pop("backbone.embeddings.weight")
    write_tensors(folder, tensors)
    ids, ref = reference("mamba")
    assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL


def test_settings_that_change_nothing_are_accepted(tmp_path) -> None:
    """Initialisation settings and scan algorithm switches leave the computation alone."""
    folder = copy_fixture("mamba", tmp_path / "m")
    edit_config(folder, residual_in_fp32=False, use_mambapy=True, use_associative_scan=False,
                time_step_min=0.01, time_step_max=0.5, time_step_floor=0.1, time_step_scale=2.0,
                time_step_init_scheme="constant", rescale_prenorm_residual=True, intermediate_size=999)
    ids, ref = reference("mamba")
    assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL


@pytest.mark.parametrize("changes,needle", [
    ({"rms_norm": False}, "rms_norm: false"),
    ({"time_step_rank": "half"}, "dt_rank"),
    ({"time_step_rank": 0}, "dt_rank"),
    ({"hidden_act": "mish"}, "activation"),
])
def test_mamba_refuses_what_it_does_not_compute(tmp_path, changes: dict, needle: str) -> None:
    folder = copy_fixture("mamba", tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError, match=needle):
        modelkit.load(folder)


def test_scan_chunk_changes_only_speed() -> None:
    """The tunable scan chunk (down to one step, and one that does not divide the prompt)."""
    ids, ref = reference("mamba")
    full = load_cached("mamba").forward(ids)
    for chunk in (1, 5):
        model = modelkit.load(fixture_path("mamba"), tuning={"mamba.scan_chunk": chunk})
        assert model.layers[0].blocks["ssm"].chunk == chunk
        assert max_abs(model.forward(ids), full) < SELF_ATOL


# ---- LFM2 configs --------------------------------------------------------------------------------

def test_full_attn_idxs_stand_in_for_layer_types(tmp_path) -> None:
    folder = copy_fixture("lfm2", tmp_path / "m")
    edit_config(folder, layer_types=DELETE, full_attn_idxs=[2, 4])
    model = modelkit.load(folder)
    assert [layer.variant for layer in model.layers] == ["conv", "conv", "attention", "conv", "attention", "conv"]
    ids, ref = reference("lfm2")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_without_layer_types_or_indices_every_layer_is_attention(tmp_path) -> None:
    """As transformers: then the checkpoint's conv layers do not fit, and the report says so."""
    folder = copy_fixture("lfm2", tmp_path / "m")
    edit_config(folder, layer_types=DELETE)
    with pytest.raises(modelkit.WeightMismatchError) as err:
        modelkit.load(folder)
    lines = err.value.report.lines()
    assert any(s.startswith("missing") and "model.layers.0.self_attn.q_proj.weight" in s for s in lines)
    assert any(s.startswith("unexpected") and "model.layers.0.conv.in_proj.weight" in s for s in lines)


def test_mlp_width_follows_the_auto_adjustment(tmp_path) -> None:
    assert load_cached("lfm2").config.ffn_size == 112  # int(1.5 * int(2 * 100 / 3)) = 99 -> 112
    assert load_cached("lfm2_hub_config").config.ffn_size == 72  # no adjustment: block_ff_dim itself
    folder = copy_fixture("lfm2", tmp_path / "m")
    edit_config(folder, block_multiple_of=64)  # 99 -> 128: the checkpoint's 112 no longer fits
    with pytest.raises(modelkit.WeightMismatchError, match="feed_forward"):
        modelkit.load(folder)


def test_hub_spellings_win_as_in_transformers() -> None:
    """block_ff_dim over intermediate_size, tie_embedding over tie_word_embeddings."""
    import json

    hub = json.loads((fixture_path("lfm2_hub_config") / "config.json").read_text())
    assert hub["block_ff_dim"] == 72 and hub["intermediate_size"] == 200 and hub["tie_embedding"] is False
    assert "layer_types" not in hub and hub["full_attn_idxs"] == [1, 3]
    model = load_cached("lfm2_hub_config")
    assert model.config.intermediate_size == 72 and not model.config.tie_word_embeddings
    assert "lm_head.weight" in read_tensors(fixture_path("lfm2_hub_config"))


@pytest.mark.parametrize("changes,needle", [
    ({"layer_types": ["conv", "conv", "sliding_attention", "conv", "full_attention", "conv"]},
     "layer 2 is of kind 'sliding_attention'"),
    ({"layer_types": ["conv", "full_attention"]}, "one kind per layer"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "yarn"),
])
def test_lfm2_refuses_what_it_does_not_compute(tmp_path, changes: dict, needle: str) -> None:
    folder = copy_fixture("lfm2", tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError, match=needle):
        modelkit.load(folder)


# ---- strict loading ------------------------------------------------------------------------------

def test_missing_unexpected_and_misshaped_tensors_are_reported(tmp_path) -> None:
    folder = copy_fixture("mamba", tmp_path / "m")
    tensors = read_tensors(folder)
    del tensors["backbone.layers.1.mixer.dt_proj.bias"]
    tensors["backbone.layers.0.mixer.out_proj.bias"] = np.zeros(32, np.float32)  # use_bias is false
    tensors["backbone.layers.2.mixer.x_proj.weight"] = tensors["backbone.layers.2.mixer.x_proj.weight"][:-1].copy()
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.WeightMismatchError) as err:
        modelkit.load(folder)
    lines = err.value.report.lines()
    assert any(s.startswith("missing") and "layers.1.mixer.dt_proj.bias" in s for s in lines)
    assert any(s.startswith("unexpected") and "layers.0.mixer.out_proj.bias" in s for s in lines)
    assert any("layers.2.mixer.x_proj.weight" in s and "[18, 64]" in s for s in lines)


def test_short_conv_biases_follow_conv_bias(tmp_path) -> None:
    folder = copy_fixture("lfm2", tmp_path / "m")
    edit_config(folder, conv_bias=False)  # the checkpoint has them: unexpected, never skipped
    with pytest.raises(modelkit.WeightMismatchError, match="conv.in_proj.bias"):
        modelkit.load(folder)


# ---- command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,arch", [("mamba", "mamba"), ("lfm2", "lfm2")])
def test_cli_validate_and_run(name: str, arch: str) -> None:
    folder = fixture_path(name)
    ok = run_cli("validate", "--model", folder)
    assert ok.returncode == 0, ok.stderr
    assert f"architecture {arch}" in ok.stdout and ok.stdout.rstrip().endswith(
        "ok: every tensor is mapped, present and of the expected shape")
    out = run_cli("run", "--model", folder, "--prompt", "hello", "--max-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
