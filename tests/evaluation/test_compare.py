"""`modelkit compare` in the library: states, metrics, the first divergence, reference files,
and where each state lives in a transformers model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, copy_fixture, load_cached, read_tensors, write_tensors

import modelkit
from modelkit.evaluation import compare as cmp
from modelkit.evaluation.reference import Reference, check_fits, load_reference, save_reference

REF = FIXTURES / "compare_llama" / "ref.npz"
sys.path.insert(0, str(FIXTURES))
from build_compare_fixture import BLOCKS  # noqa: E402  (the modules the reference was taken from)


def swapped_qk(tmp_path: Path, layer: int) -> Path:
    """compare_llama with q_proj and k_proj exchanged in one layer (equal shapes: 4 kv heads)."""
    folder = copy_fixture("compare_llama", tmp_path / "swapped")
    tensors = read_tensors(folder)
    q, k = (f"model.layers.{layer}.self_attn.{p}_proj.weight" for p in "qk")
    tensors[q], tensors[k] = tensors[k], tensors[q]
    write_tensors(folder, tensors)
    return folder


def compare_with_reference(model) -> cmp.Comparison:
    ref = load_reference(REF)
    check_fits(ref, model.vocab_size, model.config.get("hidden_size"), len(model.layers))
    got, order = cmp.observe(model, ref.ids)
    return cmp.compare(got, order, ref)


def test_the_fixture_agrees_with_its_reference_everywhere() -> None:
    result = compare_with_reference(load_cached("compare_llama"))
    assert result.first is None and not result.missing
    assert len(result.rows) == 1 + 4 * 5 + 2  # embed, 4 blocks + output per layer, final norm, logits
    assert max(r.nmse for r in result.rows) < 1e-10
    assert result.verdict.startswith("no divergence")


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_q_and_k_swapped_in_one_layer_is_named(tmp_path: Path, layer: int) -> None:
    result = compare_with_reference(modelkit.load(swapped_qk(tmp_path, layer)))
    assert result.first is not None and result.first.name == f"block.{layer}.attn"
    assert f"first divergence: layer {layer}, block attn" in result.verdict
    assert ("agree to" in result.verdict) == (layer > 0)
    assert all(not r.diverges for r in result.rows if r.layer is not None and r.layer < layer)


def test_a_mapping_that_reads_q_and_k_crossed_is_named_at_layer_0(tmp_path: Path) -> None:
    mapping = tmp_path / "crossed.yaml"
    mapping.write_text("""\
modelkit_mapping: 1
extends: llama
name: llama_crossed
description: Llama with q and k read from each other's tensors (a deliberate mistake)
match:
  model_type: [llama]
weights:
  layers.{i}.attn.q.weight: model.layers.{i}.self_attn.k_proj.weight
  layers.{i}.attn.k.weight: model.layers.{i}.self_attn.q_proj.weight
