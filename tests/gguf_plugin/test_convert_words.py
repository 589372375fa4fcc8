"""What `modelkit convert` cannot write says so in plain words, in both directions: what the
tensor is, how it would have to be stored, its name as the user knows it; never the mappings'
transform names or canonical paths. A GGUF file of an architecture gguf-py has no tensor names
for is one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import FIXTURES, run_cli
from gguf_files import assert_plain

import modelkit
from modelkit.errors import CheckpointError
from modelkit_gguf.convert import convert

GGUF = FIXTURES / "gguf"
def _divisors_not_llama3(tmp_path: Path) -> Path:
    """llama.cpp's llama3_rope_headdim file with its rope_freqs.weight rewritten to divisors
    that follow no Llama 3 scaling."""
    path = tmp_path / "odd_rope.gguf"
    path.write_bytes((GGUF / "llama3_rope_headdim.gguf").read_bytes())
    reader = gguf.GGUFReader(str(path), "r+")
    (freqs,) = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    freqs.data[:] = np.array([1.0, 5.0, 2.0, 7.0, 3.0, 8.0, 1.5, 4.0], np.float32)[: freqs.data.size]
    reader.data.flush()
    del reader
    return path


def test_what_a_folder_cannot_hold_is_said_in_words(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        convert(_divisors_not_llama3(tmp_path), tmp_path / "hf")
    message = str(info.value)
    assert message.startswith("cannot convert this GGUF file to a Hugging Face folder")
    assert "follows no Llama 3 rope scaling" in message and "\n" not in message
    assert_plain(message)
    assert not (tmp_path / "hf").exists()


def test_the_cli_says_it_in_one_line(tmp_path: Path) -> None:
    proc = run_cli("convert", _divisors_not_llama3(tmp_path), tmp_path / "hf")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "follows no Llama 3 rope scaling" in proc.stderr


def _gguf_of(arch: str, path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("command", ["validate", "convert"])
def test_an_architecture_without_tensor_names_is_one_line(tmp_path: Path, command: str) -> None:
    path = _gguf_of("nosucharch", tmp_path / "x.gguf")
    args = ["--model", path] if command == "validate" else [path, tmp_path / "hf"]
    proc = run_cli(command, *args)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "metadata key 'general.architecture' is 'nosucharch'" in proc.stderr
    assert "has no tensor names for" in proc.stderr and "llama, " in proc.stderr


def test_an_architecture_gguf_py_knows_still_reaches_a_users_mapping(tmp_path: Path) -> None:
    # bert has tensor names in gguf-py but no modelkit mapping: the usual error, with its fix
    path = _gguf_of("bert", tmp_path / "x.gguf")
    with pytest.raises(modelkit.UnknownArchitectureError, match="--mapping FILE"):
        modelkit.inspect(path)
