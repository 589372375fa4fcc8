"""`modelkit convert FOLDER OUT.gguf`: a Hugging Face folder written as a GGUF file in
llama.cpp's layout. For every golden fixture llama.cpp's converter wrote (tests/fixtures/gguf/),
modelkit's file holds the same tensors, of the same types and shapes, with the same bytes (Mamba's
A to one float32 rounding: the converter's torch and NumPy may compute exp apart), the
same tokenizer and the metadata llama.cpp reads; it loads back to the folder's logits. The Q8_0
files equal the converter's ``--outtype q8_0`` ones byte for byte. A model no GGUF file can hold
as it is (a setting llama.cpp decides in code) is refused, naming the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import modelkit
from conftest import ATOL, FIXTURES, fixture_path, load_cached, max_abs, reference, run_cli
from gguf_files import assert_plain
from modelkit.errors import CheckpointError
from modelkit_gguf.export import export

GGUF = FIXTURES / "gguf"

# converted fixtures whose folder a GGUF file cannot hold as it is -> the setting named in the refusal
REFUSED = {
    "mistral_window": "in layer 0's attention, the sliding window in tokens is 5, and a GGUF file of llama.cpp's "
                      "llama architecture has no setting for it (it would be none)",
    "mixtral": "in layer 0's attention, the sliding window in tokens is 6, and a GGUF file of llama.cpp's "
               "llama architecture has no setting for it (it would be none)",
    "qwen2_window": "in layer 1's attention, the sliding window in tokens is 4, and a GGUF file of llama.cpp's "
                    "qwen2 architecture has no setting for it (it would be none)",
    "starcoder2": "the sliding window in tokens is 4, and a GGUF file of llama.cpp's starcoder2 architecture",
    "smollm3": "in layer 1's attention, the position encoding is 'none', and a GGUF file of llama.cpp's smollm3 "
               "architecture has no setting for it (it would be 'rope')",
    "gemma2": "the score multiplier is 0.3535533905932738, and a GGUF file of llama.cpp's gemma2 architecture has "
              "no setting for it (it would be 0.25)",
}
WRITTEN = sorted(p.stem for p in GGUF.glob("*.gguf") if p.stem not in REFUSED)
# metadata the converter writes that does not describe the model (names, a size label)
COSMETIC = {"general.name", "general.size_label", "GGUF.kv_count"}
# fixture -> metadata where modelkit's file says otherwise than the converter's, and why
DEVIATIONS = {
    # the converter writes 4 x hidden and the head count whatever the config; the tensors say 64, 2
    "phi": {"phi2.feed_forward_length", "phi2.attention.head_count_kv"},
    "gpt_bigcode": {"starcoder.feed_forward_length"},
    # the converter's context length comes from transformers' default (2048), modelkit's from config.json
    "falcon_7b": {"falcon.context_length"}, "falcon_40b": {"falcon.context_length"},
    # 'none' and 0 say what the absence says
    "cohere": {"command-r.rope.scaling.type"}, "cohere2": {"cohere2.rope.scaling.type"},
    "phi3": {"phi3.rope.scaling.original_context_length", "phi3.attention.sliding_window"},
    # CodeGemma's special tokens and a SentencePiece flag, which this BPE vocabulary does not use
    "gemma": {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_space_prefix"},
    # Granite 4.0-H's Mamba and expert sizes, which llama.cpp's dense granite does not read
    "gh_attention_only": {"granite.expert_count", "granite.expert_used_count", "granite.ssm.conv_kernel",
                          "granite.ssm.state_size", "granite.ssm.group_count", "granite.ssm.inner_size",
                          "granite.ssm.time_step_rank"},
}


def _tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _fields(path: Path) -> dict[str, Any]:
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if k not in COSMETIC}


def assert_same_file(mine: Path, theirs: Path, deviations: frozenset[str] = frozenset()) -> None:
    ours, real = _tensors(mine), _tensors(theirs)
    assert sorted(ours) == sorted(real)
    for name, t in real.items():
        o = ours[name]
        assert (o.tensor_type, list(o.shape)) == (t.tensor_type, list(t.shape)), name
        a, b = np.asarray(o.data), np.asarray(t.data)
        if name.endswith("ssm_a"):
            np.testing.assert_array_max_ulp(a, b, maxulp=1)
        else:
            assert np.array_equal(a, b), name
    fields, real_fields = _fields(mine), _fields(theirs)
    for key, value in real_fields.items():  # everything the converter says, modelkit says too
        if key in deviations:
            continue
        assert _one(fields.get(key)) == _one(value), key


def _one(value: Any) -> Any:
    """A per-layer array holding one value, as that value (both files may write either)."""
    return value[0] if isinstance(value, list) and value and len(set(map(str, value))) == 1 else value


@pytest.mark.parametrize("name", WRITTEN)
def test_f32_file_is_the_converters(tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.gguf"
    done = export(fixture_path(name), out)
    assert done["dtype"] == "f32" and out.is_file()
    assert_same_file(out, GGUF / f"{name}.gguf", frozenset(DEVIATIONS.get(name, ())))
    ids, ref = reference(name)
    assert max_abs(modelkit.load(out).forward(ids), load_cached(name).forward(ids)) < ATOL


@pytest.mark.parametrize("name", sorted(p.stem for p in (GGUF / "q8_0").glob("*.gguf")))
def test_q8_0_file_is_the_converters(tmp_path: Path, name: str) -> None:
    out = tmp_path / f"{name}.gguf"
    export(fixture_path(name), out, dtype="q8_0")
    assert_same_file(out, GGUF / "q8_0" / f"{name}.gguf")


@pytest.mark.parametrize("dtype,bound", [("f16", 5e-3), ("bf16", 5e-2), ("q8_0", 6e-2)])
@pytest.mark.parametrize("name", ["llama_gqa", "gh_moe", "mamba2", "phi3"])
def test_half_and_quantised_files_load_close_to_the_folder(tmp_path: Path, name: str, dtype: str,
                                                           bound: float) -> None:
    out = tmp_path / f"{name}.gguf"
    export(fixture_path(name), out, dtype=dtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["output_norm.weight"] == "F32"  # norms and 1-D tensors stay float32
    assert types["token_embd.weight"] == dtype.upper()
    ids, _ = reference(name)
    want = load_cached(name).forward(ids)
    assert max_abs(modelkit.load(out).forward(ids), want) < bound * np.abs(want).max()


def test_the_short_convolution_stays_float32(tmp_path: Path) -> None:
    # as the converter keeps it (SHORTCONV_CONV): llama.cpp's conv kernel reads float32 only
    out = tmp_path / "m.gguf"
    export(fixture_path("lfm2_hub_config"), out, dtype="f16")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.shortconv.conv.weight"] == "F32" and types["blk.0.shortconv.in_proj.weight"] == "F16"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_a_gguf_file_cannot_hold_is_refused(tmp_path: Path, name: str) -> None:
    out = tmp_path / "m.gguf"
    with pytest.raises(CheckpointError) as info:
        export(fixture_path(name), out)
    message = str(info.value)
    assert message.startswith("cannot convert this folder to a GGUF file: ") and REFUSED[name] in message
    assert "\n" not in message and not out.exists() and not list(tmp_path.iterdir())
    assert_plain(message)



@pytest.mark.parametrize("src", ["opt", "gptj"])
def test_families_llama_cpp_does_not_read_are_refused(tmp_path: Path, src: str) -> None:
    with pytest.raises(CheckpointError, match=f"cannot convert this {src} folder to a GGUF file: modelkit writes "
                                              f"GGUF files only for the families llama.cpp reads"):
        export(fixture_path(src), tmp_path / "m.gguf")


# folders of a family llama.cpp reads, with tensors its architecture has no place for
NO_PLACE = {
    "qwen3_moe": "llama.cpp's qwen3moe architecture: it has no place for the folder's MLP gate and up projections",
    "lfm2": "llama.cpp's lfm2 architecture: it has no place for the folder's tensor 'conv.in_proj.bias'",
}


@pytest.mark.parametrize("name", sorted(NO_PLACE))
def test_tensors_the_architecture_has_no_place_for_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CheckpointError) as info:
        export(fixture_path(name), tmp_path / "m.gguf")
    assert NO_PLACE[name] in str(info.value) and not list(tmp_path.iterdir())


def test_other_refusals_are_plain(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a GGUF file already"):
        export(GGUF / "llama_gqa.gguf", tmp_path / "m.gguf")
    with pytest.raises(CheckpointError, match="a GGUF file is written as f32, f16, bf16 or q8_0"):
        export(fixture_path("llama_gqa"), tmp_path / "m.gguf", dtype="q4_k")
    (tmp_path / "there.gguf").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="exists .use --force"):
        export(fixture_path("llama_gqa"), tmp_path / "there.gguf")
    export(fixture_path("llama_gqa"), tmp_path / "there.gguf", force=True)


def test_cli_writes_a_gguf_file(tmp_path: Path) -> None:
    out = tmp_path / "granite.gguf"
    proc = run_cli("convert", fixture_path("gh_hybrid"), out, "--dtype", "q8_0")
    assert proc.returncode == 0, proc.stderr
    assert "granite -> granite-gguf" in proc.stdout and out.is_file()
    proc = run_cli("convert", fixture_path("mistral_window"), tmp_path / "m.gguf")
    assert proc.returncode != 0 and "the sliding window in tokens is 5" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_setting_equal_in_float32_is_not_a_difference(tmp_path: Path) -> None:
    # a folder converted from a GGUF states the float32 value (9.99999975e-06); the file read back
    # says 1e-05: the same number in float32, which the model computes with
    import json

    from conftest import copy_fixture

    folder = copy_fixture("llama_gqa", tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rms_norm_eps"] = float(np.float32(1e-5))
    (folder / "config.json").write_text(json.dumps(cfg))
    assert export(folder, tmp_path / "m.gguf")["tensors"] > 0