""")
    model = modelkit.load(FIXTURES / "compare_llama", mapping=mapping)
    result = compare_with_reference(model)
    assert result.first.name == "block.0.attn"


def test_a_layer_whose_blocks_agree_but_output_does_not_blames_the_wiring() -> None:
    ref = load_reference(REF)
    got, order = cmp.observe(load_cached("compare_llama"), ref.ids)
    got["layer.1"] = got["layer.1"] * 1.5  # as if the residual multiplier were wrong
    result = cmp.compare(got, order, ref)
    assert result.first.name == "layer.1" and "its blocks agree" in result.verdict
    # and a block that differs while its layer agrees is not blamed
    got, order = cmp.observe(load_cached("compare_llama"), ref.ids)
    got["block.0.mlp"] = got["block.0.mlp"] + 1.0
    result = cmp.compare(got, order, ref)
    assert result.first is None and "block(s) mlp is not what the reference's module returns" in result.verdict
    assert any("its layer agrees" in line for line in cmp.report_lines(result))


def test_metrics() -> None:
    ref = np.array([[1.0, -1.0], [2.0, 0.0]], dtype=np.float32)
    assert cmp.metrics(ref, ref) == (0.0, 0.0)
    max_abs, nmse = cmp.metrics(ref + np.float32(0.5), ref)
    assert max_abs == 0.5 and nmse == pytest.approx(4 * 0.25 / 6)
    assert cmp.metrics(np.ones((1, 2), np.float32), np.zeros((1, 2), np.float32))[1] == float("inf")


def test_a_logits_only_reference_compares_the_logits() -> None:
    model = load_cached("llama_gqa")
    ref = load_reference(FIXTURES / "llama_gqa" / "ref.npz")
    got, order = cmp.observe(model, ref.ids)
    result = cmp.compare(got, order, ref)
    assert [r.name for r in result.rows] == ["logits"] and result.first is None
    assert "layer.0" in result.missing


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    ref = load_reference(REF)
    out = save_reference(tmp_path / "again.npz", ref.ids, ref.states, ref.meta)
    again = load_reference(out)
    assert again.meta == ref.meta and again.meta["attn_implementation"] == "eager"
    assert set(again.states) == set(ref.states) and np.array_equal(again.ids, ref.ids)
    assert out.read_bytes() == save_reference(tmp_path / "twice.npz", ref.ids, ref.states, ref.meta).read_bytes()


def _write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, needle", [
    ({"logits": np.zeros((3, 320), np.float32)}, "no 'ids' array"),
    ({"ids": np.array([1, 2]), "logits": np.zeros((3, 320), np.float32)}, "has 3 rows but 'ids' has 2 tokens"),
    ({"ids": np.array([[1, 2]]), "logits": np.zeros((1, 320), np.float32)}, "non-empty 1-D integer"),
    ({"ids": np.array([1, 2])}, "no hidden states or logits"),
    ({"ids": np.array([1, 2]), "layer.0": np.zeros(2, np.float32)}, "must be a 2-D float array"),
    ({"ids": np.array([1, 2]), "logits": np.zeros((2, 4), np.float32), "meta": np.array("[1")}, "JSON"),
])
def test_bad_reference_files_are_one_line(tmp_path: Path, arrays: dict, needle: str) -> None:
    with pytest.raises(modelkit.EvaluationError, match=needle) as info:
        load_reference(_write(tmp_path / "bad.npz", **arrays))
    assert "\n" not in str(info.value)


def test_unreadable_reference_files(tmp_path: Path) -> None:
    with pytest.raises(modelkit.EvaluationError, match="reference file not found"):
        load_reference(tmp_path / "nothing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(modelkit.EvaluationError, match="not a reference .npz file"):
        load_reference(tmp_path / "text.npz")
    np.savez(tmp_path / "pickled.npz", ids=np.array([1]), logits=np.array([[object()]], dtype=object))
    with pytest.raises(modelkit.EvaluationError, match="not a reference .npz file"):
        load_reference(tmp_path / "pickled.npz")


@pytest.mark.parametrize("states, ids, needle", [
    ({"logits": np.zeros((2, 100), np.float32)}, [1, 2], "logits have 100 columns but this model's vocabulary has 320"),
    ({"logits": np.zeros((2, 320), np.float32)}, [1, 5000], "token ids reach 5000, outside this model's vocabulary"),
    ({"layer.7": np.zeros((2, 32), np.float32)}, [1, 2], "has 'layer.7' but this model has 4 layers"),
    ({"layer.0": np.zeros((2, 64), np.float32)}, [1, 2], "'layer.0' is 64 wide but this model's hidden size is 32"),
])
def test_a_reference_for_another_model_is_refused(states: dict, ids: list, needle: str) -> None:
    ref = Reference(np.array(ids), states, {}, "other.npz")
    with pytest.raises(modelkit.EvaluationError, match=needle):
        check_fits(ref, 320, 32, 4)


def test_module_names_from_the_plan() -> None:
    """The modules `modelkit compare` hooks in transformers are the ones the fixture's reference
    was taken from."""
    source, _, plan = modelkit.inspect(FIXTURES / "compare_llama")
    source.close()
    layers, blocks, final = cmp.module_names(plan)
    assert layers == [f"model.layers.{i}" for i in range(4)] and final == "model.norm"
    assert blocks == {f"block.{i}.{name}": m.replace("{i}", str(i)) for i in range(4) for name, m in BLOCKS.items()}


@pytest.mark.parametrize("name, layer0, attn", [
    ("gpt2", "transformer.h.0", "transformer.h.0.attn"),
    ("falcon_7b", "transformer.h.0", "transformer.h.0.self_attention"),
    ("gh_hybrid", "model.layers.0", None),
])
def test_module_names_of_other_layouts(name: str, layer0: str, attn: str | None) -> None:
    source, _, plan = modelkit.inspect(FIXTURES / name)
    source.close()
    layers, blocks, _ = cmp.module_names(plan)
    assert layers[0] == layer0
    if attn is not None:
        assert blocks["block.0.attn"] == attn
    assert all(not m.endswith((".weight", ".bias")) for m in blocks.values())


def test_the_reference_records_how_it_was_made() -> None:
    meta = load_reference(REF).meta
    assert meta["reference"].startswith("transformers ") and meta["dtype"] == "float32"
    assert json.loads(json.dumps(meta)) == meta and meta["not_captured"] == []
