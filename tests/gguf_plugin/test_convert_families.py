"""`modelkit convert FILE.gguf OUT` for the families whose GGUF form is fused, stacked or
reshaped: the folder holds the original Hugging Face tensors (names, shapes, values) and loads
back to the GGUF file's logits.

Each GGUF file is a golden fixture written by llama.cpp's converter (tests/fixtures/gguf/) or
by modelkit itself (``modelkit convert FOLDER OUT.gguf``). What transformers makes of the same
folders is checked outside the suite (bench/check_convert_in_transformers.py, docs/gguf.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, fixture_path, read_tensors, reference

import modelkit
from modelkit_gguf.convert import convert
from modelkit_gguf.export import export

# fixture -> what its GGUF form does that the folder undoes
FAMILIES = {
    "gh_hybrid": "Mamba2 conv1d reshaped, A stored as -exp(A_log)",
    "gh_moe": "Granite 4.0-H experts' fused gate/up, shared MLP, router",
    "gh_all_mamba": "Granite 4.0-H of Mamba2 layers only",
    "granitemoe": "fused gate/up over experts (input_linear)",
    "qwen3_moe_sparse": "experts stacked: one tensor per expert",
    "mixtral": "experts stacked under the llama architecture",
    "mamba": "Mamba 1 conv1d reshaped, A = -exp(A_log)",
    "mamba2": "Mamba2 conv1d reshaped",
    "lfm2_hub_config": "short convolution reshaped",
    "falcon_7b": "multi-query fused QKV",
    "falcon_40b": "grouped fused QKV, two norms",
    "bloom": "fused QKV per head",
    "gpt_neox": "fused QKV per head",
    "gpt_bigcode": "multi-query fused QKV",
    "gpt2": "transposed fused QKV (Conv1D)",
    "phi3": "fused QKV of unequal parts (slices), fused gate/up",
}
# families whose GGUF form keeps every setting the reference used (Mixtral's sliding window is
# not in llama.cpp's llama architecture): their folders match the reference logits too
KEEPS_ALL = set(FAMILIES) - {"mixtral"}


def _assert_same_tensors(folder: Path, name: str) -> None:
    original, written = read_tensors(fixture_path(name)), read_tensors(folder)
    assert sorted(written) == sorted(original)
    for key, array in original.items():
        assert written[key].shape == array.shape, key
        if key.endswith("A_log"):  # GGUF keeps -exp(A_log): log(-A) gives it back to a rounding
            np.testing.assert_allclose(written[key], array, rtol=1e-6, atol=0, err_msg=key)
        else:
            np.testing.assert_array_equal(written[key], array, err_msg=key)


def _assert_same_logits(folder: Path, gguf: Path, name: str) -> None:
    ids, ref = reference(name)
    got, want = modelkit.load(folder).forward(ids), modelkit.load(gguf).forward(ids)
    assert np.abs(got - want).max() < 1e-4
    assert np.array_equal(got.argmax(-1), want.argmax(-1))
    if name in KEEPS_ALL:
        assert np.abs(got - ref).max() < 1e-4


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_llama_cpp_gguf_file_becomes_the_original_folder(tmp_path: Path, name: str) -> None:
    gguf = FIXTURES / "gguf" / f"{name}.gguf"
    convert(gguf, tmp_path / "hf")
    _assert_same_tensors(tmp_path / "hf", name)
    _assert_same_logits(tmp_path / "hf", gguf, name)


@pytest.mark.parametrize("name", ["gh_moe", "qwen3_moe_sparse", "mamba", "lfm2_hub_config", "falcon_40b"])
def test_a_folder_goes_to_gguf_and_back(tmp_path: Path, name: str) -> None:
    gguf = tmp_path / "m.gguf"
    export(fixture_path(name), gguf)
    convert(gguf, tmp_path / "hf")
    _assert_same_tensors(tmp_path / "hf", name)
    _assert_same_logits(tmp_path / "hf", gguf, name)
