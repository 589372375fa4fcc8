"""modelkit.testing: the assertion helper a plugin's test calls, and the fixture builder's
promise to run where torch is but modelkit's plugin machinery is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, copy_fixture, load_cached, read_tensors, write_tensors

import modelkit
from modelkit import testing as kit


def test_a_plugin_test_is_one_line() -> None:
    measured = kit.assert_matches_reference(FIXTURES / "compare_llama")
    assert measured["full_forward"] < kit.ATOL
    assert {"decode_after_1", "decode_after_8", "pieces_cut_half"} <= set(measured)


def test_it_takes_a_loaded_model_and_a_reference_elsewhere(tmp_path: Path) -> None:
    model = load_cached("gh_hybrid")
    kit.assert_matches_reference(model)  # the reference next to the model's folder
    ref = copy_fixture("gh_hybrid", tmp_path / "ref_only", weights=False) / "ref.npz"
    kit.assert_matches_reference(model, ref)
    assert kit.read_reference(ref).logits_step is not None  # granite fixtures record cached decoding


def test_a_wrong_model_fails_with_the_numbers(tmp_path: Path) -> None:
    folder = copy_fixture("compare_llama", tmp_path / "wrong")
    tensors = read_tensors(folder)
    tensors["model.layers.3.mlp.down_proj.weight"] = tensors["model.layers.3.mlp.down_proj.weight"] * 1.01
    write_tensors(folder, tensors)
    with pytest.raises(AssertionError, match=r"full forward vs reference logits: max \|difference\| \S+ >= 0.0001"):
        kit.assert_matches_reference(folder, FIXTURES / "compare_llama")


def test_each_check_on_its_own() -> None:
    model = load_cached("llama_gqa")
    ref = kit.read_reference(FIXTURES / "llama_gqa" / "ref.npz")
    assert kit.check_full_forward(model, ref) < kit.ATOL
    assert kit.check_cached_decoding(model, ref, 3) < kit.SELF_ATOL
    assert kit.check_prefill_in_pieces(model, ref, "half") < kit.SELF_ATOL
    assert len(kit.check_greedy_tokens(model, ref.ids[:4], 5)) <= 5


def test_load_options_reach_the_model() -> None:
    kit.assert_matches_reference(FIXTURES / "llama_gqa", prefill_chunk=4, tuning={"attention.query_block": 2})


def test_the_builder_imports_without_torch_or_pluggy() -> None:
    """The fixture builder runs in an environment with torch and transformers, where modelkit's
    own dependencies (pluggy, PyYAML, ...) may be missing: importing it needs NumPy only."""
    code = ("import sys; sys.modules['pluggy'] = None; sys.modules['yaml'] = None; "
            "import modelkit.testing.build_fixture as b; import modelkit.evaluation.transformers_run as t; "
            "assert 'torch' not in sys.modules; print(b.build.__name__, t.run.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["build", "run"]


def test_hookimpl_is_still_exported() -> None:
    from modelkit import hookimpl

    assert hookimpl is modelkit.hookimpl and "hookimpl" in modelkit.__all__
