"""Hostile and broken inputs: every one ends in a short ModelkitError, in the library and in the CLI.

Each case below builds a broken checkpoint (or mapping, or flag) in a temporary folder and
checks both sides with the same expectations:

- library: ``modelkit.load`` (or the generation call) raises the named ModelkitError subclass,
  its message naming the problem;
- CLI: ``modelkit run`` / ``validate`` exits 1, prints nothing on stdout and the library's
  message on stderr as one line (at most five for a tensor report, which points to
  ``modelkit validate``), never a traceback.

Where running code would be the danger (pickles, YAML tags, remote code) the CLI runs in a
subprocess and a marker file proves nothing was executed. Finer-grained cases live next to the
code they test: tests/test_mapping.py (every malformed mapping key, impossible config values),
tests/test_loader.py (the tensor report), tests/test_gguf.py (garbage and truncated GGUF),
tests/test_chat.py (the template sandbox), tests/test_cli_generation.py (flags and prompt files).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from conftest import (DELETE, ROOT, cli_env, copy_fixture, edit_config, fixture_path, load_cached, read_tensors,
                      run_cli, write_tensors)

import modelkit
from modelkit.builtin import mapping_file
from modelkit.cli import main as cli_main
from modelkit.generation.loop import GenerationStats

# ---- building broken checkpoints ---------------------------------------------------------------


def _copy(tmp: Path, name: str = "llama_gqa", weights: bool = True) -> Path:
    return copy_fixture(name, tmp / "m", weights=weights)


def _safetensors_parts(name: str = "llama_gqa") -> tuple[dict[str, Any], bytes]:
    """(header as a dict, tensor data bytes) of a fixture's model.safetensors."""
    raw = (fixture_path(name) / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_safetensors(folder: Path, header: Any, data: bytes, length: int | None = None) -> Path:
    """model.safetensors from a header (dict, or raw bytes) and data; ``length`` overrides the
    8-byte header length field."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def _with_weights(tmp: Path, edit: Callable[[dict[str, np.ndarray]], None], name: str = "llama_gqa") -> Path:
    tensors = read_tensors(fixture_path(name))
    edit(tensors)
    folder = _copy(tmp, name, weights=False)
    write_tensors(folder, tensors)
    return folder


def _mapping(tmp: Path, edit: Callable[[dict], None] | str) -> Path:
    """A copy of the llama mapping with ``edit`` applied (or the given YAML text)."""
    path = tmp / "mapping.yaml"
    if isinstance(edit, str):
        path.write_text(edit, encoding="utf-8")
    else:
        data = yaml.safe_load(mapping_file("llama").read_text(encoding="utf-8"))
        edit(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _shards(tmp: Path, names: tuple[str, str]) -> Path:
    """llama_gqa split over two shard files, the index naming them ``names``."""
    from safetensors.numpy import save_file

    folder = _copy(tmp, weights=False)
    tensors = read_tensors(fixture_path("llama_gqa"))
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[::2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in keys[1::2]}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {k: names[0] for k in keys[::2]} | {k: names[1] for k in keys[1::2]}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


# ---- the cases ---------------------------------------------------------------------------------

@dataclass
class Case:
    """A broken input: ``build(tmp)`` makes it and returns the model path and any extra flags."""

    id: str
    build: Callable[[Path], Path | tuple[Path, dict[str, str]]]
    error: type
    needles: tuple[str, ...]
    report: bool = False  # a tensor report: up to five lines pointing to `modelkit validate`


def _edited(fixture: str, **changes: Any) -> Callable[[Path], Path]:
    """A copy of ``fixture`` with config.json ``changes`` (DELETE removes a key)."""
    def build(tmp: Path) -> Path:
        folder = _copy(tmp, fixture)
        edit_config(folder, **changes)
        return folder
    return build


def _config_text(text: str | bytes) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        folder = _copy(tmp)
        path = folder / "config.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return folder
    return build


def _no_config(tmp: Path) -> Path:
    folder = _copy(tmp)
    (folder / "config.json").unlink()
    return folder


def _safetensors(edit: Callable[[dict[str, Any], bytes], tuple[Any, bytes, int | None]]) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        header, data = _safetensors_parts()
        folder = _copy(tmp, weights=False)
        _write_safetensors(folder, *edit(header, data))
        return folder
    return build


def _out_of_file(header: dict[str, Any], data: bytes) -> tuple[Any, bytes, int | None]:
    entry = header["model.norm.weight"]
    entry["data_offsets"] = [len(data) + 64, len(data) + 64 + 4 * entry["shape"][0]]
    return header, data, None


def _dropped(name: str) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda t: t.pop(name)


def _set_tensor(name: str, value: Callable[[np.ndarray | None], np.ndarray]
                ) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(t: dict[str, np.ndarray]) -> None:
        t[name] = value(t.get(name))
    return edit


def _drop_layer_one_add_extra(t: dict[str, np.ndarray]) -> None:
    for name in [k for k in t if ".layers.1." in k]:
        del t[name]
    t["extra"] = np.zeros(2, np.float32)


def _with_mapping(edit: Callable[[dict], None] | str) -> Callable[[Path], tuple[Path, dict[str, str]]]:
    """llama_gqa loaded with ``--mapping``: the llama mapping edited, or the given YAML text."""
    def build(tmp: Path) -> tuple[Path, dict[str, str]]:
        return fixture_path("llama_gqa"), {"mapping": str(_mapping(tmp, edit))}
    return build


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        *parents, last = path.split("/")
        for p in parents:
            data = data[p]
        data[last] = value
    return edit


# a few lines of YAML that stand for 10**9 values once the aliases are expanded
ALIAS_BOMB = "\n".join(["name: bomb", "description:", "  - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
                       + [f"  - &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, 10)]) + "\n"

CASES = [
    # config.json
    Case("config missing", _no_config, modelkit.ConfigError, ("config.json not found",)),
    Case("config not JSON", _config_text("{\"model_type\": \"llama\","), modelkit.ConfigError, ("not valid JSON",)),
    Case("config not UTF-8", _config_text(b"{\"model_type\": \"ll\xe9ma\"}"), modelkit.ConfigError, ("not UTF-8",)),
    Case("config a list", _config_text("[1, 2]"), modelkit.ConfigError, ("JSON object",)),
    Case("config nested deeply", _config_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
         modelkit.ConfigError, ("nested too deeply",)),
    Case("config 5000-digit number", _config_text('{"model_type": "llama", "vocab_size": ' + "9" * 5000 + "}"),
         modelkit.ConfigError, ("not valid JSON",)),
    Case("hidden size zero", _edited("llama_gqa", hidden_size=0), modelkit.ConfigError, ("hidden_size",)),
    Case("hidden size negative", _edited("llama_gqa", hidden_size=-32), modelkit.ConfigError, ("hidden_size",)),
    Case("heads negative", _edited("llama_gqa", num_attention_heads=-4), modelkit.ConfigError,
         ("num_attention_heads",)),
    Case("layers zero", _edited("llama_gqa", num_hidden_layers=0), modelkit.ConfigError, ("num_hidden_layers",)),
    Case("layers absurd", _edited("llama_gqa", num_hidden_layers=10 ** 12), modelkit.ConfigError, ("not plausible",)),
    Case("vocab a string", _edited("llama_gqa", vocab_size="320"), modelkit.ConfigError, ("vocab_size",)),
    Case("kv heads not dividing heads", _edited("llama_gqa", num_key_value_heads=3), modelkit.ConfigError,
         ("num_key_value_heads",)),
    Case("heads not dividing hidden", _edited("gpt2", n_head=5), modelkit.ConfigError, ("divisible",)),
    Case("positions zero", _edited("gpt2", n_positions=0), modelkit.ConfigError, ("n_positions",)),
    # architectures
    Case("unknown model_type", _edited("llama_gqa", model_type="nonesuch", architectures=["NonesuchForCausalLM"]),
         modelkit.UnknownArchitectureError, ("nonesuch", "known architectures", "llama", "gpt2", "falcon")),
    Case("no model_type", _edited("llama_gqa", model_type=DELETE, architectures=DELETE),
         modelkit.UnknownArchitectureError, ("None", "known architectures", "llama")),
    Case("unknown --arch", lambda tmp: (fixture_path("llama_gqa"), {"arch": "nonesuch"}),
         modelkit.UnknownArchitectureError, ("nonesuch", "known", "llama", "mistral")),
    # tensors (the report)
    Case("missing tensor", lambda tmp: _with_weights(tmp, _dropped("model.layers.1.mlp.up_proj.weight")),
         modelkit.WeightMismatchError, ("1 missing", "model.layers.1.mlp.up_proj.weight"), report=True),
    Case("unexpected tensor", lambda tmp: _with_weights(tmp, _set_tensor("extra", lambda _: np.zeros(3, np.float32))),
         modelkit.WeightMismatchError, ("1 unexpected", "extra"), report=True),
    Case("mis-shaped tensor", lambda tmp: _with_weights(tmp, _set_tensor("model.norm.weight",
                                                                         lambda w: np.ones(31, np.float32))),
         modelkit.WeightMismatchError, ("1 mis-shaped", "model.norm.weight", "[31]", "[32]"), report=True),
    Case("integer tensor", lambda tmp: _with_weights(tmp, _set_tensor("model.norm.weight",
                                                                      lambda w: w.astype(np.int64))),
         modelkit.WeightMismatchError, ("1 mis-typed", "model.norm.weight", "I64"), report=True),
    Case("many bad tensors", lambda tmp: _with_weights(tmp, _drop_layer_one_add_extra),
         modelkit.WeightMismatchError, ("9 missing", "1 unexpected", "and 7 more"), report=True),
    # safetensors files
    Case("safetensors truncated", _safetensors(lambda h, d: (h, d[: len(d) // 2], None)),
         modelkit.CheckpointError, ("model.safetensors",)),
    Case("safetensors header truncated", lambda tmp: _truncated_file(tmp, 100), modelkit.CheckpointError,
         ("model.safetensors",)),
    Case("safetensors empty", lambda tmp: _truncated_file(tmp, 0), modelkit.CheckpointError, ("model.safetensors",)),
    Case("header length absurd", _safetensors(lambda h, d: (h, d, 2 ** 63)), modelkit.CheckpointError,
         ("model.safetensors",)),
    Case("header length past the end", _safetensors(lambda h, d: (h, d, 8 * len(d))), modelkit.CheckpointError,
         ("model.safetensors",)),
    Case("offsets outside the file", _safetensors(_out_of_file), modelkit.CheckpointError, ("model.safetensors",)),
    Case("header not JSON", _safetensors(lambda h, d: (b"{not json at all}", d, None)), modelkit.CheckpointError,
         ("model.safetensors",)),
    Case("header a list", _safetensors(lambda h, d: (b"[1, 2, 3]   ", d, None)), modelkit.CheckpointError,
         ("model.safetensors",)),
    Case("float8 tensor", lambda tmp: _float8_norm(tmp), modelkit.WeightMismatchError,
         ("1 mis-typed", "model.norm.weight", "F8_E4M3"), report=True),
    # shard index
    Case("shard outside the folder", lambda tmp: _shards(tmp, ("model-00001-of-00002.safetensors",
                                                               "../outside.safetensors")),
         modelkit.CheckpointError, ("../outside.safetensors", "refusing")),
    Case("shard absolute path", lambda tmp: _shards(tmp, ("/etc/passwd", "model-00002-of-00002.safetensors")),
         modelkit.CheckpointError, ("/etc/passwd", "refusing")),
    Case("shard missing", lambda tmp: _shards(tmp, ("model-00001-of-00002.safetensors",
                                                    "model-00003-of-00002.safetensors")),
         modelkit.CheckpointError, ("model-00003-of-00002.safetensors", "does not exist")),
    Case("shard index not JSON", lambda tmp: _broken_index(tmp, "{weight_map"), modelkit.CheckpointError,
         ("shard index",)),
    Case("shard index without weight_map", lambda tmp: _broken_index(tmp, '{"metadata": {}}'),
         modelkit.CheckpointError, ("weight_map",)),
    # pickles (see also the subprocess tests below: nothing is ever unpickled)
    Case("pickle only", lambda tmp: _pickle_folder(tmp, "pytorch_model.bin"), modelkit.CheckpointError,
         ("pytorch_model.bin", "never unpickles", "safetensors")),
    Case("pt only", lambda tmp: _pickle_folder(tmp, "model.pt"), modelkit.CheckpointError,
         ("model.pt", "never unpickles", "safetensors")),
    Case("pickle file as --model", lambda tmp: _pickle_folder(tmp, "pytorch_model.bin") / "pytorch_model.bin",
         modelkit.CheckpointError, ("never unpickles", "safetensors")),
    Case("safetensors file as --model", lambda tmp: fixture_path("llama_gqa") / "model.safetensors",
         modelkit.CheckpointError, ("no weight source", "the folder")),
    Case("no such folder", lambda tmp: tmp / "absent", modelkit.CheckpointError, ("no such file or folder",)),
    # mappings
    Case("mapping not YAML", _with_mapping("name: x\nmatch: {model_type: [llama\n"), modelkit.MappingError,
         ("mapping.yaml", "not valid YAML", "line")),
    Case("mapping unknown transform", _with_mapping(_set("weights/layers.{i}.attn.q.weight",
                                                                  {"from": "model.layers.{i}.self_attn.q_proj.weight",
                                                                   "transform": "nonesuch"})),
         modelkit.MappingError, ("unknown transform 'nonesuch'", "known transforms")),
    Case("mapping unknown block kind", _with_mapping(_set("layers/blocks/mlp/kind", "nonesuch")),
         modelkit.MappingError, ("unknown block kind 'nonesuch'", "known kinds", "gated_mlp")),
    Case("mapping bad placeholder", _with_mapping(_set("weights/layers.{i}.attn_norm.weight",
                                                                "model.layers.{layer}.input_layernorm.weight")),
         modelkit.MappingError, ("placeholder '{layer}'",)),
    Case("mapping unhashable type", _with_mapping(_set("config/hidden_size/type", ["int"])),
         modelkit.MappingError, ("config.hidden_size.type",)),
    Case("mapping alias bomb", _with_mapping(ALIAS_BOMB), modelkit.MappingError, ("aliases",)),
    Case("mapping string formatting", _with_mapping(_set("model/tie_head", "$'%0999999999d' % 1")),
         modelkit.ConfigError, ("model.tie_head", "formatting")),
    Case("mapping missing file", lambda tmp: (fixture_path("llama_gqa"), {"mapping": str(tmp / "absent.yaml")}),
         modelkit.MappingError, ("mapping file not found",)),
]


def _truncated_file(tmp: Path, keep: int) -> Path:
    folder = _copy(tmp)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:keep])
    return folder


def _float8_norm(tmp: Path) -> Path:
    """llama_gqa with model.norm.weight stored as F8_E4M3 (a float type modelkit does not read)."""
    tensors: dict[str, tuple[str, list[int], bytes]] = {}
    for name, array in read_tensors(fixture_path("llama_gqa")).items():
        tensors[name] = ("F32", list(array.shape), array.astype("<f4").tobytes())
    tensors["model.norm.weight"] = ("F8_E4M3", [32], bytes(range(32)))
    header, data = {}, b""
    for name, (dtype, shape, raw) in sorted(tensors.items()):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    folder = _copy(tmp, weights=False)
    _write_safetensors(folder, header, data)
    return folder


def _broken_index(tmp: Path, text: str) -> Path:
    folder = _shards(tmp, ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors.index.json").write_text(text)
    return folder


class _Payload:
    """Unpickling this creates the file ``MARKER`` (it calls open(MARKER, "w"))."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _evil_pickle(marker: Path) -> bytes:
    data = pickle.dumps(_Payload(marker))
    assert not marker.exists()
    return data


def _pickle_folder(tmp: Path, name: str) -> Path:
    folder = _copy(tmp, weights=False)
    (folder / name).write_bytes(_evil_pickle(tmp / "UNPICKLED"))
    return folder


def _setup(case: Case, tmp: Path) -> tuple[Path, dict[str, str]]:
    built = case.build(tmp)
    return built if isinstance(built, tuple) else (built, {})


def _flags(extra: dict[str, str]) -> list[str]:
    return [a for key, value in extra.items() for a in (f"--{key}", value)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_library_error(tmp_path: Path, case: Case) -> None:
    path, extra = _setup(case, tmp_path)
    with pytest.raises(case.error) as info:
        modelkit.load(path, **extra)
    message = str(info.value)
    for needle in case.needles:
        assert needle in message, message
    lines = message.splitlines()
    if case.report:
        assert 1 < len(lines) <= 5 and "modelkit validate" in lines[-1], message
    else:
        assert len(lines) == 1, message
    assert not (tmp_path / "UNPICKLED").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture, case: Case) -> None:
    path, extra = _setup(case, tmp_path)
    with pytest.raises(case.error) as info:
        modelkit.load(path, **extra)
    code = cli_main(["run", "--model", str(path), *_flags(extra), "--prompt", "hi", "--max-tokens", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "", (out, err)
    assert err.startswith("modelkit: error: ") and "Traceback" not in err, err
    lines = err.splitlines()
    if case.report:
        assert 1 < len(lines) <= 5 and "modelkit validate" in lines[-1], err
    else:
        assert len(lines) == 1, err
    # the CLI prints the library's message
    assert lines[0] == "modelkit: error: " + str(info.value).splitlines()[0]
    # validate: the same one-line error, or the full report on stdout
    code = cli_main(["validate", "--model", str(path), *_flags(extra)])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    if case.report:
        assert set(info.value.report.lines()) <= set(out.splitlines()), out
    else:
        assert out == "" and err == lines[0] + "\n", (out, err)
    assert not (tmp_path / "UNPICKLED").exists()


def test_validate_prints_every_tensor_of_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def edit(t: dict[str, np.ndarray]) -> None:
        t.pop("model.layers.1.mlp.up_proj.weight")
        t["model.norm.weight"] = t["model.norm.weight"].astype(np.int32)
        t["model.layers.0.input_layernorm.weight"] = np.ones(31, np.float32)
        t["extra"] = np.zeros(2, np.float32)

    folder = _with_weights(tmp_path, edit)
    assert cli_main(["validate", "--model", str(folder)]) == 1
    out, err = capsys.readouterr()
    report = [line.split()[:2] for line in out.splitlines()[2:]]
    assert report == [["missing", "model.layers.1.mlp.up_proj.weight"], ["unexpected", "extra"],
                      ["mis-shaped", "model.layers.0.input_layernorm.weight"], ["mis-typed", "model.norm.weight"]]
    assert err.strip() == "1 missing, 1 unexpected, 1 mis-shaped, 1 mis-typed"
    with pytest.raises(modelkit.WeightMismatchError):  # non-strict loading still refuses integers
        modelkit.load(_with_weights(tmp_path / "b", lambda t: t.update(
            {"model.norm.weight": t["model.norm.weight"].astype(np.int64)})), strict=False)


# ---- nothing from a model folder is executed ----------------------------------------------------

def _assert_cli_refuses(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelkit: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "model.ckpt"])
def test_pickle_weights_are_never_unpickled(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "UNPICKLED"
    folder = _copy(tmp_path, weights=False)
    (folder / name).write_bytes(_evil_pickle(marker))
    # the payload works: unpickling it is what creates the marker
    pickle.loads((folder / name).read_bytes()).close()  # noqa: S301 (our own payload, to prove it)
    assert marker.exists()
    marker.unlink()
    for model in (folder, folder / name):
        line = _assert_cli_refuses(run_cli("run", "--model", model, "--prompt", "hi"), name, "never unpickles")
        assert "Convert them to safetensors elsewhere" in line
        _assert_cli_refuses(run_cli("validate", "--model", model), "never unpickles")
        with pytest.raises(modelkit.CheckpointError, match="never unpickles"):
            modelkit.load(model)
    assert not marker.exists()


def test_pickle_beside_safetensors_is_ignored(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    folder = _copy(tmp_path)
    (folder / "pytorch_model.bin").write_bytes(_evil_pickle(marker))
    (folder / "model.safetensors").rename(folder / "model-renamed.safetensors")
    proc = run_cli("run", "--model", folder, "--prompt", "hi", "--max-tokens", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert modelkit.load(folder).parameter_count() == load_cached("llama_gqa").parameter_count()
    assert not marker.exists()


def test_pickle_named_safetensors_is_a_corrupt_file(tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    folder = _copy(tmp_path, weights=False)
    (folder / "model.safetensors").write_bytes(_evil_pickle(marker))
    _assert_cli_refuses(run_cli("run", "--model", folder, "--prompt", "hi"), "model.safetensors")
    with pytest.raises(modelkit.CheckpointError, match="model.safetensors"):
        modelkit.load(folder)
    assert not marker.exists()


def test_remote_code_is_never_imported(tmp_path: Path) -> None:
    """transformers' trust_remote_code: auto_map names Python files in the folder. modelkit
    neither imports them nor needs them; the model loads through its mapping."""
    marker = tmp_path / "IMPORTED"
    folder = _copy(tmp_path)
    code = f"open({str(marker)!r}, 'w').close()\nclass EvilForCausalLM: pass\n"
    for module in ("modeling_evil.py", "configuration_evil.py", "tokenization_evil.py", "__init__.py"):
        (folder / module).write_text(code)
    edit_config(folder, auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                  "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    proc = run_cli("run", "--model", folder, "--prompt", "hi", "--max-tokens", "2", "-q", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert modelkit.load(folder).name == "llama"
    assert not marker.exists()


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "EXECUTED"
    text = mapping_file("llama").read_text(encoding="utf-8").replace(
        "description: Llama family (LlamaForCausalLM)",
        f"description: !!python/object/apply:os.system ['touch {marker}']")
    path = _mapping(tmp_path, text)
    _assert_cli_refuses(run_cli("validate", "--model", fixture_path("llama_gqa"), "--mapping", path),
                        "mapping.yaml", "not valid YAML")
    with pytest.raises(modelkit.MappingError, match="not valid YAML"):
        modelkit.load(fixture_path("llama_gqa"), mapping=path)
    assert not marker.exists()


def test_truncated_safetensors_in_a_subprocess(tmp_path: Path) -> None:
    """A truncated file must fail cleanly, never crash the process (memory maps raise SIGBUS on
    reads past the end of a file): the exit code is 1, not a signal."""
    folder = _truncated_file(tmp_path, (fixture_path("llama_gqa") / "model.safetensors").stat().st_size - 4)
    for command in (["run", "--prompt", "hi"], ["validate", "--values"]):
        proc = run_cli(command[0], "--model", folder, *command[1:])
        _assert_cli_refuses(proc, "model.safetensors")


# ---- Hugging Face cache layout ------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_sharded_checkpoint_in_the_hub_cache_layout_loads(tmp_path: Path) -> None:
    """The hub cache links every file of a snapshot to a blob outside the folder: the shard
    check looks at the names in the index, not at where links point."""
    folder = _shards(tmp_path, ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for f in list(folder.iterdir()):
        blob = blobs / f"{f.name}.blob"
        f.rename(blob)
        f.symlink_to(os.path.relpath(blob, folder))
    ids = [1, 2, 3, 4]
    np.testing.assert_array_equal(modelkit.load(folder).forward(ids), load_cached("llama_gqa").forward(ids))


# ---- GGUF through load and run -------------------------------------------------------------------

def _tiny_gguf(path: Path) -> Path:
    from gguf_files import fixture_as_gguf

    return fixture_as_gguf("llama_gqa", path)


@pytest.mark.parametrize("kind", ["garbage", "magic only", "truncated header", "truncated data"])
def test_broken_gguf_through_load_and_run(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "model.gguf"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    else:
        whole = _tiny_gguf(tmp_path / "whole.gguf").read_bytes()
        keep = {"magic only": 4, "truncated header": 2000, "truncated data": len(whole) - 100}[kind]
        path.write_bytes(whole[:keep])
    with pytest.raises(modelkit.CheckpointError) as info:
        modelkit.load(path)
    assert "model.gguf" in str(info.value) and "\n" not in str(info.value)
    _assert_cli_refuses(run_cli("run", "--model", path, "--prompt", "hi"), "model.gguf")


def test_intact_gguf_runs(tmp_path: Path) -> None:
    path = _tiny_gguf(tmp_path / "model.gguf")
    proc = run_cli("run", "--model", path, "--prompt", "hi", "--max-tokens", "2", "-q")
    assert proc.returncode == 0, proc.stderr


# ---- chat templates ------------------------------------------------------------------------------

def test_chat_command_refuses_an_escaping_template_before_reading_input(tmp_path: Path) -> None:
    """`modelkit chat` renders a first turn before reading anything, so a template stopped by the
    sandbox ends the command (exit 1); `run --chat` is tested in tests/test_chat.py."""
    from chat_models import chat_model_folder

    folder = chat_model_folder(tmp_path, "{{ messages.__class__.__mro__[1].__subclasses__() }}")
    proc = subprocess.run([sys.executable, "-m", "modelkit", "chat", "--model", str(folder)], input="hi\n",
                          capture_output=True, text=True, env=cli_env(), cwd=ROOT, timeout=120)
    _assert_cli_refuses(proc, "sandbox")


# ---- generation options --------------------------------------------------------------------------

GENERATION_FLAGS = [
    (["--temperature", "-0.5"], "--temperature must be >= 0"),
    (["--temperature", "nan"], "--temperature must be >= 0"),
    (["--temperature", "inf"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "nan"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0"),
    (["--min-p", "1.5"], "--min-p must be in [0, 1]"),
    (["--repetition-penalty", "-1"], "--repetition-penalty must be > 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--max-tokens", "-5"], "--max-tokens must be at least 1"),
]


@pytest.mark.parametrize("flags, needle", GENERATION_FLAGS, ids=[" ".join(f) for f, _ in GENERATION_FLAGS])
def test_generation_flags_out_of_range(capsys: pytest.CaptureFixture, flags: list[str], needle: str) -> None:
    code = cli_main(["run", "--model", str(fixture_path("llama_gqa")), "--prompt", "hi", *flags])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("modelkit: error: ") and len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("kwargs, needle", [
    ({"temperature": -0.5}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"), ({"top_k": float("inf")}, "top_k"), ({"min_p": -0.1}, "min_p"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"seed": -1}, "seed"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -1}, "max_new_tokens"),
])
def test_generation_options_out_of_range(kwargs: dict[str, Any], needle: str) -> None:
    model = load_cached("llama_gqa")
    with pytest.raises(modelkit.GenerationError, match=needle):
        model.generate([1, 2], **kwargs)
    with pytest.raises(modelkit.GenerationError, match=needle):
        next(iter(model.stream([1, 2], **kwargs)))


def test_generation_config_with_non_finite_values(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "generation_config.json").write_text('{"do_sample": true, "top_k": Infinity, "temperature": 0.7}')
    with pytest.raises(modelkit.GenerationError, match="top_k must be an integer"):
        modelkit.load(folder).generate([1, 2])
    code = cli_main(["run", "--model", str(folder), "--prompt", "hi"])
    assert code == 1


def test_tiny_temperature_is_still_the_argmax() -> None:
    from modelkit.generation.sampling import Sampler

    logits = np.random.default_rng(0).standard_normal(320).astype(np.float32) * 30
    with np.errstate(invalid="raise"), warnings.catch_warnings():  # no inf - inf = NaN on the way
        warnings.simplefilter("error")  # nor a warning printed by the CLI
        picks = {Sampler(temperature=1e-37, seed=s)(logits) for s in range(5)}
    assert picks == {int(np.argmax(logits))}


# ---- prompts --------------------------------------------------------------------------------------

def test_empty_prompt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = load_cached("llama_gqa")
    with pytest.raises(modelkit.GenerationError, match="empty"):
        model.generate([])
    with pytest.raises(modelkit.GenerationError, match="empty"):
        model.stream([])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")  # the one trailing newline is dropped: nothing is left
    assert cli_main(["run", "--model", str(fixture_path("llama_gqa")), "--prompt-file", str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelkit: error: ") and "no tokens" in err and len(err.splitlines()) == 1


def test_prompt_longer_than_learned_positions(capsys: pytest.CaptureFixture) -> None:
    """GPT-2 has n_positions learned positions (64 in the fixture): a longer prompt is an error
    before any compute, in generate and in the CLI."""
    model = load_cached("gpt2")
    assert model.pos_embed.shape[0] == 64
    with pytest.raises(modelkit.GenerationError, match="65 tokens; this model has 64 learned positions"):
        model.generate(list(range(1, 66)))
    with pytest.raises(modelkit.GenerationError, match="64 learned positions"):
        model.forward(list(range(1, 66)))
    cache = model.make_cache()
    model.forward(list(range(1, 41)), cache)
    with pytest.raises(modelkit.GenerationError, match="70 tokens"):
        model.generate(list(range(1, 31)), cache=cache)  # 40 cached + 30 new
    assert cli_main(["run", "--model", str(fixture_path("gpt2")), "--prompt", "hello " * 40]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "learned positions" in err


def test_generation_stops_when_learned_positions_are_full(capsys: pytest.CaptureFixture) -> None:
    model = load_cached("gpt2")
    stats = GenerationStats()
    new = model.generate(list(range(1, 61)), max_new_tokens=50, stats=stats, stop_ids=[])
    # 60 prompt tokens + 4 fed back fill the 64 positions; the 5th token is predicted from the last one
    assert len(new) == 5 and stats.stop_reason == "context"
    ids = list(range(1, 61)) + new[:4]
    assert new[4] == int(np.argmax(model.forward(ids)[-1]))
    prompt = model.tokenizer.decode(list(range(1, 61)))
    assert len(model.tokenizer.encode(prompt)) <= 64
    assert cli_main(["run", "--model", str(fixture_path("gpt2")), "--prompt", prompt, "-n", "100"]) == 0
    assert "tokens (context)]" in capsys.readouterr().err


def test_rotary_model_runs_past_max_position_embeddings() -> None:
    """Rotary models have no hard limit: documented behaviour is to keep going (finite logits)."""
    model = load_cached("llama_gqa")
    limit = model.config["max_position_embeddings"]
    ids = np.random.default_rng(0).integers(0, model.vocab_size, limit + 40)
    logits = model.forward(ids)
    assert logits.shape == (limit + 40, model.vocab_size) and np.isfinite(logits).all()
    assert len(model.generate(list(ids), max_new_tokens=3, stop_ids=[])) >= 1


def test_undecodable_prompt_bytes(tmp_path: Path) -> None:
    """Bytes that are not UTF-8: a prompt file (see also tests/test_cli_generation.py), the
    --prompt and --system arguments, and lines typed into `modelkit chat`."""
    from chat_models import chat_model_folder

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    llama = fixture_path("llama_gqa")
    _assert_cli_refuses(run_cli("run", "--model", llama, "--prompt-file", bad), "latin1.txt", "not UTF-8", "0xe9")
    # arguments: Python hands undecodable argv bytes over as lone surrogates
    argv = [sys.executable, "-m", "modelkit", "run", "--model", str(llama), "--prompt"]
    proc = subprocess.run([os.fsencode(a) for a in argv] + [b"caf\xe9"], capture_output=True, text=True,
                          env=cli_env(), cwd=ROOT, timeout=120)
    _assert_cli_refuses(proc, "--prompt", "not UTF-8", "0xe9")
    chat = chat_model_folder(tmp_path)
    argv = [sys.executable, "-m", "modelkit", "run", "--model", str(chat), "--chat", "--prompt", "hi", "--system"]
    proc = subprocess.run([os.fsencode(a) for a in argv] + [b"\xff"], capture_output=True, text=True,
                          env=cli_env(), cwd=ROOT, timeout=120)
    _assert_cli_refuses(proc, "--system", "not UTF-8")
    for env in (cli_env(), cli_env(PYTHONIOENCODING="", LC_ALL="C", PYTHONUTF8="1")):
        proc = subprocess.run([sys.executable, "-m", "modelkit", "chat", "--model", str(chat), "-n", "2"],
                              input=b"\xff\xfe\n", capture_output=True, env=env, cwd=ROOT, timeout=120)
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.decode().strip() == "modelkit: error: standard input: not UTF-8 text (byte 0xff)"
    # the library: text with lone surrogates cannot be encoded
    with pytest.raises(modelkit.TokenizerError, match="not a valid Unicode string"):
        load_cached("llama_gqa").tokenizer.encode("caf\udce9")


# ---- NaN and inf in weights ---------------------------------------------------------------------

def _nan_folder(tmp: Path) -> Path:
    def edit(t: dict[str, np.ndarray]) -> None:
        w = t["model.layers.0.mlp.up_proj.weight"].copy()
        w[0, :3] = [np.nan, np.inf, -np.inf]
        t["model.layers.0.mlp.up_proj.weight"] = w
    return _with_weights(tmp, edit)


def test_nan_weights_are_reported_by_validate_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _nan_folder(tmp_path)
    assert cli_main(["validate", "--model", str(folder)]) == 0  # shapes fit: planning reads no data
    capsys.readouterr()
    assert cli_main(["validate", "--model", str(folder), "--values"]) == 1
    out, err = capsys.readouterr()
    assert "non-finite  model.layers.0.mlp.up_proj.weight  (1 NaN, 2 infinite of 2048 values)" in out
    assert err.strip() == "0 missing, 0 unexpected, 0 mis-shaped, 1 with NaN or infinite values"
    assert cli_main(["validate", "--model", str(fixture_path("gh_hybrid")), "--values"]) == 0
    assert "every value is finite" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [[], ["--temperature", "0.8", "--top-p", "0.9"], ["--repetition-penalty", "1.2"]],
                         ids=["greedy", "sampling", "penalty"])
def test_nan_logits_stop_generation(tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str]) -> None:
    """NaN weights load (scanning every value would slow loading), but the first NaN logits
    stop generation with an error instead of producing token 0 forever."""
    folder = _nan_folder(tmp_path)
    model = modelkit.load(folder)
    assert np.isnan(model.forward([1, 2, 3])).any()
    kwargs = {"temperature": 0.8, "top_p": 0.9} if flags[:1] == ["--temperature"] else \
        {"repetition_penalty": 1.2} if flags else {}
    with pytest.raises(modelkit.GenerationError, match="NaN or infinite.*validate --values"):
        model.generate([1, 2, 3], **kwargs)
    assert cli_main(["run", "--model", str(folder), "--prompt", "hi", *flags]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == "" and len(err.splitlines()) == 1 and "NaN or infinite" in err


# ---- planning allocates nothing a config value alone decides -----------------------------------

@pytest.mark.parametrize("changes,needle", [
    ({"head_dim": 2 ** 31, "num_hidden_layers": 100}, "head_dim must be at most 2,147,483,647"),
    ({"head_dim": 2 ** 40}, "head_dim must be at most"),
    ({"hidden_size": 2 ** 40, "intermediate_size": 2 ** 40}, "hidden_size and vocab_size must be at most"),
    ({"num_attention_heads": 2 ** 30, "num_key_value_heads": 2 ** 30}, "mis-shaped"),
    ({"head_dim": 2 ** 31 - 2, "num_hidden_layers": 100}, "mis-shaped"),
])
def test_validate_of_a_tiny_config_with_huge_sizes_stays_small(tmp_path: Path, changes: dict, needle: str) -> None:
    """`validate` reads no tensor data: a 700-byte config.json with huge sizes gets a report of
    mis-shaped tensors (or, past 2**31 - 1, the bound's one-line error), in a process capped at
    1.5 GB of address space."""
    import resource

    folder = copy_fixture("llama_gqa", tmp_path / "m")
    edit_config(folder, **changes)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "modelkit", "validate", "--model", str(folder)],
                          capture_output=True, text=True, env=cli_env(), timeout=120, preexec_fn=cap)
    assert proc.returncode == 1, proc.stderr
    assert needle in proc.stdout + proc.stderr and "out of memory" not in proc.stderr, (proc.stdout, proc.stderr)
