"""YAML mappings: every malformed file is a MappingError naming the file and the key, and
config.json values resolve through a mapping as the shipped architectures need."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from conftest import DELETE, copy_fixture, edit_config, load_cached

import modelkit
from modelkit.builtin import SHIPPED, mapping_file
from modelkit.checkpoint.config_json import read_config_json
from modelkit.loading.choose import load_mapping
from modelkit.schema.parse import pattern_regex


def _llama_data() -> dict[str, Any]:
    return yaml.safe_load(mapping_file("llama").read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: Any, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("arch", SHIPPED)
def test_shipped_mappings_are_valid(arch: str) -> None:
    m = load_mapping(mapping_file(arch))
    assert m.name == arch
    assert m.match.get("model_type")
    assert m.weights and m.variants


def test_valid_copy_of_a_shipped_mapping_loads(tmp_path: Path) -> None:
    m = load_mapping(_write(tmp_path, _llama_data(), "ok.yaml"))
    assert m.name == "llama" and m.path == str(tmp_path / "ok.yaml")


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        *parents, last = path.split("/")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        key: Any = int(last) if isinstance(d, list) else last
        if value is DELETE:
            del d[key]
        else:
            d[key] = value
    return edit


# (case id, edit of the llama mapping, the key the message must name, another phrase it must hold)
BROKEN = [
    ("unknown top-level key", _set("extras", 1), "extras", "unknown key"),
    ("unknown block kind", _set("layers/blocks/mlp/kind", "gated_mpl"), "layers.blocks.mlp.kind", "gated_mpl"),
    ("unknown option", _set("layers/blocks/attn/windw", 4), "layers.blocks.attn", "windw"),
    ("unknown transform", _set("weights/layers.{i}.attn.q.weight",
                               {"from": "model.layers.{i}.self_attn.q_proj.weight", "transform": "transpos"}),
     "weights.layers.{i}.attn.q.weight.transform[0]", "transpos"),
    ("placeholder {j}", _set("weights/layers.{i}.attn_norm.weight", "model.layers.{j}.input_layernorm.weight"),
     "weights.layers.{i}.attn_norm.weight.from", "{j}"),
    ("stack without {j}", _set("weights/layers.{i}.attn_norm.weight",
                               {"from": "model.layers.{i}.input_layernorm.weight", "stack": 2}),
     "weights.layers.{i}.attn_norm.weight.from", "{j}"),
    ("stack of no pieces", _set("weights/layers.{i}.attn_norm.weight",
                                {"from": "model.layers.{i}.norms.{j}.weight", "stack": 0}),
     "weights.layers.{i}.attn_norm.weight.stack", "positive count"),
    ("stack naming an undeclared field", _set("weights/layers.{i}.attn_norm.weight",
                                              {"from": "model.layers.{i}.norms.{j}.weight", "stack": "$n_heads"}),
     "weights.layers.{i}.attn_norm.weight.stack", "n_heads"),
    ("unclosed {i", _set("weights/layers.{i}.attn_norm.weight", "model.layers.{i.input_layernorm.weight"),
     "weights.layers.{i}.attn_norm.weight.from", "placeholder"),
    ("placeholder in target", _set("weights/layers.{layer}.x.weight", "model.layers.{i}.x"),
     "weights.layers.{layer}.x.weight", "{layer}"),
    ("{i} in the checkpoint name only", _set("weights/final_norm.weight", "model.layers.{i}.norm.weight"),
     "weights.final_norm.weight", "{i}"),
    ("undeclared field in option", _set("layers/blocks/attn/rope_theta", "$rope_thetta"),
     "layers.blocks.attn.rope_theta", "rope_thetta"),
    ("undeclared field in derive", _set("config/head_dim/derive", "hidden_size // n_heads"),
     "config.head_dim.derive", "n_heads"),
    ("derive naming a later field", _set("config/num_heads", {"derive": "head_dim * 2"}),
     "config.num_heads.derive", "head_dim"),
    ("undeclared field in check", _set("checks/0/expr", "num_heads % kv_heads == 0"), "checks[0].expr", "kv_heads"),
    ("undeclared field in count", _set("layers/count", "$num_layer"), "layers.count", "num_layer"),
    ("undeclared field in final norm", _set("model/final_norm/eps", "$eps"), "model.final_norm.eps", "eps"),
    ("expression syntax", _set("layers/blocks/attn/rope_theta", "$rope_theta *"), "layers.blocks.attn.rope_theta",
     "bad expression"),
    ("flow names a missing block", _set("layers/flow/0", ["attn_norm", "atn"]), "layers.flow[0]", "atn"),
    ("empty flow", _set("layers/flow", []), "layers.flow", "branch"),
    ("parallel step of one branch", _set("layers/flow/0", {"parallel": [["attn_norm", "attn"]]}),
     "layers.flow[0].parallel", "two branches"),
    ("parallel step naming a missing block", _set("layers/flow/0", {"parallel": [["attn_norm", "attn"], ["atn"]]}),
     "layers.flow[0].parallel[1]", "atn"),
    ("unknown flow step key", _set("layers/flow/0", {"paralel": [["attn_norm"], ["attn"]]}),
     "layers.flow[0]", "paralel"),
    ("parallel step in a parallel layout",
     lambda d: (_set("layers/layout", "parallel")(d),
                _set("layers/flow/0", {"parallel": [["attn_norm", "attn"], ["mlp_norm", "mlp"]]})(d)),
     "layers.flow[0]", "already sums"),
    ("missing weights", _set("weights", DELETE), "weights", "required key is missing"),
    ("missing match", _set("match", DELETE), "match", "required key is missing"),
    ("missing layer count", _set("layers/count", DELETE), "layers.count", "required key is missing"),
    ("missing kind", _set("layers/blocks/attn/kind", DELETE), "layers.blocks.attn.kind", "block kind"),
    ("unknown layout", _set("layers/layout", "diagonal"), "layers.layout", "diagonal"),
    ("unknown field key", _set("config/hidden_size/fromm", "x"), "config.hidden_size", "fromm"),
    ("unknown field type", _set("config/hidden_size/type", "integer"), "config.hidden_size.type", "integer"),
    ("field without source", _set("config/extra_field", {"type": "int"}), "config.extra_field", "from"),
    ("unknown model key", _set("model/tie_heads", True), "model", "tie_heads"),
    ("unknown weight key", _set("weights/final_norm.weight", {"from": "model.norm.weight", "optinal": True}),
     "weights.final_norm.weight", "optinal"),
    ("weights not an object", _set("weights", ["a", "b"]), "weights", "expected"),
    ("bad schema version", _set("modelkit_mapping", 2), "modelkit_mapping", "version"),
    ("match without keys", _set("match", {}), "match", "model_type"),
    ("unknown match key", _set("match/model_types", ["x"]), "match", "model_types"),
]


@pytest.mark.parametrize("case, edit, key, phrase", BROKEN, ids=[b[0] for b in BROKEN])
def test_malformed_mapping_names_file_and_key(tmp_path: Path, case: str, edit: Callable, key: str,
                                              phrase: str) -> None:
    data = _llama_data()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(modelkit.MappingError) as info:
        load_mapping(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert key in message, message
    assert phrase in message, message
    assert "\n" not in message


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: llama\nmatch: {model_type: [llama\nconfig: {}\n")
    with pytest.raises(modelkit.MappingError) as info:
        load_mapping(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "not valid YAML" in message and "line" in message


def test_mapping_top_level_must_be_an_object(tmp_path: Path) -> None:
    with pytest.raises(modelkit.MappingError, match="top level"):
        load_mapping(_write(tmp_path, "- just\n- a list\n"))


def test_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(modelkit.MappingError, match="not found"):
        load_mapping(tmp_path / "absent.yaml")


def test_mapping_that_forgets_a_weight_entry(tmp_path: Path) -> None:
    """Blocks need a parameter the weights section does not map: named at load time."""
    data = _llama_data()
    del data["weights"]["layers.{i}.mlp_norm.weight"]
    path = _write(tmp_path, data)
    with pytest.raises(modelkit.MappingError) as info:
        modelkit.load(copy_fixture("llama_gqa", tmp_path / "m"), mapping=path)
    assert str(path) in str(info.value) and "layers.{i}.mlp_norm.weight" in str(info.value)


def test_required_block_option_missing(tmp_path: Path) -> None:
    data = _llama_data()
    del data["layers"]["blocks"]["attn"]["positions"]
    path = _write(tmp_path, data)
    with pytest.raises(modelkit.MappingError) as info:
        modelkit.load(copy_fixture("llama_gqa", tmp_path / "m"), mapping=path)
    assert str(path) in str(info.value) and "layers.blocks.attn" in str(info.value)
    assert "positions" in str(info.value)


def test_quoted_placeholder_inside_flow_collections(tmp_path: Path) -> None:
    """The documented YAML gotcha: inside [...] names with {i} must be quoted."""
    text = mapping_file("llama").read_text(encoding="utf-8")
    text = text.replace("layers.{i}.attn_norm.weight: model.layers.{i}.input_layernorm.weight",
                        'layers.{i}.attn_norm.weight: ["model.layers.{i}.input_layernorm.weight"]')
    m = load_mapping(_write(tmp_path, text, "quoted.yaml"))
    assert any(w.sources == ["model.layers.{i}.input_layernorm.weight"] for w in m.weights)


def test_pattern_regex() -> None:
    r = pattern_regex("model.layers.{i}.self_attn.rotary_emb.inv_freq")
    assert r.match("model.layers.12.self_attn.rotary_emb.inv_freq")
    assert not r.match("model.layers.x.self_attn.rotary_emb.inv_freq")
    assert not r.match("model.layers.1.self_attn.rotary_emb.inv_freq.extra")
    assert pattern_regex("a.b").match("a.b") and not pattern_regex("a.b").match("aXb")


# ---- config resolution -----------------------------------------------------------------------

LLAMA_RAW = {"model_type": "llama", "vocab_size": 320, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64}


def _resolve(arch: str, raw: dict[str, Any]) -> dict[str, Any]:
    return load_mapping(mapping_file(arch)).resolve_config(raw)


def test_hidden_size_from_n_embd_or_hidden_size() -> None:
    base = {"vocab_size": 320, "n_layer": 2, "n_head": 4}
    assert _resolve("gpt2", {**base, "n_embd": 32})["hidden_size"] == 32
    assert _resolve("gpt2", {**base, "hidden_size": 48})["hidden_size"] == 48
    cfg = _resolve("gpt2", {**base, "n_embd": 32, "n_inner": None})
    assert cfg["intermediate_size"] == 128 and cfg["head_dim"] == 8  # derived; null is absent


def test_num_key_value_heads_defaults_to_heads() -> None:
    raw = {k: v for k, v in LLAMA_RAW.items() if k != "num_key_value_heads"}
    assert _resolve("llama", raw)["num_kv_heads"] == 4
    assert _resolve("llama", {**raw, "num_key_value_heads": None})["num_kv_heads"] == 4
    assert _resolve("llama", LLAMA_RAW)["num_kv_heads"] == 2


def test_head_dim_explicit_or_derived() -> None:
    assert _resolve("llama", LLAMA_RAW)["head_dim"] == 8
    assert _resolve("llama", {**LLAMA_RAW, "head_dim": 16})["head_dim"] == 16
    model = load_cached("llama3_rope_headdim")  # head_dim 16 with hidden 32 / 4 heads
    assert model.config.head_dim == 16
    assert model.layers[0].blocks["attn"].w_qkv.shape == ((4 + 2 + 2) * 16, 32)


def test_rope_theta_top_level_or_in_rope_parameters() -> None:
    top = _resolve("llama", {**LLAMA_RAW, "rope_theta": 20000.0})
    assert top["rope_theta"] == 20000.0 and top["rope_scaling"] is None
    t5 = _resolve("llama", {**LLAMA_RAW, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}})
    assert t5["rope_theta"] == 5e5 and t5["rope_scaling"]["rope_type"] == "default"
    assert _resolve("llama", LLAMA_RAW)["rope_theta"] == 10000.0
    legacy = _resolve("llama", {**LLAMA_RAW, "rope_theta": 3e4, "rope_scaling": None,
                                "rope_parameters": {"rope_theta": 3e4, "rope_type": "linear", "factor": 2.0}})
    assert legacy["rope_theta"] == 3e4 and legacy["rope_scaling"]["rope_type"] == "linear"


def _inv_freq(model) -> np.ndarray:
    return model.layers[0].blocks["attn"].rope.inv_freq


def test_rope_scaling_linear() -> None:
    model = load_cached("llama_linear_rope")
    cfg = json.loads((Path(model.source) / "config.json").read_text())
    theta = cfg["rope_parameters"]["rope_theta"]
    hd = model.config.head_dim
    base = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    np.testing.assert_allclose(_inv_freq(model), base / 2.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["llama3_rope_headdim", "llama_legacy_config"])
def test_rope_scaling_llama3(name: str) -> None:
    model = load_cached(name)
    sc = model.config.rope_scaling
    assert sc.get("rope_type", sc.get("type")) == "llama3"
    hd = model.config.head_dim
    base = 1.0 / model.config.rope_theta ** (np.arange(0, hd, 2) / hd)
    old, factor = sc["original_max_position_embeddings"], sc["factor"]
    low, high = sc["low_freq_factor"], sc["high_freq_factor"]
    expected = []
    for f in base:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            expected.append(f)
        elif wavelen > old / low:
            expected.append(f / factor)
        else:
            s = (old / wavelen - low) / (high - low)
            expected.append((1 - s) * f / factor + s * f)
    np.testing.assert_allclose(_inv_freq(model), expected, rtol=1e-5)
    assert not np.allclose(_inv_freq(model), base)


def test_special_floats_are_decoded(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    # transformers 5 spells non-finite floats as objects; Python's json writes bare Infinity
    path.write_text('{"a": {"__float__": "Infinity"}, "b": [0.0, {"__float__": "-Infinity"}], '
                    '"c": {"nested": {"__float__": "NaN"}}, "d": {"__float__": 1}, "e": Infinity}')
    cfg = read_config_json(path)
    assert cfg["a"] == math.inf and cfg["b"] == [0.0, -math.inf]
    assert math.isnan(cfg["c"]["nested"]) and cfg["d"] == {"__float__": 1}
    assert cfg["e"] == math.inf


def test_special_float_in_a_real_config(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    edit_config(folder, time_step_limit=[0.0, {"__float__": "Infinity"}],
                max_position_embeddings={"__float__": "Infinity"})
    with pytest.raises(modelkit.ConfigError, match="max_position_embeddings"):
        modelkit.load(folder)  # inf is decoded, then rejected as a non-integer
    edit_config(folder, max_position_embeddings=64)
    model = modelkit.load(folder)
    assert model.config.raw["time_step_limit"] == [0.0, math.inf]


@pytest.mark.parametrize("fixture, changes, needle", [
    ("llama_gqa", {"hidden_size": 0}, "hidden_size"),
    ("llama_gqa", {"num_attention_heads": -4}, "num_attention_heads"),
    ("llama_gqa", {"num_hidden_layers": 0}, "num_hidden_layers"),
    ("llama_gqa", {"vocab_size": -1}, "vocab_size"),
    ("llama_gqa", {"intermediate_size": 0}, "intermediate_size"),
    ("llama_gqa", {"num_key_value_heads": 0}, "num_key_value_heads"),
    ("llama_gqa", {"num_key_value_heads": 3}, "num_key_value_heads"),
    ("llama_gqa", {"hidden_size": 32.5}, "hidden_size"),
    ("llama_gqa", {"hidden_size": "32"}, "hidden_size"),
    ("llama_gqa", {"num_attention_heads": True}, "num_attention_heads"),
    ("llama_gqa", {"vocab_size": DELETE}, "vocab_size"),
    ("llama_gqa", {"head_dim": 7}, "head_dim"),  # odd: cannot rotate halves
    ("llama_gqa", {"rms_norm_eps": "tiny"}, "rms_norm_eps"),
    ("gpt2", {"n_embd": 30}, "divisible"),  # 4 heads do not divide 30
    ("gpt2", {"n_head": 0}, "n_head"),
    ("falcon_rw", {"hidden_size": 60, "num_attention_heads": 16}, "divisible"),
    ("mistral_window", {"sliding_window": 0}, "sliding_window"),
    ("llama_gqa", {"rope_parameters": {"rope_theta": 0.0, "rope_type": "default"}}, "rope_theta"),
    ("llama_gqa", {"rope_parameters": {"rope_theta": -1e4, "rope_type": "default"}}, "rope_theta"),
    ("llama_gqa", {"rope_parameters": {"rope_theta": 1e4, "rope_type": "llama3"}}, "factor"),
    ("llama_gqa", {"rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": "2"}}, "factor"),
    ("llama_gqa", {"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 2.0}}, "yarn"),
    ("llama_gqa", {"rms_norm_eps": -1e-5}, "eps"),
    ("llama_gqa", {"hidden_act": "nonesuch"}, "nonesuch"),
    ("falcon_rw", {"layer_norm_epsilon": -1.0}, "eps"),
    ("granite3", {"logits_scaling": 0.0}, "logits_divisor"),
])
def test_impossible_config_values(tmp_path: Path, fixture: str, changes: dict, needle: str) -> None:
    folder = copy_fixture(fixture, tmp_path / "m", weights=True)
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError) as info:
        modelkit.load(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message, message
    assert needle in message, message
    assert "\n" not in message


def test_bad_config_json(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(modelkit.ConfigError, match="not valid JSON"):
        modelkit.load(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(modelkit.ConfigError, match="JSON object"):
        modelkit.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(modelkit.ConfigError, match="config.json not found"):
        modelkit.load(folder)


def test_config_values_alias_table(tmp_path: Path) -> None:
    """``values`` maps checkpoint spellings onto canonical ones, for scalars and lists."""
    data = _llama_data()
    data["config"]["layer_kinds"] = {"from": "layer_types", "type": "list", "default": [],
                                     "values": {"full_attention": "attention"}}
    m = load_mapping(_write(tmp_path, data, "aliases.yaml"))
    cfg = m.resolve_config({**LLAMA_RAW, "layer_types": ["full_attention", "mamba"]})
    assert cfg["layer_kinds"] == ["attention", "mamba"]


def test_checks_give_their_message() -> None:
    with pytest.raises(modelkit.ConfigError, match="multiple of num_key_value_heads"):
        _resolve("llama", {**LLAMA_RAW, "num_key_value_heads": 3})


def test_resolution_does_not_mutate_raw() -> None:
    raw = copy.deepcopy(LLAMA_RAW)
    _resolve("llama", raw)
    assert raw == LLAMA_RAW
