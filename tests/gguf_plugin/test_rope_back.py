"""Llama 3's rope scaling comes back from the divisors llama.cpp keeps (rope_freqs.weight):
exactly for Llama 3's own settings, as an equivalent set otherwise, refused when none exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, fixture_path
from safetensors.numpy import load_file

import modelkit
from modelkit_gguf.convert import convert
from modelkit_gguf.export import llama3_rope_freqs
from modelkit_gguf.rope_back import llama3_scaling

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("head_dim, theta", [(128, 500000.0), (64, 500000.0)])
def test_llama3_settings_come_back_as_they_were(head_dim: int, theta: float) -> None:
    assert llama3_scaling(llama3_rope_freqs(LLAMA3, head_dim, theta), theta, head_dim) == LLAMA3


@pytest.mark.parametrize("head_dim, settings", [
    (16, {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    (8, {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0, "original_max_position_embeddings": 4}),
    (32, {"factor": 16.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 64}),
])
def test_few_frequencies_between_give_settings_with_the_same_divisors(head_dim: int, settings: dict) -> None:
    divisors = llama3_rope_freqs({"rope_type": "llama3", **settings}, head_dim, 10000.0)
    found = llama3_scaling(divisors, 10000.0, head_dim)
    assert found is not None and found["rope_type"] == "llama3"
    np.testing.assert_allclose(llama3_rope_freqs(found, head_dim, 10000.0), divisors, rtol=1e-5)


@pytest.mark.parametrize("divisors", [np.linspace(1, 3, 8), np.ones(8), np.array([1, 8, 1, 8, 1, 8, 1, 8.0]),
                                      np.full(8, np.nan), np.ones(5)])
def test_divisors_that_follow_no_llama3_scaling_give_none(divisors: np.ndarray) -> None:
    assert llama3_scaling(divisors, 10000.0, 16) is None


def test_llama_cpp_s_llama3_file_becomes_a_folder_with_the_same_logits(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    convert(FIXTURES / "gguf" / "llama3_rope_headdim.gguf", out)
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert not any("rope" in name for name in load_file(out / "model.safetensors"))
    ref = np.load(fixture_path("llama3_rope_headdim") / "ref.npz")
    logits = modelkit.load(out).forward(ref["ids"].ravel())
    assert np.abs(logits - ref["logits"].reshape(logits.shape)).max() < 1e-4
