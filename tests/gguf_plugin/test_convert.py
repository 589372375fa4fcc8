"""`modelkit convert`: a GGUF file written back as a Hugging Face folder.

The tiny Llama fixtures are encoded as GGUF the way llama.cpp does it (tests/test_gguf.py), so
converting them back must give the original safetensors tensors, bit for bit, under the
original names, and a folder that loads with identical logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

import modelkit
from conftest import fixture_path, read_tensors, reference, run_cli
from modelkit_gguf.convert import convert
from modelkit.errors import CheckpointError
from modelkit.loading import inspect
from modelkit.text.tokenizer import Tokenizer
from modelkit_gguf.source import GGUFSource
from gguf_files import fixture_as_gguf


@pytest.fixture
def gguf_gqa(tmp_path: Path) -> Path:
    return fixture_as_gguf("llama_gqa", tmp_path / "gqa.gguf")


@pytest.mark.parametrize("name", ["llama_gqa", "llama_mqa_tied"])
def test_convert_gives_back_the_original_checkpoint(tmp_path: Path, name: str) -> None:
    src = fixture_as_gguf(name, tmp_path / "m.gguf")
    done = convert(src, tmp_path / "hf")
    assert (done["source_arch"], done["target_arch"]) == ("llama-gguf", "llama")
    original = read_tensors(fixture_path(name))
    converted = read_tensors(tmp_path / "hf")
    assert set(converted) == set(original)  # a tied head is not stored, as transformers does
    for key, array in original.items():
        np.testing.assert_array_equal(converted[key], array, err_msg=key)
    assert done["parameters"] == sum(a.size for a in original.values())


@pytest.mark.parametrize("name", ["llama_gqa", "llama_mqa_tied"])
def test_converted_folder_loads_with_identical_logits(tmp_path: Path, name: str) -> None:
    src = fixture_as_gguf(name, tmp_path / "m.gguf")
    convert(src, tmp_path / "hf")
    ids, _ = reference(name)
    from_gguf, from_folder = modelkit.load(src), modelkit.load(tmp_path / "hf")
    assert from_folder.name == "llama"
    np.testing.assert_array_equal(from_folder.forward(ids), from_gguf.forward(ids))
    gguf_only = {"rope_dim"}  # fields only the GGUF mapping declares
    assert dict(from_folder.config) == {k: v for k, v in from_gguf.config.items() if k not in gguf_only}


def test_config_json(tmp_path: Path, gguf_gqa: Path) -> None:
    convert(gguf_gqa, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    want = json.loads((fixture_path("llama_gqa") / "config.json").read_text())
    for key in ("model_type", "architectures", "hidden_size", "num_hidden_layers", "intermediate_size",
                "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "max_position_embeddings",
                "vocab_size", "tie_word_embeddings", "hidden_act", "bos_token_id", "eos_token_id"):
        assert cfg[key] == want[key], key
    assert cfg["torch_dtype"] == "float32"
    assert "gguf" not in cfg  # the source's private keys stay out
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen == {"bos_token_id": 0, "eos_token_id": 0}


def test_safetensors_file_is_standard(tmp_path: Path, gguf_gqa: Path) -> None:
    convert(gguf_gqa, tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0
    header = json.loads(raw[8:8 + header_len])
    assert header["__metadata__"] == {"format": "pt"}
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert spans[-1][1] == len(raw) - 8 - header_len  # no gap, nothing after the data
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("model.norm.weight").dtype == np.float32


def test_bf16_output(tmp_path: Path, gguf_gqa: Path) -> None:
    done = convert(gguf_gqa, tmp_path / "hf", dtype="bf16")
    assert done["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    original = read_tensors(fixture_path("llama_gqa"))
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="numpy") as f:
        for key in f.keys():
            got = f.get_tensor(key)
            assert got.dtype == ml_dtypes.bfloat16
            np.testing.assert_array_equal(got, original[key].astype(ml_dtypes.bfloat16))
    ids, ref = reference("llama_gqa")
    logits = modelkit.load(tmp_path / "hf").forward(ids)
    assert np.abs(logits - ref).max() < 0.1  # bf16 weights: close, not equal


def test_tokenizer_files(tmp_path: Path) -> None:
    src = fixture_as_gguf("llama_gqa", tmp_path / "m.gguf", add_bos=True)
    convert(src, tmp_path / "hf")
    tok_cfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tok_cfg["bos_token"] == tok_cfg["eos_token"] == "<|endoftext|>"
    assert tok_cfg["add_bos_token"] is True
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    folder_tok = Tokenizer.from_folder(tmp_path / "hf")
    gguf_tok = GGUFSource.open(src).tokenizer()
    for text in ["Hello world", "  spaces\n\nand 123 digits", "a<|endoftext|>b"]:
        assert folder_tok.encode(text) == gguf_tok.encode(text)
    assert folder_tok.encode("Hello")[0] == 0  # the BOS post-processor travels in tokenizer.json


def test_chat_template_travels(tmp_path: Path) -> None:
    template = "{% for m in messages %}<|endoftext|>{{ m['content'] }}{% endfor %}"
    src = fixture_as_gguf("llama_gqa", tmp_path / "m.gguf", chat_template=template)
    convert(src, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["chat_template"] == template
    assert modelkit.load(tmp_path / "hf").tokenizer.chat_template == template


def test_converted_folder_validates(tmp_path: Path, gguf_gqa: Path) -> None:
    convert(gguf_gqa, tmp_path / "hf")
    source, choice, plan = inspect(tmp_path / "hf")
    source.close()
    assert choice.mapping.name == "llama" and plan.report.ok


def test_refuses_a_non_empty_folder_unless_forced(tmp_path: Path, gguf_gqa: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        convert(gguf_gqa, out)
    assert not (out / "model.safetensors").exists()
    convert(gguf_gqa, out, force=True)
    assert (out / "model.safetensors").is_file() and (out / "notes.txt").is_file()


def test_bad_dtype(tmp_path: Path, gguf_gqa: Path) -> None:
    with pytest.raises(CheckpointError, match="--dtype"):
        convert(gguf_gqa, tmp_path / "hf", dtype="int8")


def test_cli_convert(tmp_path: Path, gguf_gqa: Path) -> None:
    proc = run_cli("convert", gguf_gqa, tmp_path / "hf", "--dtype", "f32")
    assert proc.returncode == 0, proc.stderr
    assert "llama-gguf -> llama" in proc.stdout and "model.safetensors" in proc.stdout
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    again = run_cli("convert", gguf_gqa, tmp_path / "hf")
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_cli_convert_errors_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 64)
    proc = run_cli("convert", junk, tmp_path / "hf")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "junk.gguf" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "hf").exists()  # nothing written for an unreadable source
    bad = run_cli("convert", junk, tmp_path / "hf", "--dtype", "int8")
    assert bad.returncode == 2  # argparse: not a choice


def _user_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transform: str) -> None:
    # a safetensors mapping that stores the attention output projection in another form
    user = tmp_path / "maps"
    user.mkdir()
    (user / "llama_scaled.yaml").write_text(
        "modelkit_mapping: 1\nextends: llama\nname: llama-scaled\nmatch: {model_type: [llama]}\n"
        "weights:\n  layers.{i}.attn.o.weight: {from: 'model.layers.{i}.self_attn.o_proj.weight', "
        f"transform: {transform}}}\n", encoding="utf-8")
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(user))


@pytest.mark.parametrize("transform", ["{scale: {factor: 2.0}}", "{add: {value: $rms_norm_eps}}",
                                       "[transpose, {reshape: {to: [-1], from: [-1, $hidden_size]}}, "
                                       "{reshape: {to: [$hidden_size, -1], from: [-1]}}]"])
def test_target_transforms_are_undone_by_their_inverses(tmp_path: Path, gguf_gqa: Path,
                                                        monkeypatch: pytest.MonkeyPatch, transform: str) -> None:
    # each transform's registered inverse writes the form the mapping reads, with its arguments
    # resolved over the config: the folder loads back to the GGUF file's weights
    _user_mapping(tmp_path, monkeypatch, transform)
    convert(gguf_gqa, tmp_path / "hf")
    ids, _ = reference("llama_gqa")
    np.testing.assert_allclose(modelkit.load(tmp_path / "hf").forward(ids), modelkit.load(gguf_gqa).forward(ids),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize(("transform", "words"), [
    ("{scale: {factor: 0.0}}", "scaled"),
    ("{reshape: {to: [-1, $hidden_size]}}", "in another shape"),  # no 'from': the stored shape is unknown
])
def test_target_transform_without_an_inverse_is_refused(tmp_path: Path, gguf_gqa: Path,
                                                        monkeypatch: pytest.MonkeyPatch, transform: str,
                                                        words: str) -> None:
    # a form that cannot be written back is refused by name, in words, and nothing is written
    _user_mapping(tmp_path, monkeypatch, transform)
    with pytest.raises(modelkit.MappingError, match=f"cannot convert this GGUF file to a Hugging Face folder of "
                                                    f"llama-scaled: its attention output projection would have to "
                                                    f"be stored {words} .model.layers.N.self_attn.o_proj.weight."):
        convert(gguf_gqa, tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


@pytest.mark.parametrize(("entry", "words"), [
    # half of a fused tensor: the other half is nowhere in the GGUF file
    ("{from: 'model.layers.{i}.self_attn.o_proj.weight', transform: {split: {parts: 2, index: 0}}}",
     "its attention output projection would have to be stored in one tensor (model.layers.N.self_attn.o_proj.weight) "
     "with parts that the GGUF file does not hold"),
    # the same tensor as the query projection, unchanged
    ("model.layers.{i}.self_attn.q_proj.weight",
     "its attention output projection would have to be stored as the same tensor as another "
     "(model.layers.N.self_attn.q_proj.weight)"),
])
def test_a_layout_that_cannot_hold_the_parameters_is_refused(tmp_path: Path, gguf_gqa: Path,
                                                             monkeypatch: pytest.MonkeyPatch, entry: str,
                                                             words: str) -> None:
    user = tmp_path / "maps"
    user.mkdir()
    (user / "llama_odd.yaml").write_text(
        "modelkit_mapping: 1\nextends: llama\nname: llama-odd\nmatch: {model_type: [llama]}\n"
        f"weights:\n  layers.{{i}}.attn.o.weight: {entry}\n", encoding="utf-8")
    monkeypatch.setenv("MODELKIT_MAPPINGS", str(user))
    with pytest.raises(modelkit.MappingError) as info:
        convert(gguf_gqa, tmp_path / "hf")
    assert str(info.value) == f"cannot convert this GGUF file to a Hugging Face folder of llama-odd: {words}"
    assert not (tmp_path / "hf").exists()


def test_the_gguf_transforms_have_inverses() -> None:
    from modelkit_gguf.transforms import neg_exp, permute_rope, undo_neg_exp, unpermute_rope

    rng = np.random.default_rng(0)
    q = rng.standard_normal((8, 3)).astype(np.float32)
    np.testing.assert_array_equal(permute_rope(unpermute_rope(q, 2), 2), q)
    a = -np.exp(rng.standard_normal((4, 2))).astype(np.float32)
    np.testing.assert_allclose(neg_exp(undo_neg_exp(a)), a, rtol=1e-6)
