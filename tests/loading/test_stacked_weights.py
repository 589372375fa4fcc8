"""Stacked weights entries (``stack: N``, ``{j}``): one checkpoint tensor per expert becomes one
[E, ...] parameter, every piece checked from the headers and reported by its own name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ATOL, copy_fixture, fixture_path, max_abs, read_tensors, reference, run_cli, write_tensors

import modelkit
from modelkit.loading.choose import load_mapping

W1 = "model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight"


def _report(folder: Path, **kw: Any) -> Any:
    with pytest.raises(modelkit.WeightMismatchError) as info:
        modelkit.load(folder, **kw)
    return info.value.report


def test_hub_layout_loads_one_tensor_per_expert() -> None:
    model = modelkit.load(fixture_path("mixtral"))
    mlp = model.layers[0].blocks["mlp"]
    assert mlp.gate_up.shape == (4, 48, 32) and mlp.down.shape == (4, 32, 24)
    w1 = read_tensors(Path(model.source))["model.layers.0.block_sparse_moe.experts.2.w1.weight"]
    assert np.array_equal(mlp.gate_up[2, :24], w1)  # expert 2's gate rows are its own w1


def test_a_missing_expert_tensor_is_named(tmp_path: Path) -> None:
    folder = copy_fixture("mixtral", tmp_path / "m")
    tensors = read_tensors(folder)
    del tensors["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    write_tensors(folder, tensors)
    report = _report(folder)
    assert report.missing == [("model.layers.1.block_sparse_moe.experts.2.w3.weight",
                               "layers.1.mlp.experts.up.weight", (24, 32))]
    assert not report.unexpected  # the other experts' tensors are used, not left over
    out = run_cli("validate", "--model", folder)
    assert out.returncode == 1
    assert ("missing     model.layers.1.block_sparse_moe.experts.2.w3.weight  (canonical "
            "layers.1.mlp.experts.up.weight, expected shape [24, 32])") in out.stdout


def test_a_stack_absent_altogether_is_one_line(tmp_path: Path) -> None:
    folder = copy_fixture("mixtral", tmp_path / "m")
    tensors = {n: t for n, t in read_tensors(folder).items() if not (n.startswith("model.layers.0.") and ".w2." in n)}
    write_tensors(folder, tensors)
    assert _report(folder).missing == [("model.layers.0.block_sparse_moe.experts.{0..3}.w2.weight",
                                        "layers.0.mlp.experts.down.weight", (4, 32, 24))]


def test_only_the_first_stored_form_is_read(tmp_path: Path) -> None:
    """A checkpoint holding both layouts reads the per-expert one (listed first); the fused
    tensors are left over, so reported as unexpected."""
    folder = copy_fixture("mixtral", tmp_path / "m")
    fused = {n: t for n, t in read_tensors(fixture_path("mixtral_fused")).items() if ".mlp.experts." in n}
    write_tensors(folder, {**read_tensors(folder), **fused})
    report = _report(folder)
    assert not report.missing and not report.misshaped
    assert sorted(name for name, _ in report.unexpected) == sorted(fused)


def test_a_misshaped_or_mistyped_piece_is_named(tmp_path: Path) -> None:
    folder = copy_fixture("mixtral", tmp_path / "m")
    tensors = read_tensors(folder)
    tensors["model.layers.0.block_sparse_moe.experts.1.w1.weight"] = np.zeros((23, 32), np.float32)
    tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"] = np.zeros((32, 24), np.int32)
    write_tensors(folder, tensors)
    report = _report(folder)
    assert report.misshaped == [("model.layers.0.block_sparse_moe.experts.1.w1.weight",
                                 "layers.0.mlp.experts.gate.weight", (23, 32), (4, 24, 32), "4 stacked: [4, 23, 32]")]
    assert report.mistyped == [("model.layers.1.block_sparse_moe.experts.3.w2.weight",
                                "layers.1.mlp.experts.down.weight", "I32")]


def _user_mapping(tmp_path: Path, weights: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump({"extends": "mixtral", "name": "mixtral_user",
                                    "match": {"model_type": ["mixtral"]}, "weights": weights, **top},
                                   sort_keys=False))
    return path


def test_a_stack_of_the_wrong_count_is_misshaped(tmp_path: Path) -> None:
    path = _user_mapping(tmp_path, {"layers.{i}.mlp.experts.gate.weight": {"from": W1, "stack": 3}})
    report = _report(copy_fixture("mixtral", tmp_path / "m"), mapping=path)
    assert ("model.layers.0.block_sparse_moe.experts.{0..2}.w1.weight", "layers.0.mlp.experts.gate.weight",
            (3, 24, 32), (4, 24, 32), "3 stacked") in report.misshaped


def test_a_stack_count_from_config_is_checked(tmp_path: Path) -> None:
    path = _user_mapping(tmp_path, {"layers.{i}.mlp.experts.gate.weight": {"from": W1, "stack": "$num_experts - 4"}})
    with pytest.raises(modelkit.ConfigError, match=r"weights.layers.\{i\}.mlp.experts.gate.weight.stack must be "
                                                   r"a positive integer \(at most 65536\), got 0"):
        modelkit.load(copy_fixture("mixtral", tmp_path / "m"), mapping=path)


def test_transforms_apply_to_each_piece(tmp_path: Path) -> None:
    """A checkpoint storing each expert's w2 transposed, read back with a per-piece transpose."""
    folder = copy_fixture("mixtral", tmp_path / "m")
    tensors = {}
    for name, t in read_tensors(folder).items():
        tensors[name.replace(".w2.", ".w2t.")] = t.T.copy() if ".w2." in name else t
    write_tensors(folder, tensors)
    path = _user_mapping(tmp_path, {"layers.{i}.mlp.experts.down.weight": {
        "from": "model.layers.{i}.block_sparse_moe.experts.{j}.w2t.weight", "stack": "$num_experts",
        "transform": "transpose"}})
    ids, ref = reference("mixtral")
    assert max_abs(modelkit.load(folder, mapping=path).forward(ids), ref) < ATOL


