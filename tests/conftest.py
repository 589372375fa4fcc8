"""Shared helpers for the test suite: golden fixtures, checkpoint surgery and the CLI.

Everything here runs without torch and without the network. Models loaded from the golden
fixtures are cached per session (loading is read-only; tests must not mutate a cached model).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

# one weight layout for the whole run, and for every CLI or server process it starts: the
# default measures the machine once per process, and two processes on a noisy machine could
# lay the same weights out differently (logits equal to 1e-6, a near-tie's argmax not always);
# tests/nn/test_weight_layout.py covers the measurement and both layouts
os.environ.setdefault("MODELKIT_PRODUCT_LAYOUT", "rows")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# golden fixture -> the shipped architecture that must serve it
SHIPPED_FIXTURES = {
    "gpt2": "gpt2",
    "llama_gqa": "llama",
    "llama_mqa_tied": "llama",
    "llama_biases": "llama",
    "llama3_rope_headdim": "llama",
    "llama_linear_rope": "llama",
    "llama_legacy_config": "llama",
    "mistral_window": "mistral",
    "falcon_7b": "falcon",
    "falcon_40b": "falcon",
    "falcon_rw": "falcon",
    "granite3": "granite3",
    "qwen2": "qwen2",
    "qwen2_window": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "olmo": "olmo",
    "olmo2": "olmo2",
    "starcoder2": "starcoder2",
    "gpt_neox": "gpt_neox",
    "phi": "phi",
    "stablelm": "stablelm",
    "smollm3": "smollm3",
    "smollm3_window": "smollm3",
    "opt": "opt",
    "gptj": "gptj",
    "cohere": "cohere",
    "cohere2": "cohere2",
    "stablelm_parallel_qknorm": "stablelm",
    "phi_qk_layernorm": "phi",
    "opt_350m_like": "opt",
    "gpt_bigcode": "gpt_bigcode",
    "gpt_bigcode_mha": "gpt_bigcode",
    "bloom": "bloom",
    "bloom_tp_exact": "bloom",
    "mixtral": "mixtral",
    "mixtral_fused": "mixtral",
    "qwen3_moe": "qwen3_moe",
    "granitemoe": "granitemoe",
}

# logits tolerance against the transformers reference
ATOL = 1e-4


def mapping_source(arch: str) -> Any:
    """The mapping file a registered architecture comes from (a core or plugin resource)."""
    from modelkit.plugins import registry

    return registry().architectures[arch].mapping


def mapping_data(arch: str) -> dict[str, Any]:
    """A registered architecture's YAML data, merged over the mappings it extends."""
    from modelkit.plugins import registry
    from modelkit.schema.read import merged_data

    archs = registry().architectures
    data, _ = merged_data(mapping_source(arch), lambda name: archs[name].mapping if name in archs else None)
    return data


def fixture_path(name: str) -> Path:
    """The folder of a golden fixture (tests/fixtures/NAME)."""
    path = FIXTURES / name
    assert path.is_dir(), f"missing golden fixture {path}"
    return path


def reference(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids [T] int64, logits [T, vocab] float32) from a fixture's ref.npz."""
    with np.load(fixture_path(name) / "ref.npz") as ref:
        return ref["ids"].copy(), ref["logits"].copy()


def copy_fixture(name: str, dest: Path, *, weights: bool = True) -> Path:
    """Copy a fixture folder to ``dest`` (created); without ``weights`` skip *.safetensors."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in fixture_path(name).iterdir():
        if f.is_file() and (weights or f.suffix != ".safetensors"):
            shutil.copy2(f, dest / f.name)
    return dest


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a folder's *.safetensors files, in their stored dtype."""
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def write_tensors(folder: Path, tensors: dict[str, np.ndarray], filename: str = "model.safetensors") -> Path:
    """Write ``tensors`` as one safetensors file in ``folder``, replacing the existing weights."""
    from safetensors.numpy import save_file

    for f in folder.glob("*.safetensors"):
        f.unlink()
    index = folder / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    path = folder / filename
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def rename_tensors(folder: Path, renames: dict[str, str]) -> None:
    """Rewrite the folder's model.safetensors with each name's substrings replaced (old -> new)."""
    tensors = {}
    for name, t in read_tensors(folder).items():
        for old, new in renames.items():
            name = name.replace(old, new)
        tensors[name] = t
    write_tensors(folder, tensors)


DELETE = object()  # edit_config(key=DELETE) removes the key


def edit_config(folder: Path, **changes: Any) -> dict[str, Any]:
    """Update config.json in ``folder``; a value of ``DELETE`` removes the key."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DELETE:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg, indent=2))
    return cfg



def cli_env(**extra: str) -> dict[str, str]:
    """Environment for CLI subprocesses: offline, no user mappings unless given."""
    env = {k: v for k, v in os.environ.items() if k != "MODELKIT_MAPPINGS"}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"})
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m modelkit ARGS`` in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "modelkit", *map(str, args)], capture_output=True,
                          text=True, env=env if env is not None else cli_env(), cwd=cwd or ROOT,
                          timeout=timeout)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference of two arrays of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


_model_cache: dict[str, Any] = {}


def load_cached(name: str) -> Any:
    """A golden fixture's model, loaded once per session (do not mutate it)."""
    if name not in _model_cache:
        import modelkit

        _model_cache[name] = modelkit.load(fixture_path(name))
    return _model_cache[name]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # a developer's own mapping folder must not change what the tests see; never the network
    monkeypatch.delenv("MODELKIT_MAPPINGS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def load_fixture() -> Callable[[str], Any]:
    """``load_fixture(name)`` -> the session-cached model of a golden fixture."""
    return load_cached
