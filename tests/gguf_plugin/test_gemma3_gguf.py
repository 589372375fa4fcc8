"""Gemma 3 GGUF files: the gemma3-gguf mapping, what the source decides from the metadata, the
refusals, and `modelkit convert` back to a gemma3 folder.

The tiny gemma3_text golden fixture is written as llama.cpp's converter writes a gemma3 GGUF
(tests/gguf_files.py: gguf-py's tensor names, norms stored as 1 + w); its logits must still
match the transformers reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import modelkit
from conftest import ATOL, fixture_path, max_abs, read_tensors, reference
from gguf_files import fixture_as_gguf, gemma3_fixture_as_gguf
from modelkit.errors import CheckpointError, ConfigError
from modelkit_gguf.config import config_from_metadata
from modelkit_gguf.convert import convert

SLIDING, FULL = "sliding_attention", "full_attention"
KEY = gguf.Keys


def key(template: str) -> str:
    return template.format(arch="gemma3")


@pytest.mark.parametrize("pattern", ["period", "flags"])
def test_tiny_gemma3_gguf_matches_transformers(tmp_path: Path, pattern: str) -> None:
    model = modelkit.load(gemma3_fixture_as_gguf(tmp_path / "g.gguf", pattern=pattern))
    assert model.name == "gemma3-gguf" and model.tied
    want = json.loads((fixture_path("gemma3_text") / "config.json").read_text())
    assert model.config["layer_types"] == want["layer_types"]
    ids, ref = reference("gemma3_text")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_norms_are_read_as_stored_not_shifted_again(tmp_path: Path) -> None:
    # llama.cpp already stored 1 + w; the core mapping's {add: 1.0} must not apply a second time
    model = modelkit.load(gemma3_fixture_as_gguf(tmp_path / "g.gguf"))
    hf = read_tensors(fixture_path("gemma3_text"))
    got = model.layers[2].blocks["attn"].q_norm
    np.testing.assert_array_equal(got, hf["model.layers.2.self_attn.q_norm.weight"] + np.float32(1.0))
    np.testing.assert_array_equal(model.final_norm.weight, hf["model.norm.weight"] + np.float32(1.0))


def test_arch_gemma3_selects_the_gguf_mapping(tmp_path: Path) -> None:
    path = gemma3_fixture_as_gguf(tmp_path / "g.gguf")
    assert modelkit.load(path, arch="gemma3").name == "gemma3-gguf"


# ---- what the metadata says, and what llama.cpp decides when it does not ----------------------


def _meta(**extra: Any) -> dict[str, Any]:
    meta = {"general.architecture": "gemma3", key(KEY.LLM.BLOCK_COUNT): 18,
            key(KEY.LLM.EMBEDDING_LENGTH): 640, key(KEY.Attention.HEAD_COUNT): 4,
            key(KEY.Attention.KEY_LENGTH): 256, key(KEY.Attention.SLIDING_WINDOW): 512}
    meta.update(extra)
    return {k: v for k, v in meta.items() if v is not None}


def _config(**extra: Any) -> dict[str, Any]:
    return config_from_metadata(_meta(**extra), {"token_embd.weight"}, Path("m.gguf"))


def test_default_pattern_is_five_sliding_layers_in_six() -> None:
    cfg = _config()
    assert cfg["layer_types"] == ([SLIDING] * 5 + [FULL]) * 3
    assert cfg["model_type"] == "gemma3_text" and cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert cfg["sliding_window"] == 512
    assert cfg["hidden_activation"] == "gelu_pytorch_tanh" and "hidden_act" not in cfg
    assert cfg["query_pre_attn_scalar"] == 256  # the head size
    assert cfg["rope_local_base_freq"] == 10000.0  # llama.cpp's rope_freq_base_train_swa
    assert cfg["final_logit_softcapping"] is None and cfg["tie_word_embeddings"] is True


@pytest.mark.parametrize("pattern,want", [
    (3, [SLIDING, SLIDING, FULL] * 6),
    (1, [FULL] * 18),
    (0, [SLIDING] * 18),
    ([True, False] * 9, [SLIDING, FULL] * 9),
])
def test_pattern_key_as_period_or_flags(pattern: Any, want: list[str]) -> None:
    assert _config(**{key(KEY.Attention.SLIDING_WINDOW_PATTERN): pattern})["layer_types"] == want


@pytest.mark.parametrize("window", [None, 0])
def test_no_window_means_no_sliding_layer(window: Any) -> None:
    cfg = _config(**{key(KEY.Attention.SLIDING_WINDOW): window})
    assert cfg["layer_types"] == [FULL] * 18 and "sliding_window" not in cfg


@pytest.mark.parametrize("pattern", [[True] * 5, [1, 0] * 9, -2, "six"])
def test_bad_pattern_is_a_checkpoint_error(pattern: Any) -> None:
    with pytest.raises(CheckpointError, match="sliding_window_pattern"):
        _config(**{key(KEY.Attention.SLIDING_WINDOW_PATTERN): pattern})


def test_local_rope_base_and_final_softcap_from_the_file() -> None:
    cfg = _config(**{key(KEY.Rope.FREQ_BASE_SWA): 20000.0, key(KEY.LLM.FINAL_LOGIT_SOFTCAPPING): 30.0})
    assert cfg["rope_local_base_freq"] == 20000.0 and cfg["final_logit_softcapping"] == 30.0


def test_27b_scales_queries_by_hidden_over_heads() -> None:
    # llama.cpp: f_attention_scale is 1/sqrt(n_embd / n_head) for the 62-layer model only
    cfg = _config(**{key(KEY.LLM.BLOCK_COUNT): 62, key(KEY.LLM.EMBEDDING_LENGTH): 5376,
                     key(KEY.Attention.HEAD_COUNT): 32, key(KEY.Attention.KEY_LENGTH): 128})
    assert cfg["query_pre_attn_scalar"] == 168


def test_rope_scaling_reaches_only_the_full_layers(tmp_path: Path) -> None:
    model = modelkit.load(gemma3_fixture_as_gguf(tmp_path / "g.gguf"))
    sliding, full = model.layers[0].blocks["attn"].rope, model.layers[2].blocks["attn"].rope
    from modelkit.nn.rope import inverse_frequencies

    np.testing.assert_allclose(sliding.inv_freq, inverse_frequencies(16, 10000.0, None), rtol=1e-6)
    scaled = inverse_frequencies(16, 1e6, {"rope_type": "linear", "factor": 4.0})
    np.testing.assert_allclose(full.inv_freq, scaled, rtol=1e-6)


# ---- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra,message", [
    ({key(KEY.LLM.ATTN_LOGIT_SOFTCAPPING): 50.0}, "attn_logit_softcapping"),
    ({key(KEY.Attention.VALUE_LENGTH): 8}, "value_length differs"),
    ({key(KEY.Rope.DIMENSION_COUNT): 8}, "partial rotary"),
])
def test_metadata_modelkit_does_not_implement_is_refused(tmp_path: Path, extra: dict[str, Any],
                                                         message: str) -> None:
    path = gemma3_fixture_as_gguf(tmp_path / "g.gguf", **extra)
    with pytest.raises(ConfigError, match=message):
        modelkit.load(path)


def test_bias_tensors_are_refused(tmp_path: Path) -> None:
    from gguf_files import write_gguf
    from modelkit_gguf.reader import open_gguf

    path = gemma3_fixture_as_gguf(tmp_path / "g.gguf")
    f = open_gguf(path)
    tensors = {n: (np.array(f.tensor_data(n), np.float32).reshape(t.shape), None) for n, t in f.tensors.items()}
    meta = {k: v for k, v in f.metadata.items() if not k.startswith("general.architecture")}
    f.close()
    tensors["blk.0.attn_q.bias"] = (np.zeros(64, np.float32), None)
    with pytest.raises(modelkit.WeightMismatchError, match="blk.0.attn_q.bias"):
        modelkit.load(write_gguf(tmp_path / "b.gguf", tensors, meta, arch="gemma3"))


# ---- the mapping's names are gguf-py's --------------------------------------------------------


@pytest.mark.parametrize("gguf_path,arch", [("gemma3", gguf.MODEL_ARCH.GEMMA3), ("llama", gguf.MODEL_ARCH.LLAMA)])
def test_mapping_tensor_names_are_gguf_py_names(tmp_path: Path, gguf_path: str, arch: Any) -> None:
    # every GGUF name the plugin's mapping reads is the name gguf-py's TensorNameMap gives the
    # Hugging Face tensor the core mapping reads for the same canonical parameter
    path = (gemma3_fixture_as_gguf(tmp_path / "g.gguf") if gguf_path == "gemma3"
            else fixture_as_gguf("llama_gqa", tmp_path / "l.gguf"))
    src, choice, _ = modelkit.inspect(path)
    raw = {k: v for k, v in src.config().items() if k != "gguf"}
    src.close()
    core = {w.target: w for w in modelkit.find_mapping(raw, "safetensors").mapping.weights}
    names = gguf.get_tensor_name_map(arch, 4)
    checked = 0
    for w in choice.mapping.weights:
        if w.target not in core:  # llama.cpp-only tensors (rope_freqs.weight)
            assert w.sources[0].split(".")[0] in gguf.TENSOR_NAMES.values()
            continue
        hf = core[w.target].sources[0].replace("{i}", "3")
        assert names.get_name(hf, try_suffixes=(".weight", ".bias")) == w.sources[0].replace("{i}", "3"), hf
        checked += 1
    assert checked >= 14


# ---- convert ----------------------------------------------------------------------------------


def test_convert_writes_a_gemma3_folder(tmp_path: Path) -> None:
    src = gemma3_fixture_as_gguf(tmp_path / "g.gguf")
    done = convert(src, tmp_path / "hf")
    assert (done["source_arch"], done["target_arch"]) == ("gemma3-gguf", "gemma3")
    original = read_tensors(fixture_path("gemma3_text"))
    converted = read_tensors(tmp_path / "hf")
    assert set(converted) == set(original)
    for name, array in original.items():
        # norms went w -> float32(1 + w) -> minus 1: equal up to the rounding of 1 + w (half a
        # float32 ulp in [2, 4), where these weights are)
        np.testing.assert_allclose(converted[name], array, rtol=0, atol=2.0 ** -23, err_msg=name)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    want = json.loads((fixture_path("gemma3_text") / "config.json").read_text())
    for k in ("model_type", "architectures", "layer_types", "sliding_window", "head_dim", "query_pre_attn_scalar",
              "hidden_activation", "num_key_value_heads", "tie_word_embeddings"):
        assert cfg[k] == want[k], k
    assert cfg["rope_theta"] == 1e6 and cfg["rope_local_base_freq"] == 10000.0
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    folder = modelkit.load(tmp_path / "hf")
    assert folder.name == "gemma3"
    ids, ref = reference("gemma3_text")
    assert max_abs(folder.forward(ids), ref) < ATOL
    assert max_abs(folder.forward(ids), modelkit.load(src).forward(ids)) < 1e-5
