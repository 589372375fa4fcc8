"""GPTBigCode, BLOOM and OPT-350m beyond the shared contract: each distinctive option changes the
logits (so the golden fixtures test it), the options that change nothing in float32 are shown
to, every refused config key is refused, and the general options they brought (``model.embed_dim``,
``model.embed_norm``, ``when``, ``+`` in a flow branch) are checked where a mapping is read."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from conftest import (ATOL, copy_fixture, edit_config, load_cached, mapping_data, max_abs, read_tensors,
                      reference, write_tensors)

import modelkit
from modelkit.loading.choose import load_mapping

# (fixture, config.json change, a phrase of the refusal)
REFUSED = [
    ("gpt_bigcode", {"add_cross_attention": True}, "add_cross_attention: true"),
    ("bloom", {"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
]


@pytest.mark.parametrize("name, change, phrase", REFUSED, ids=[f"{r[0]}-{next(iter(r[1]))}" for r in REFUSED])
def test_unsupported_config_keys_are_refused(tmp_path: Path, name: str, change: dict, phrase: str) -> None:
    folder = copy_fixture(name, tmp_path / name)
    edit_config(folder, **change)
    with pytest.raises(modelkit.ConfigError, match=phrase) as info:
        modelkit.load(folder)
    assert "not supported" in str(info.value)


def _logits_with(tmp_path: Path, name: str, **change: Any) -> np.ndarray:
    folder = copy_fixture(name, tmp_path / name)
    edit_config(folder, **change)
    return modelkit.load(folder).forward(reference(name)[0])


def test_bigcode_options_that_bite(tmp_path: Path) -> None:
    """multi_query picks the fused layout (the other one does not fit the tensors), and
    scale_attn_weights: false means unscaled scores."""
    model = load_cached("gpt_bigcode")
    assert model.layers[0].blocks["attn"].kv == 1
    assert load_cached("gpt_bigcode_mha").layers[0].blocks["attn"].kv == 4
    folder = copy_fixture("gpt_bigcode", tmp_path / "mq")
    edit_config(folder, multi_query=False)
    with pytest.raises(modelkit.WeightMismatchError, match="c_attn"):
        modelkit.load(folder)
    ids, ref = reference("gpt_bigcode_mha")
    assert max_abs(_logits_with(tmp_path, "gpt_bigcode_mha", scale_attn_weights=True), ref) > 1e-2


def test_bigcode_softmax_precision_flags_change_nothing_in_float32(tmp_path: Path) -> None:
    ids, ref = reference("gpt_bigcode")
    logits = _logits_with(tmp_path, "gpt_bigcode", attention_softmax_in_fp32=False,
                          scale_attention_softmax_in_fp32=False)
    assert max_abs(logits, ref) < ATOL


def test_bloom_embedding_norm_and_dense_biases(tmp_path: Path) -> None:
    model = load_cached("bloom")
    assert model.embed_norm is not None and model.embed_norm.bias is not None
    assert model.layers[0].blocks["attn"].slopes is not None
    # slow_but_exact with pretraining_tp > 1 leaves out the two dense biases, as transformers does
    exact = load_cached("bloom_tp_exact").layers[0]
    assert not exact.blocks["attn"].b_o.any() and not exact.blocks["mlp"].b_down.any()
    ids, ref = reference("bloom_tp_exact")
    assert max_abs(_logits_with(tmp_path, "bloom_tp_exact", slow_but_exact=False), ref) > 1e-2
    assert max_abs(_logits_with(tmp_path / "tp1", "bloom_tp_exact", pretraining_tp=1), ref) > 1e-2


def test_bloom_reads_names_without_the_transformer_prefix(tmp_path: Path) -> None:
    folder = copy_fixture("bloom", tmp_path / "hub")
    tensors = read_tensors(folder)
    write_tensors(folder, {k.removeprefix("transformer."): v for k, v in tensors.items()})
    ids, ref = reference("bloom")
    assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL


def test_opt_350m_layout() -> None:
    model = load_cached("opt_350m_like")
    assert [layer.variant for layer in model.layers] == ["post_norm", "post_norm"]
    assert model.final_norm is None and model.tied and model.head is model.embed
    assert model.embed.shape == (320, 16) and model.embed_proj.shape == (32, 16)
    assert model.head_proj.shape == (16, 32) and model.hidden_states([1, 2]).shape == (2, 32)
    assert "hidden 32" in repr(model)
    pre = load_cached("opt")
    assert pre.embed_proj is None and pre.head_proj is None and pre.final_norm is not None


def test_opt_post_norm_and_projections_are_required(tmp_path: Path) -> None:
    folder = copy_fixture("opt_350m_like", tmp_path / "noproj")
    tensors = read_tensors(folder)
    del tensors["model.decoder.project_in.weight"]
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.WeightMismatchError, match="project_in"):
        modelkit.load(folder)
    # read as pre-norm, the post-norm checkpoint lacks the final LayerNorm
    folder = copy_fixture("opt_350m_like", tmp_path / "prenorm")
    edit_config(folder, do_layer_norm_before=True)
    with pytest.raises(modelkit.WeightMismatchError, match="final_layer_norm"):
        modelkit.load(folder)


def test_opt_remove_final_layer_norm(tmp_path: Path) -> None:
    """_remove_final_layer_norm: a pre-norm model without the final LayerNorm, whose stored
    tensors are then unexpected."""
    folder = copy_fixture("opt", tmp_path / "opt")
    edit_config(folder, _remove_final_layer_norm=True)
    with pytest.raises(modelkit.WeightMismatchError, match="unexpected"):
        modelkit.load(folder)
    model = modelkit.load(folder, strict=False)
    assert model.final_norm is None and [layer.variant for layer in model.layers] == ["pre_norm"] * 2


# ---- the general options, where a mapping is read or planned --------------------------------

def _write(folder: Path, data: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _post(*path: str, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


POST = ("layers", "variants", "post_norm")
BROKEN = [
    ("two plus signs", _post(*POST, "flow", value=[["attn", "+", "+", "attn_residual_norm"], ["mlp"]]),
     "flow[0]", "at most one '+'"),
    ("plus first", _post(*POST, "flow", value=[["+", "attn_residual_norm"], ["attn", "mlp"]]),
     "flow[0]", "before it"),
    ("plus last", _post(*POST, "flow", value=[["attn", "+"], ["mlp", "+", "mlp_residual_norm"]]),
     "flow[0]", "before it"),
    ("plus in a parallel layer", _post(*POST, "layout", value="parallel"), "flow[0]", "layout: sequential"),
    ("when on a layer block", _post(*POST, "blocks", "attn", "when", value=True), "blocks.attn", "when"),
    ("embed_norm weights without the block", _post("weights", "embed_norm.weight", value="x.weight"),
     "weights.embed_norm.weight", "no embed_norm"),
    ("undeclared field in when", _post("model", "final_norm", "when", value="$pre_norm"),
     "model.final_norm.when", "pre_norm"),
]


@pytest.mark.parametrize("case, edit, key, phrase", BROKEN, ids=[b[0] for b in BROKEN])
def test_misused_options_name_file_and_key(tmp_path: Path, case: str, edit: Callable, key: str,
                                           phrase: str) -> None:
    data = copy.deepcopy(mapping_data("opt"))
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(modelkit.MappingError) as info:
        load_mapping(path)
    assert str(info.value).startswith(f"{path}: ") and key in str(info.value) and phrase in str(info.value)


@pytest.mark.parametrize("value", [0, -3, 1.5, "wide"])
def test_embed_dim_must_be_a_positive_integer(tmp_path: Path, value: Any) -> None:
    data = copy.deepcopy(mapping_data("opt"))
    data["model"]["embed_dim"] = value
    path = _write(tmp_path, data)
    with pytest.raises(modelkit.ConfigError, match="embed_dim must be a positive integer"):
        modelkit.load(copy_fixture("opt", tmp_path / "opt"), mapping=path)


def test_when_must_be_a_bool(tmp_path: Path) -> None:
    data = copy.deepcopy(mapping_data("opt"))
    data["model"]["final_norm"]["when"] = "$num_layers"
    path = _write(tmp_path, data)
    with pytest.raises(modelkit.ConfigError, match="model.final_norm.when must be true or false, got 2"):
        modelkit.load(copy_fixture("opt", tmp_path / "opt"), mapping=path)


def test_embed_norm_in_a_user_mapping(tmp_path: Path) -> None:
    """embed_norm is general: a user mapping may give any model one, with a when that turns it off."""
    data = copy.deepcopy(mapping_data("bloom"))
    data["model"]["embed_norm"]["when"] = False
    del data["weights"]["embed_norm.weight"], data["weights"]["embed_norm.bias"]
    data["ignore"] = ["word_embeddings_layernorm.weight", "word_embeddings_layernorm.bias"]
    model = modelkit.load(copy_fixture("bloom", tmp_path / "bloom"), mapping=_write(tmp_path, data))
    ids, ref = reference("bloom")
    assert model.embed_norm is None and max_abs(model.forward(ids), ref) > 1e-2
