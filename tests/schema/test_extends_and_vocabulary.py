"""Mappings written once: ``extends:``, ``tensor_prefixes``, and the canonical vocabulary, with
the traps a user met when writing a mapping by hand closed at parse or plan time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ATOL, copy_fixture, fixture_path, mapping_data, max_abs, reference

import modelkit
from modelkit.loading.choose import load_mapping
from modelkit.schema.read import merge
from modelkit.schema.vocabulary import BLOCK_NAMES


def _llama_data() -> dict[str, Any]:
    return mapping_data("llama")


def _write(folder: Path, data: Any, name: str = "m.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# ---- extends -----------------------------------------------------------------------------------

def test_mistral_and_granite3_are_a_few_lines_over_llama() -> None:
    for arch in ("mistral", "granite3"):
        m = load_mapping(modelkit.plugins.registry().architectures[arch].mapping)
        assert m.extends and m.extends[0].endswith("llama.yaml")
        text = Path(str(m.path)).read_text().splitlines()
        assert len([line for line in text if line.strip() and not line.lstrip().startswith("#")]) < 35


def test_an_extension_overrides_options_adds_fields_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _write(tmp_path, {
        "extends": "llama", "name": "windowed_llama",
        "match": {"model_type": ["windowed_llama"]},
        "config": {"window": {"from": "window", "type": "int", "default": 3}},
        "layers": {"blocks": {"attn": {"window": "$window"}}}})
    m = load_mapping(path)
    assert m.name == "windowed_llama" and m.match == {"model_type": ["windowed_llama"]}
    base = load_mapping(modelkit.plugins.registry().architectures["llama"].mapping)
    assert [f.name for f in m.fields] == [f.name for f in base.fields] + ["window"]
    assert m.variants["default"].blocks["attn"].options["window"] == "$window"
    assert m.variants["default"].blocks["attn"].options["positions"] == "rope"
    assert m.checks == base.checks and len(m.weights) == len(base.weights)
    # the windowed mapping over a llama checkpoint is Mistral's maths: compare with mistral's fixture
    folder = copy_fixture("mistral_window", tmp_path / "ckpt")
    model = modelkit.load(folder, mapping=path)  # window 3 here, 5 in the fixture's config
    assert model.layers[0].blocks["attn"].window == 3


def test_extends_a_file_and_removes_entries_with_null(tmp_path: Path) -> None:
    base = _write(tmp_path, _llama_data(), "base.yaml")
    data = {"extends": base.name, "name": "no_bias_llama", "weights": {"layers.{i}.attn.q.bias": None},
            "checks": [{"expr": "num_layers >= 1", "message": "at least one layer"}]}
    m = load_mapping(_write(tmp_path, data, "ext.yaml"))
    assert m.extends == [str(base)]
    assert "layers.{i}.attn.q.bias" not in {w.target for w in m.weights}
    assert len(m.checks) == len(load_mapping(base).checks) + 1
    ids, ref = reference("llama_gqa")
    assert max_abs(modelkit.load(fixture_path("llama_gqa"), mapping=tmp_path / "ext.yaml").forward(ids), ref) < ATOL


@pytest.mark.parametrize("extends, needle", [("no_such_arch", "no architecture named 'no_such_arch'"),
                                             ("missing.yaml", "mapping file not found"),
                                             ("m.yaml", "a cycle"), (3, "expected an architecture name")])
def test_bad_extends_is_one_line(tmp_path: Path, extends: Any, needle: str) -> None:
    path = _write(tmp_path, {"extends": extends, "name": "x"})
    with pytest.raises(modelkit.MappingError, match=needle):
        load_mapping(path)


def test_merge_rules() -> None:
    base = {"match": {"model_type": ["a"], "architectures": ["A"]}, "checks": ["x > 0"],
            "weights": {"w": {"from": "a", "transform": "transpose"}}, "layers": {"blocks": {"b": {"k": 1, "j": 2}}}}
    over = {"match": {"model_type": ["b"]}, "checks": ["y > 0"], "weights": {"w": {"from": "b"}},
            "layers": {"blocks": {"b": {"k": 3}}}}
    merged = merge(base, over)
    assert merged["match"] == {"model_type": ["b"]}  # replaced whole
    assert merged["checks"] == ["x > 0", "y > 0"]  # added
    assert merged["weights"]["w"] == {"from": "b"}  # an entry is one unit: no inherited transform
    assert merged["layers"]["blocks"]["b"] == {"k": 3, "j": 2}  # options merge


def test_tensor_prefixes_serve_both_namings(tmp_path: Path) -> None:
    from conftest import read_tensors, write_tensors

    ids, ref = reference("gpt2")
    folder = copy_fixture("gpt2", tmp_path / "bare")
    tensors = read_tensors(folder)
    write_tensors(folder, {k.removeprefix("transformer."): v for k, v in tensors.items()})
    assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL


# ---- the vocabulary and the traps --------------------------------------------------------------

def test_every_shipped_mapping_uses_canonical_block_names() -> None:
    for arch in modelkit.plugins.registry().architectures:
        m = load_mapping(modelkit.plugins.registry().architectures[arch].mapping)
        for layer in m.variants.values():
            assert set(layer.blocks) <= set(BLOCK_NAMES), arch


def test_a_block_name_outside_the_vocabulary_is_refused(tmp_path: Path) -> None:
    data = _llama_data()
    data["layers"]["blocks"]["ln_1"] = data["layers"]["blocks"].pop("attn_norm")
    data["layers"]["flow"][0][0] = "ln_1"
    with pytest.raises(modelkit.MappingError, match="'ln_1' is not a canonical block name; use one of attn_norm"):
        load_mapping(_write(tmp_path, data))


def test_a_block_no_branch_uses_is_an_error(tmp_path: Path) -> None:
    """The Gemma 3 trap: q/k norms declared as blocks but wired into no branch validated "ok"."""
    data = _llama_data()
    data["layers"]["blocks"]["post_attn_norm"] = {"kind": "rmsnorm", "eps": "$rms_norm_eps"}
    with pytest.raises(modelkit.MappingError, match=r"layers\.blocks\.post_attn_norm: no branch of flow uses"):
        load_mapping(_write(tmp_path, data))


def test_a_weights_entry_for_an_undeclared_parameter_names_the_real_ones(tmp_path: Path) -> None:
    data = _llama_data()
    data["weights"]["layers.{i}.attn.qnorm.weight"] = "model.layers.{i}.self_attn.q_norm.weight"
    with pytest.raises(modelkit.MappingError) as info:
        load_mapping(_write(tmp_path, data))
    message = str(info.value)
    assert "weights.layers.{i}.attn.qnorm.weight" in message and "has no parameter 'qnorm.weight'" in message
    assert "q.weight, q.bias" in message or "q.weight" in message.split("its parameters are")[1]


def test_a_weights_entry_for_a_missing_block_is_an_error(tmp_path: Path) -> None:
    data = _llama_data()
    data["weights"]["layers.{i}.post_mlp_norm.weight"] = "model.layers.{i}.post_feedforward_layernorm.weight"
    with pytest.raises(modelkit.MappingError, match="no layer has a block 'post_mlp_norm'"):
        load_mapping(_write(tmp_path, data))


def test_a_width_mismatch_is_caught_at_plan_time(tmp_path: Path) -> None:
    data = _llama_data()
    data["layers"]["blocks"]["mlp"]["hidden_size"] = 16  # the fixture's hidden_size is 32
    path = _write(tmp_path, data)
    with pytest.raises(modelkit.ConfigError, match=r"layer 0, block mlp \(gated_mlp\) has width 16, but the "
                                                   r"model's hidden_size is 32"):
        modelkit.loading.inspect(fixture_path("llama_gqa"), mapping=path)


def test_options_are_checked_in_one_place(tmp_path: Path) -> None:
    """A bool is never a count: `num_heads: true` is refused, not read as 1."""
    data = _llama_data()
    data["layers"]["blocks"]["attn"]["num_heads"] = True
    with pytest.raises(modelkit.ConfigError, match=r"layers\.blocks\.attn\.num_heads must be an integer, got True"):
        modelkit.loading.inspect(fixture_path("llama_gqa"), mapping=_write(tmp_path, data))


def test_each_mapping_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelkit.schema import read

    calls: list[str] = []
    original = read.parse_mapping
    monkeypatch.setattr(read, "parse_mapping", lambda data, path, *a: calls.append(path) or original(data, path, *a))
    for _ in range(3):
        modelkit.load(fixture_path("llama_gqa"))
    assert len(calls) == len(set(calls))
    assert np.isfinite(modelkit.load(fixture_path("gpt2")).forward([1, 2]).sum())