@pytest.mark.parametrize("entry,message", [
    ({"from": "model.layers.{i}.experts.{j}.w1.weight"}, "belongs to a stacked entry"),
    ({"from": "model.layers.{i}.experts.0.w1.weight", "stack": 4}, "names its pieces with {j}"),
    ({"from": W1, "stack": 0}, "expected a positive count or a $expression"),
    ({"from": W1, "stack": "four"}, "expected a positive count or a $expression"),
    ({"from": W1, "stack": "$experts"}, "names experts, which the config section does not declare"),
    ([{"from": W1, "stack": 4, "optional": True}], "optional belongs to a whole entry"),
    ({"from": W1, "stack": 4, "when": "$num_experts > 2"}, "when belongs to one of a list of forms"),
    ([{"from": W1, "stack": 4, "when": "yes"}], "expected a $expression"),
    ([{"from": W1, "stack": 4, "when": "$experts > 2"}], "names experts, which the config section does not declare"),
    ([{"from": W1, "stack": 4, "transform": "transpose", "source": "x"}], "unknown key(s) source"),
    ([], "needs at least one checkpoint tensor name"),
])
def test_bad_stacked_entries_are_mapping_errors(tmp_path: Path, entry: Any, message: str) -> None:
    path = _user_mapping(tmp_path, {"layers.{i}.mlp.experts.gate.weight": entry})
    with pytest.raises(modelkit.MappingError, match=r"weights\.layers\.\{i\}\.mlp\.experts\.gate\.weight") as info:
        load_mapping(path)
    assert message in str(info.value)


@pytest.mark.parametrize("when,loads", [("$num_experts > 2", True), ("$num_experts > 99", False)])
def test_a_form_whose_when_is_false_is_not_tried(tmp_path: Path, when: str, loads: bool) -> None:
    # the stored (one tensor per expert) form is tried only when its expression holds; else the
    # fused form is, which this checkpoint lacks
    fused = "model.layers.{i}.mlp.experts.gate_up_proj"
    path = _user_mapping(tmp_path, {"layers.{i}.mlp.experts.gate.weight": [
        {"from": W1, "stack": "$num_experts", "when": when},
        {"from": fused, "transform": {"split": {"parts": 2, "index": 0, "axis": 1}}}]})
    folder = copy_fixture("mixtral", tmp_path / "m")
    if loads:
        ids, ref = reference("mixtral")
        assert max_abs(modelkit.load(folder, mapping=path).forward(ids), ref) < ATOL
    else:
        assert ("model.layers.0.mlp.experts.gate_up_proj", "layers.0.mlp.experts.gate.weight", (4, 24, 32)) \
            in _report(folder, mapping=path).missing


def test_j_is_only_a_checkpoint_placeholder(tmp_path: Path) -> None:
    path = _user_mapping(tmp_path, {}, ignore=["model.layers.{i}.experts.{j}.bias"])
    with pytest.raises(modelkit.MappingError, match=r"ignore\[0\].*belongs to a stacked entry"):
        load_mapping(path)
