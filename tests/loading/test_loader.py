"""Loading checkpoints: single-file and sharded safetensors, F32/F16/BF16, tied heads, and the
strict report of missing, unexpected and mis-shaped tensors."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from conftest import (ATOL, copy_fixture, edit_config, fixture_path, load_cached, max_abs, read_tensors,
                      reference, write_tensors)

import modelkit
from modelkit.cli import main as cli_main


def test_library_signatures() -> None:
    params = list(inspect.signature(modelkit.load).parameters.values())
    assert [p.name for p in params[:2]] == ["path", "arch"] and params[1].default is None
    from modelkit.model import Model

    fwd = inspect.signature(Model.forward).parameters
    assert list(fwd)[1:] == ["ids", "cache", "last_only", "observer"]
    assert fwd["cache"].default is None and fwd["last_only"].default is False and fwd["observer"].default is None
    gen = inspect.signature(Model.generate).parameters
    assert list(gen)[1:4] == ["prompt_ids", "max_new_tokens", "temperature"]
    # temperature None means "generation_config.json's default", which is greedy unless do_sample
    assert gen["max_new_tokens"].default == 16 and gen["temperature"].default in (0.0, None)
    assert {"gpt2", "llama", "mistral", "falcon", "granite3"} <= set(modelkit.architectures())
    assert modelkit.architectures() == sorted(modelkit.architectures())


def test_load_accepts_str_and_path_and_arch() -> None:
    ids, ref = reference("llama_gqa")
    by_str = modelkit.load(str(fixture_path("llama_gqa")))
    by_arch = modelkit.load(fixture_path("llama_gqa"), arch="llama")
    assert max_abs(by_str.forward(ids), ref) < ATOL
    assert max_abs(by_arch.forward(ids), ref) < ATOL
    with pytest.raises(modelkit.UnknownArchitectureError, match="no_such_arch"):
        modelkit.load(fixture_path("llama_gqa"), arch="no_such_arch")


def test_missing_folder_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(modelkit.CheckpointError, match="no such file or folder"):
        modelkit.load(tmp_path / "absent")


# ---- sharded checkpoints ----------------------------------------------------------------------

def _shard(folder: Path, tensors: dict[str, np.ndarray], n: int) -> dict[str, str]:
    from safetensors.numpy import save_file

    for f in folder.glob("*.safetensors"):
        f.unlink()
    names = sorted(tensors)
    weight_map = {}
    for k in range(n):
        part = names[k::n]
        file = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file({name: tensors[name] for name in part}, str(folder / file))
        weight_map.update({name: file for name in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return weight_map


@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "falcon_40b"])
def test_sharded_equals_single_file(tmp_path: Path, name: str) -> None:
    folder = copy_fixture(name, tmp_path / "m")
    _shard(folder, read_tensors(fixture_path(name)), 3)
    assert len(list(folder.glob("*.safetensors"))) == 3
    ids, ref = reference(name)
    sharded = modelkit.load(folder).forward(ids)
    assert max_abs(sharded, load_cached(name).forward(ids)) == 0.0
    assert max_abs(sharded, ref) < ATOL


def test_shard_index_problems(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    weight_map = _shard(folder, read_tensors(fixture_path("llama_gqa")), 2)
    index = folder / "model.safetensors.index.json"

    (folder / "model-00002-of-00002.safetensors").rename(folder / "moved.safetensors")
    with pytest.raises(modelkit.CheckpointError, match="does not exist"):
        modelkit.load(folder)

    escaping = {k: "../outside.safetensors" for k in weight_map}
    index.write_text(json.dumps({"weight_map": escaping}))
    with pytest.raises(modelkit.CheckpointError, match="refusing"):
        modelkit.load(folder)

    index.write_text("{broken")
    with pytest.raises(modelkit.CheckpointError, match="shard index"):
        modelkit.load(folder)


def test_tensor_in_two_files_is_an_error(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    folder = copy_fixture("llama_gqa", tmp_path / "m")
    tensors = read_tensors(folder)
    save_file({"model.norm.weight": tensors["model.norm.weight"]}, str(folder / "extra.safetensors"))
    with pytest.raises(modelkit.CheckpointError, match="model.norm.weight"):
        modelkit.load(folder)


# ---- dtypes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "falcon_rw"])
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["F16", "BF16"])
def test_half_precision_weights_become_float32(tmp_path: Path, name: str, dtype: type) -> None:
    tensors = read_tensors(fixture_path(name))
    half = {k: v.astype(dtype) for k, v in tensors.items()}
    rounded = {k: v.astype(np.float32) for k, v in half.items()}
    assert any(not np.array_equal(rounded[k], tensors[k]) for k in tensors)  # rounding happened

    half_dir = copy_fixture(name, tmp_path / "half", weights=False)
    write_tensors(half_dir, half)
    f32_dir = copy_fixture(name, tmp_path / "f32", weights=False)
    write_tensors(f32_dir, rounded)

    from safetensors import safe_open

    with safe_open(str(half_dir / "model.safetensors"), "numpy") as f:
        stored = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert stored == {"F16" if dtype is np.float16 else "BF16"}

    half_model = modelkit.load(half_dir)
    f32_model = modelkit.load(f32_dir)
    assert half_model.embed.dtype == np.float32
    ids, ref = reference(name)
    a, b = half_model.forward(ids), f32_model.forward(ids)
    assert a.dtype == np.float32
    assert max_abs(a, b) == 0.0
    assert max_abs(a, ref) < 0.5  # same model, rounded weights


def test_mixed_dtypes_in_one_checkpoint(tmp_path: Path) -> None:
    tensors = read_tensors(fixture_path("llama_gqa"))
    mixed = {k: (v.astype(ml_dtypes.bfloat16) if "mlp" in k else v.astype(np.float16) if "attn" in k else v)
             for k, v in tensors.items()}
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    write_tensors(folder, mixed)
    ids, _ = reference("llama_gqa")
    assert modelkit.load(folder).forward(ids).dtype == np.float32


def test_integer_tensor_is_refused_when_read(tmp_path: Path) -> None:
    tensors = read_tensors(fixture_path("llama_gqa"))
    tensors["model.norm.weight"] = np.ones(tensors["model.norm.weight"].shape, np.int32)
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.CheckpointError, match="model.norm.weight.*I32"):
        modelkit.load(folder)


# ---- tied heads -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama_mqa_tied", "gpt2", "falcon_7b", "granite3"])
def test_tied_head_with_lm_head_absent_or_present(tmp_path: Path, name: str) -> None:
    tensors = read_tensors(fixture_path(name))
    assert "lm_head.weight" not in tensors  # transformers stores tied weights once
    ids, ref = reference(name)
    model = load_cached(name)
    assert model.tied and model.head is model.embed

    embed_name = next(k for k in tensors if k.endswith(("embed_tokens.weight", "wte.weight",
                                                        "word_embeddings.weight")))
    folder = copy_fixture(name, tmp_path / "m", weights=False)
    write_tensors(folder, {**tensors, "lm_head.weight": tensors[embed_name]})
    with_head = modelkit.load(folder)
    assert max_abs(with_head.forward(ids), ref) < ATOL


def test_untied_without_lm_head_is_an_error(tmp_path: Path) -> None:
    folder = copy_fixture("llama_mqa_tied", tmp_path / "m")
    edit_config(folder, tie_word_embeddings=False)
    with pytest.raises(modelkit.WeightMismatchError) as info:
        modelkit.load(folder)
    assert "lm_head.weight" in str(info.value) and "head.weight" in str(info.value)
    missing = info.value.report.missing
    assert [(m[0], m[1]) for m in missing] == [("lm_head.weight", "head.weight")]
    assert tuple(missing[0][2]) == (320, 32)


def test_untied_checkpoint_uses_its_lm_head() -> None:
    model = load_cached("llama_gqa")
    tensors = read_tensors(fixture_path("llama_gqa"))
    assert not model.tied
    np.testing.assert_array_equal(model.head, tensors["lm_head.weight"])


# ---- the strict report ------------------------------------------------------------------------

def _broken_llama(tmp_path: Path) -> Path:
    tensors = read_tensors(fixture_path("llama_gqa"))
    del tensors["model.layers.1.mlp.up_proj.weight"]  # missing
    tensors["model.layers.0.self_attn.extra_proj.weight"] = np.zeros((4, 4), np.float32)  # unexpected
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)  # mis-shaped
    folder = copy_fixture("llama_gqa", tmp_path / "broken", weights=False)
    write_tensors(folder, tensors)
    return folder


def test_strict_report_names_each_tensor(tmp_path: Path) -> None:
    folder = _broken_llama(tmp_path)
    with pytest.raises(modelkit.WeightMismatchError) as info:
        modelkit.load(folder)
    report = info.value.report
    assert report.missing == [("model.layers.1.mlp.up_proj.weight", "layers.1.mlp.up.weight", (64, 32))]
    assert report.unexpected == [("model.layers.0.self_attn.extra_proj.weight", (4, 4))]
    assert [(m[0], m[1], tuple(m[2]), tuple(m[3])) for m in report.misshaped] == [
        ("model.layers.0.self_attn.k_proj.weight", "layers.0.attn.k.weight", (8, 32), (16, 32))]

    lines = report.lines()
    assert len(lines) == 3
    missing = next(l for l in lines if l.startswith("missing"))
    assert "model.layers.1.mlp.up_proj.weight" in missing and "layers.1.mlp.up.weight" in missing
    assert "[64, 32]" in missing
    misshaped = next(l for l in lines if l.startswith("mis-shaped"))
    assert "model.layers.0.self_attn.k_proj.weight" in misshaped and "layers.0.attn.k.weight" in misshaped
    assert "[8, 32]" in misshaped and "[16, 32]" in misshaped
    unexpected = next(l for l in lines if l.startswith("unexpected"))
    assert "model.layers.0.self_attn.extra_proj.weight" in unexpected and "[4, 4]" in unexpected

    message = str(info.value)
    assert len(message.splitlines()) <= 5
    assert "modelkit validate" in message
    for name in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.extra_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight"):
        assert name in message


def test_long_report_is_summarised_in_five_lines(tmp_path: Path) -> None:
    tensors = {k: v for k, v in read_tensors(fixture_path("llama_gqa")).items() if "layers.1." not in k}
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.WeightMismatchError) as info:
        modelkit.load(folder)
    assert len(info.value.report.missing) == 9
    message = str(info.value)
    assert len(message.splitlines()) == 5
    assert "and 6 more" in message and "modelkit validate" in message


def test_validate_prints_the_full_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    everything = read_tensors(fixture_path("llama_gqa"))
    dropped = sorted(k for k in everything if "layers.1." in k)
    tensors = {k: v for k, v in everything.items() if k not in dropped}
    tensors["stray.tensor"] = np.zeros(3, np.float32)
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    write_tensors(folder, tensors)
    assert cli_main(["validate", "--model", str(folder)]) == 1
    out, err = capsys.readouterr()
    missing = [line.split()[1] for line in out.splitlines() if line.startswith("missing")]
    assert sorted(missing) == dropped  # all nine, not a summary
    assert "unexpected  stray.tensor" in out
    assert "9 missing, 1 unexpected, 0 mis-shaped" in err


def test_validate_ok(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["validate", "--model", str(fixture_path("falcon_rw"))]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "falcon" in out


def test_ignored_buffers_are_fine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gpt2 = read_tensors(fixture_path("gpt2"))
    for i in range(2):
        gpt2[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
        gpt2[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    g_dir = copy_fixture("gpt2", tmp_path / "gpt2", weights=False)
    write_tensors(g_dir, gpt2)

    llama = read_tensors(fixture_path("llama_gqa"))
    for i in range(2):
        llama[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    l_dir = copy_fixture("llama_gqa", tmp_path / "llama", weights=False)
    write_tensors(l_dir, llama)

    for name, folder in (("gpt2", g_dir), ("llama_gqa", l_dir)):
        ids, ref = reference(name)
        assert max_abs(modelkit.load(folder).forward(ids), ref) < ATOL
        assert cli_main(["validate", "--model", str(folder)]) == 0
    assert capsys.readouterr().out.count("ok: every tensor") == 2


def test_non_strict_load_tolerates_only_unexpected(tmp_path: Path) -> None:
    tensors = read_tensors(fixture_path("llama_gqa"))
    tensors["stray.tensor"] = np.zeros(3, np.float32)
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.WeightMismatchError):
        modelkit.load(folder)
    ids, ref = reference("llama_gqa")
    assert max_abs(modelkit.load(folder, strict=False).forward(ids), ref) < ATOL
    with pytest.raises(modelkit.WeightMismatchError):
        modelkit.load(_broken_llama(tmp_path), strict=False)


def test_mis_shaped_fused_tensor_is_reported(tmp_path: Path) -> None:
    """A transform's shape check (GPT-2's split of c_attn) feeds the report, not a crash."""
    tensors = read_tensors(fixture_path("gpt2"))
    tensors["transformer.h.0.attn.c_attn.weight"] = np.zeros((32, 95), np.float32)
    folder = copy_fixture("gpt2", tmp_path / "m", weights=False)
    write_tensors(folder, tensors)
    with pytest.raises(modelkit.WeightMismatchError) as info:
        modelkit.load(folder)
    shaped = info.value.report.misshaped
    assert {m[1] for m in shaped} == {"layers.0.attn.q.weight", "layers.0.attn.k.weight", "layers.0.attn.v.weight"}
    assert all(m[0] == "transformer.h.0.attn.c_attn.weight" for m in shaped)


# ---- unusable folders -------------------------------------------------------------------------

def test_pickle_only_folder_is_refused(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(modelkit.CheckpointError, match="never unpickles"):
        modelkit.load(folder)


def test_folder_without_weights(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    with pytest.raises(modelkit.CheckpointError, match="no \\*.safetensors"):
        modelkit.load(folder)


def test_corrupt_safetensors(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m", weights=False)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(modelkit.CheckpointError, match="model.safetensors"):
        modelkit.load(folder)


def test_unknown_model_type(tmp_path: Path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    edit_config(folder, model_type="nonesuch", architectures=["NonesuchForCausalLM"])
    with pytest.raises(modelkit.UnknownArchitectureError) as info:
        modelkit.load(folder)
    assert "nonesuch" in str(info.value) and "llama" in str(info.value)


def test_parameter_count() -> None:
    model = load_cached("llama_gqa")
    tensors = read_tensors(fixture_path("llama_gqa"))
    assert model.parameter_count() == sum(v.size for v in tensors.values())
    tied = load_cached("llama_mqa_tied")
    assert tied.parameter_count() == sum(v.size for v in read_tensors(fixture_path("llama_mqa_tied")).values())


def test_load_options_are_checked(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tuning= takes only tunable block options; prefill_chunk a positive integer."""
    import os

    from conftest import fixture_path

    with pytest.raises(modelkit.ConfigError, match="'attention.num_heads' is not a tunable block option; "
                                                   "tunable: attention.query_block"):
        modelkit.load(fixture_path("llama_gqa"), tuning={"attention.num_heads": 3})
    with pytest.raises(modelkit.ConfigError, match=r"layers\.blocks\.attn\.query_block must be at least 1, got 0"):
        modelkit.load(fixture_path("llama_gqa"), tuning={"attention.query_block": 0})
    with pytest.raises(modelkit.GenerationError, match="prefill_chunk must be a positive integer"):
        modelkit.load(fixture_path("llama_gqa"), prefill_chunk=0)
    # a FIFO named like a mapping is never opened (reading it would wait forever)
    fifo = tmp_path / "maps" / "waits.yaml"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(modelkit.MappingError, match="not a regular file"):
        modelkit.load(fixture_path("llama_gqa"), mapping=fifo)
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(fifo.parent))
    assert modelkit.load(fixture_path("llama_gqa")).name == "llama"
