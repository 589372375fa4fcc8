"""Granite 4.0-H at a real size: a granite-4.0-h-350m-shaped GGUF written by llama.cpp's own
converter is the same model as the Hugging Face folder it came from.

The folder is the benchmark's random-weight checkpoint with granite-4.0-h-350m's exact shapes
(``python bench/checkpoints.py granite-4.0-h-350m``, in ``~/.cache/modelkit/bench/checkpoints/``);
the GGUF is what ``python -m bench`` converts it to for llama.cpp
(``~/ref-venv/bin/python bench/make_gguf.py LLAMA_CPP_DIR FOLDER OUT.gguf``, in
``~/.cache/modelkit/bench/gguf/``). ``$MODELKIT_GRANITE_350M_HF`` and
``$MODELKIT_GRANITE_350M_GGUF`` point elsewhere; without both files the tests are skipped.
Loading the pair takes about 15 s and 2.8 GB, so they are marked slow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modelkit
from conftest import max_abs

BENCH = Path.home() / ".cache/modelkit/bench"


def _path(env: str, default: Path) -> Path | None:
    value = os.environ.get(env)
    path = Path(value).expanduser() if value else default
    return path if path.exists() else None


HF = _path("MODELKIT_GRANITE_350M_HF", BENCH / "checkpoints/granite-4.0-h-350m")
GGUF = _path("MODELKIT_GRANITE_350M_GGUF", BENCH / "gguf/granite-4.0-h-350m-f32.gguf")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    HF is None or GGUF is None, reason="granite-4.0-h-350m-shaped checkpoint or its GGUF not found "
                                       "(see this module's docstring)")]


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return modelkit.load(GGUF), modelkit.load(HF)


def test_the_gguf_has_the_folders_layers(models: tuple[Any, Any]) -> None:
    gguf_model, hf_model = models
    assert gguf_model.name == "granite-gguf"
    assert [layer.variant for layer in gguf_model.layers] == [layer.variant for layer in hf_model.layers]
    assert gguf_model.n_params == hf_model.n_params


def test_same_logits_and_greedy_tokens(models: tuple[Any, Any]) -> None:
    gguf_model, hf_model = models
    ids = np.random.default_rng(0).integers(0, gguf_model.config["vocab_size"], 48)
    a, b = gguf_model.forward(ids), hf_model.forward(ids)
    assert max_abs(a, b) < 1e-4  # measured 9e-7, logits of order 1
    prompt = [int(t) for t in ids[:12]]
    assert gguf_model.generate(prompt, max_new_tokens=8, temperature=0.0) == \
        hf_model.generate(prompt, max_new_tokens=8, temperature=0.0)


def test_modelkit_writes_the_converters_file(tmp_path: Path) -> None:
    # modelkit convert FOLDER OUT.gguf: the same tensors and bytes as llama.cpp's converter (A to
    # one float32 rounding), in about 7 s
    import gguf

    from modelkit_gguf.export import export

    out = tmp_path / "g.gguf"
    export(HF, out)
    ours = {t.name: t for t in gguf.GGUFReader(out).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(GGUF).tensors}
    assert sorted(ours) == sorted(theirs)
    for name, t in theirs.items():
        assert (ours[name].tensor_type, list(ours[name].shape)) == (t.tensor_type, list(t.shape)), name
        a, b = np.asarray(ours[name].data), np.asarray(t.data)
        if name.endswith("ssm_a"):
            np.testing.assert_array_max_ulp(a, b, maxulp=1)
        else:
            assert np.array_equal(a, b), name
