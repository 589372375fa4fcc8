"""The GGUF weight source: dequantisation, the Q/K permutation, config, tokenizer and errors.

Every GGUF here is written by the test with ``gguf.GGUFWriter``: single tensors of each
quantisation type, and the tiny Llama golden fixtures re-encoded the way llama.cpp's
convert_hf_to_gguf.py does it (tensor names, Q/K row permutation, metadata), whose logits must
still match the transformers reference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

import modelkit
from conftest import ATOL, FIXTURES, fixture_path, max_abs, read_tensors, reference, run_cli
from modelkit.errors import CheckpointError, ConfigError, TokenizerError
from modelkit_gguf.transforms import unpermute_rope
from modelkit_gguf.source import GGUFSource

from gguf_files import HF_TO_GGUF, fixture_as_gguf, llama_cpp_permute, tokenizer_meta, write_gguf  # noqa: E402


QUANTISED = {Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1e-2, Q.Q5_0: 7e-2, Q.Q5_1: 7e-2,
             Q.Q4_0: 0.15, Q.Q4_1: 0.15}


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("qtype", list(QUANTISED), ids=lambda q: q.name)
def test_dequantise_types_the_package_quantises(tmp_path: Path, qtype: Q) -> None:
    # [out=3, in=64]: not square, so reversed (ne-order) dimensions would show
    data = _random((3, 64), 1)
    packed = gguf.quants.quantize(data, qtype)
    raw = None if qtype in (Q.F32, Q.F16) else qtype
    path = write_gguf(tmp_path / "t.gguf", {"w": (packed, raw), "norm": (data[0].copy(), None)})
    src = GGUFSource.open(path)
    assert src.tensor_infos()["w"].shape == (3, 64)
    assert src.tensor_infos()["w"].dtype == qtype.name
    got = src.read("w")
    assert got.dtype == np.float32 and got.shape == (3, 64) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, gguf.quants.dequantize(packed, qtype).reshape(3, 64))
    # independent of the package: close to the data that was quantised
    assert np.abs(got - data).max() <= QUANTISED[qtype] * np.abs(data).max() + 1e-7
    np.testing.assert_array_equal(src.read("norm"), data[0])
    src.close()


def _k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """ggml's 12-byte packing of eight 6-bit scales and eight 6-bit mins (get_scale_min_k4)."""
    out = np.zeros(12, np.uint8)
    for j in range(4):
        out[j] = sc[j] | ((sc[j + 4] >> 4) << 6)
        out[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6)
        out[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4)
    return out


def _f16_bytes(x: float) -> np.ndarray:
    return np.array([x], np.float16).view(np.uint8)


def _k_block(qtype: Q, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 256-value super-block of a K-quant, encoded from random codes by the ggml layout
    (block_q4_K / block_q5_K / block_q6_K), and the values it stands for."""
    d, dmin = np.float16(rng.uniform(0.01, 0.1)), np.float16(rng.uniform(0.01, 0.1))
    if qtype == Q.Q6_K:
        q = rng.integers(0, 64, 256)
        scales = rng.integers(-128, 128, 16).astype(np.int8)
        low, high = q & 0xF, q >> 4
        ql = np.zeros(128, np.uint8)
        qh = np.zeros(64, np.uint8)
        for h in range(2):
            for k in range(64):
                ql[h * 64 + k] = low[h * 128 + k] | (low[h * 128 + 64 + k] << 4)
            for k in range(32):
                qh[h * 32 + k] = sum(int(high[h * 128 + 32 * s + k]) << (2 * s) for s in range(4))
        block = np.concatenate([ql, qh, scales.view(np.uint8), _f16_bytes(d)])
        values = np.float32(d) * scales.astype(np.float32).repeat(16) * (q - 32).astype(np.float32)
        return block, values
    bits = 5 if qtype == Q.Q5_K else 4
    q = rng.integers(0, 1 << bits, 256)  # sub-block j holds values 32j..32j+31
    sc, mn = rng.integers(0, 64, 8), rng.integers(0, 64, 8)
    low = q & 0xF
    qs = np.zeros(128, np.uint8)
    for g in range(4):
        for k in range(32):
            qs[g * 32 + k] = low[64 * g + k] | (low[64 * g + 32 + k] << 4)
    parts = [_f16_bytes(d), _f16_bytes(dmin), _k_scales(sc, mn)]
    if qtype == Q.Q5_K:
        qh = np.zeros(32, np.uint8)
        for k in range(32):
            qh[k] = sum(int(q[32 * j + k] >> 4) << j for j in range(8))
        parts.append(qh)
    block = np.concatenate(parts + [qs])
    values = (np.float32(d) * sc.astype(np.float32).repeat(32) * q.astype(np.float32)
              - np.float32(dmin) * mn.astype(np.float32).repeat(32))
    return block, values.astype(np.float32)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_dequantise_k_quants(tmp_path: Path, qtype: Q) -> None:
    # the package has no K-quant quantiser: blocks are built by hand from the ggml layout
    rng = np.random.default_rng(7)
    rows, blocks_per_row = 3, 2  # [out=3, in=512]
    made = [_k_block(qtype, rng) for _ in range(rows * blocks_per_row)]
    packed = np.stack([b for b, _ in made]).reshape(rows, -1)
    expected = np.stack([v for _, v in made]).reshape(rows, 512)
    assert packed.shape[1] == blocks_per_row * gguf.GGML_QUANT_SIZES[qtype][1]
    path = write_gguf(tmp_path / "k.gguf", {"w": (packed, qtype)})
    src = GGUFSource.open(path)
    assert src.tensor_infos()["w"].shape == (3, 512)
    got = src.read("w")
    assert got.shape == (3, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_three_dimensional_tensor_keeps_numpy_order(tmp_path: Path) -> None:
    data = _random((2, 3, 32), 3)
    path = write_gguf(tmp_path / "t.gguf", {"x": (gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0)})
    src = GGUFSource.open(path)
    assert src.tensor_infos()["x"].shape == (2, 3, 32)
    np.testing.assert_allclose(src.read("x"), data, atol=0.02 * np.abs(data).max())


def test_read_returns_a_copy_not_the_memory_map(tmp_path: Path) -> None:
    data = _random((4, 32), 4)
    packed = gguf.quants.quantize(data, Q.Q8_0)
    src = GGUFSource.open(write_gguf(tmp_path / "t.gguf", {"w": (data, None), "q": (packed, Q.Q8_0)}))
    mapped = src.reader.data
    a, q = src.read("w"), src.read("q")
    assert not np.shares_memory(a, mapped) and not np.shares_memory(q, mapped)
    src.close()
    a += 1  # writable, independent of the (closed) file
    with pytest.raises(CheckpointError, match="closed"):
        src.read("w")


# ---- the Q/K row permutation ----------------------------------------------------------------


@pytest.mark.parametrize("heads,head_dim,cols", [(4, 8, 32), (2, 8, 32), (1, 16, 5), (9, 64, 1)])
def test_unpermute_rope_inverts_llama_cpp_permute(heads: int, head_dim: int, cols: int) -> None:
    w = _random((heads * head_dim, cols), heads)
    permuted = llama_cpp_permute(w, heads)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_rope(permuted, heads=heads), w)
    bias = w[:, 0].copy()  # 1-D (attention bias)
    np.testing.assert_array_equal(unpermute_rope(llama_cpp_permute(bias, heads), heads=heads), bias)


def _rope_halves(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """Hugging Face Llama's rotary embedding: rotate (x[i], x[i + d/2]) pairs."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)], -1)


def _rope_pairs(x: np.ndarray, pos: int, theta: float = 10000.0) -> np.ndarray:
    """llama.cpp's rotary for Llama (rope type 0, "normal"): rotate (x[2i], x[2i+1]) pairs."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * np.cos(ang) - b * np.sin(ang)
    out[..., 1::2] = a * np.sin(ang) + b * np.cos(ang)
    return out


def test_permuted_weights_with_pairwise_rope_give_the_same_attention_scores() -> None:
    # why the permutation exists: GGUF's Q/K rows suit llama.cpp's pairwise rotary, the
    # original rows suit rotate-half; both give identical q.k scores, and un-permuting the
    # GGUF rows brings back exactly the Hugging Face projection
    heads, kv, hd, dim = 4, 2, 8, 32
    wq, wk = _random((heads * hd, dim), 10).astype(np.float64), _random((kv * hd, dim), 11).astype(np.float64)
    x1, x2 = _random((dim,), 12).astype(np.float64), _random((dim,), 13).astype(np.float64)
    q_hf = _rope_halves((wq @ x1).reshape(heads, hd), pos=5)
    k_hf = _rope_halves((wk @ x2).reshape(kv, hd), pos=2)
    q_cpp = _rope_pairs((llama_cpp_permute(wq, heads) @ x1).reshape(heads, hd), pos=5)
    k_cpp = _rope_pairs((llama_cpp_permute(wk, kv) @ x2).reshape(kv, hd), pos=2)
    group = heads // kv
    for h in range(heads):
        np.testing.assert_allclose(q_cpp[h] @ k_cpp[h // group], q_hf[h] @ k_hf[h // group], rtol=1e-10)
    np.testing.assert_allclose(unpermute_rope(llama_cpp_permute(wq, heads), heads=heads), wq)


# ---- whole models ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama_gqa", "llama_mqa_tied"])
def test_tiny_llama_gguf_matches_transformers(tmp_path: Path, name: str) -> None:
    path = fixture_as_gguf(name, tmp_path / f"{name}.gguf")
    model = modelkit.load(path)
    assert model.name == "llama-gguf"
    ids, ref = reference(name)
    assert max_abs(model.forward(ids), ref) < ATOL
    cfg = json.loads((fixture_path(name) / "config.json").read_text())
    assert model.tied == cfg["tie_word_embeddings"]


def test_quantised_tiny_llama_is_close_to_its_float_model(tmp_path: Path) -> None:
    full = modelkit.load(fixture_as_gguf("llama_gqa", tmp_path / "f32.gguf"))
    q8 = modelkit.load(fixture_as_gguf("llama_gqa", tmp_path / "q8.gguf", qtype=Q.Q8_0))
    ids, _ = reference("llama_gqa")
    a, b = full.forward(ids), q8.forward(ids)
    assert 0 < max_abs(a, b) < 0.05 * np.abs(a).max()


def test_config_from_metadata(tmp_path: Path) -> None:
    src = GGUFSource.open(fixture_as_gguf("llama_mqa_tied", tmp_path / "m.gguf"))
    cfg = src.config()
    want = json.loads((fixture_path("llama_mqa_tied") / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "vocab_size",
                "tie_word_embeddings"):
        assert cfg[key] == want[key], key
    assert cfg["rope_theta"] == want["rope_parameters"]["rope_theta"]
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["bos_token_id"] == 0 and cfg["eos_token_id"] == 0
    assert cfg["gguf"]["rope"]["dimension_count"] == 8
    assert src.generation_config() == {"bos_token_id": 0, "eos_token_id": 0}


def test_arch_llama_selects_the_gguf_mapping(tmp_path: Path) -> None:
    path = fixture_as_gguf("llama_gqa", tmp_path / "m.gguf")
    assert modelkit.load(path, arch="llama").name == "llama-gguf"
    assert modelkit.load(path, arch="llama-gguf").name == "llama-gguf"
    with pytest.raises(modelkit.UnknownArchitectureError, match="no mapping for gguf"):
        modelkit.load(path, arch="opt")  # llama.cpp writes no OPT
    with pytest.raises(modelkit.UnknownArchitectureError, match="which architecture 'llama-gguf' serves"):
        modelkit.load(path, arch="gpt2")


def _tiny_llama_meta(**extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    tensors = {"token_embd.weight": (_random((320, 32), 0), None)}
    meta = {"llama.embedding_length": 32, "llama.block_count": 1, "llama.feed_forward_length": 64,
            "llama.attention.head_count": 4, "llama.attention.layer_norm_rms_epsilon": 1e-5,
            "llama.vocab_size": 320, **extra}
    return tensors, meta


def test_rope_scaling_metadata(tmp_path: Path) -> None:
    tensors, meta = _tiny_llama_meta(**{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    src = GGUFSource.open(write_gguf(tmp_path / "m.gguf", tensors, meta))
    assert src.config()["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


def test_rope_freqs_tensor_gives_llama3_scaling(tmp_path: Path) -> None:
    # llama.cpp writes Llama 3.1+ rope scaling as rope_freqs.weight: per-frequency divisors of the
    # plain frequencies. The llama3-scaled fixture written that way must match transformers.
    from modelkit.nn.rope import inverse_frequencies

    cfg = json.loads((fixture_path("llama3_rope_headdim") / "config.json").read_text())
    rope = cfg["rope_parameters"]
    plain = inverse_frequencies(cfg["head_dim"], rope["rope_theta"], None)
    scaled = inverse_frequencies(cfg["head_dim"], rope["rope_theta"], rope)
    path = fixture_as_gguf("llama3_rope_headdim", tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: (np.array(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist()))), None)
               for t in reader.tensors}
    tensors["rope_freqs.weight"] = ((plain / scaled).astype(np.float32), None)
    meta = {f.name: f.contents() for f in reader.fields.values()
            if not f.name.startswith("GGUF.") and f.name != "general.architecture"}
    meta["llama.attention.key_length"] = meta["llama.attention.value_length"] = cfg["head_dim"]
    model = modelkit.load(write_gguf(tmp_path / "freqs.gguf", tensors, meta))
    # the divisors reach the attention blocks as their rope_freq_factors: llama3's frequencies
    rope = model.layers[0].blocks["attn"].rope
    assert np.allclose(rope.inv_freq, scaled, rtol=1e-6)
    ids, ref = reference("llama3_rope_headdim")
    assert max_abs(model.forward(ids), ref) < ATOL


def test_rope_freqs_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    tensors, meta = _tiny_llama_meta(**{"llama.rope.dimension_count": 8})
    tensors["rope_freqs.weight"] = (np.ones(3, np.float32), None)
    with pytest.raises(modelkit.WeightMismatchError) as info:
        modelkit.load(write_gguf(tmp_path / "m.gguf", tensors, meta))
    assert [(src, want) for src, _, _, want, _ in info.value.report.misshaped] == [("rope_freqs.weight", (4,))]


def test_missing_tensors_are_reported_by_gguf_name(tmp_path: Path) -> None:
    tensors, meta = _tiny_llama_meta()
    with pytest.raises(modelkit.WeightMismatchError, match="blk.0.attn_norm.weight"):
        modelkit.load(write_gguf(tmp_path / "m.gguf", tensors, meta))


def test_validate_cli_on_gguf(tmp_path: Path) -> None:
    path = fixture_as_gguf("llama_gqa", tmp_path / "m.gguf")
    proc = run_cli("validate", "--model", path)
    assert proc.returncode == 0, proc.stderr
    assert "llama-gguf" in proc.stdout and "ok:" in proc.stdout


# ---- the tokenizer --------------------------------------------------------------------------


def test_tokenizer_matches_tokenizer_json(tmp_path: Path) -> None:
    path = fixture_as_gguf("llama_gqa", tmp_path / "m.gguf")
    tok = GGUFSource.open(path).tokenizer()
    cases = json.loads((FIXTURES / "tokenizer_ref.json").read_text(encoding="utf-8"))["cases"]
    for case in cases:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"], skip_special_tokens=False) == case["decoded"]
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert tok.special_ids == {0}
    assert tok.encode("a<|endoftext|>b")[1] == 0  # a control token is matched whole
    assert tok.decode(tok.encode("a<|endoftext|>b")) == "ab"  # and skipped when decoding


def test_add_bos_token_flag_decides_encode(tmp_path: Path) -> None:
    path = fixture_as_gguf("llama_gqa", tmp_path / "m.gguf", add_bos=True)
    tok = GGUFSource.open(path).tokenizer()
    assert tok.encode("Hello")[0] == 0
    assert tok.encode("Hello", add_special_tokens=False)[0] != 0
    assert tok.extra["add_bos_token"] is True


def _vocab_meta(tokens: list[str], types: list[int], merges: list[str], **extra: Any) -> dict[str, Any]:
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": (types, gguf.GGUFValueType.ARRAY),
            "tokenizer.ggml.merges": merges, "tokenizer.ggml.bos_token_id": 0,
            "tokenizer.ggml.eos_token_id": 1, **extra}


def _byte_vocab() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


@pytest.mark.parametrize("pre,expected", [
    ("gpt-2", ["Ġ12345"]),        # GPT-2: a run of digits is one piece
    ("smollm", list("Ġ12345")),   # SmolLM/StarCoder: every digit alone
    ("llama-bpe", ["Ġ", "123", "45"]),  # Llama 3: digits in threes, the space apart
])
def test_pre_tokenizer_names_split_like_llama_cpp(tmp_path: Path, pre: str, expected: list[str]) -> None:
    base = _byte_vocab()
    merged = ["Ġ1", "Ġ12", "Ġ123", "Ġ1234", "Ġ12345", "12", "123", "45"]
    tokens = ["<s>", "</s>"] + base + merged
    merges = ["Ġ 1", "Ġ1 2", "Ġ12 3", "Ġ123 4", "Ġ1234 5", "1 2", "12 3", "4 5"]
    meta = _vocab_meta(tokens, [3, 3] + [1] * (len(tokens) - 2), merges, **{"tokenizer.ggml.pre": pre})
    tensors, model_meta = _tiny_llama_meta()
    src = GGUFSource.open(write_gguf(tmp_path / "t.gguf", tensors, {**model_meta, **meta}))
    tok = src.tokenizer()
    ids = tok.encode(" 12345", add_special_tokens=False)
    assert [tok.id_to_token(i) for i in ids] == expected
    assert tok.decode(ids) == " 12345"
    # llama.cpp's Llama 3 vocabularies add BOS unless the file says otherwise
    assert tok.extra["add_bos_token"] is (pre == "llama-bpe")


def test_user_defined_tokens_are_whole_but_not_special(tmp_path: Path) -> None:
    tokens = ["<s>", "</s>", "<think>"] + _byte_vocab()
    meta = _vocab_meta(tokens, [3, 3, 4] + [1] * (len(tokens) - 3), [], **{"tokenizer.ggml.pre": "gpt-2"})
    tensors, model_meta = _tiny_llama_meta()
    tok = GGUFSource.open(write_gguf(tmp_path / "t.gguf", tensors, {**model_meta, **meta})).tokenizer()
    ids = tok.encode("a<think>b")
    assert ids[1] == 2
    assert 2 not in tok.special_ids and {0, 1} <= tok.special_ids
    assert tok.decode(ids) == "a<think>b"


def test_unknown_pre_tokenizer_is_a_tokenizer_error(tmp_path: Path) -> None:
    tokens = ["<s>", "</s>"] + _byte_vocab()
    meta = _vocab_meta(tokens, [3, 3] + [1] * (len(tokens) - 2), [], **{"tokenizer.ggml.pre": "made-up"})
    tensors, model_meta = _tiny_llama_meta()
    src = GGUFSource.open(write_gguf(tmp_path / "t.gguf", tensors, {**model_meta, **meta}))
    with pytest.raises(TokenizerError, match="made-up"):
        src.tokenizer()


def test_sentencepiece_vocabulary(tmp_path: Path) -> None:
    # a Llama 2 style vocabulary: scores instead of merges, byte fallback, "▁" for spaces
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "▁hell", "▁hello", "▁w",
             "or", "▁wor", "ld", "▁world"]
    tokens = pieces + words
    scores = [0.0] * len(pieces) + [-100.0 - i for i in range(8)] + [-1.0 - i for i in range(10)]
    types = [2, 3, 3] + [6] * 256 + [1] * len(words)
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": (types, gguf.GGUFValueType.ARRAY),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}
    tensors, model_meta = _tiny_llama_meta()
    tok = GGUFSource.open(write_gguf(tmp_path / "t.gguf", tensors, {**model_meta, **meta})).tokenizer()
    ids = tok.encode("hello world!")
    assert ids[0] == 1  # SentencePiece vocabularies add BOS by default
    assert [tok.id_to_token(i) for i in ids[1:]] == ["▁hello", "▁world", "<0x21>"]  # "!" by byte fallback
    assert tok.decode(ids) == "hello world!"


def _sentencepiece_meta(words: list[str]) -> dict[str, Any]:
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens = pieces + words
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * len(pieces) + [-1.0 - i for i in range(len(words))],
            "tokenizer.ggml.token_type": ([2, 3, 3] + [6] * 256 + [1] * len(words), gguf.GGUFValueType.ARRAY),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}


@pytest.mark.parametrize("words,needle", [
    (["▁a", "a" * 1_000_000], "tokenizer.ggml.tokens[260] is 1,000,000 bytes long"),  # 1 MB: used to hang
    (["▁", "é" * 600], "tokenizer.ggml.tokens[260] is 1,200 bytes long"),  # 600 characters, 1,200 bytes
])
def test_overlong_tokens_are_refused_at_once(tmp_path: Path, words: list[str], needle: str) -> None:
    path = fixture_as_gguf("llama_gqa", tmp_path / "t.gguf", vocab=_sentencepiece_meta(words))
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError) as info:
        modelkit.load(path)
    assert time.perf_counter() - t0 < 5.0
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value), str(info.value)
    _assert_one_line_cli_error(path, needle, run=True)


def test_the_work_of_deriving_merges_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelkit_gguf.tokenizer as gguf_tokenizer

    # a thousand tokens of a thousand bytes: within the per-token limit, a million cuts in all
    words = ["▁"] + [("ab" * 500)[:1000 - k % 7] + str(k) for k in range(1000)]
    tensors, model_meta = _tiny_llama_meta()
    path = write_gguf(tmp_path / "t.gguf", tensors, {**model_meta, **_sentencepiece_meta(words)})
    monkeypatch.setattr(gguf_tokenizer, "MAX_SENTENCEPIECE_CUTS", 100_000)
    with pytest.raises(TokenizerError, match=r"tokenizer.ggml.tokens: deriving merges .* means trying [\d,]+ cuts; "
                                             r"modelkit tries at most 100,000"):
        GGUFSource.open(path).tokenizer()
    monkeypatch.undo()
    t0 = time.perf_counter()
    tok = GGUFSource.open(path).tokenizer()  # under the real limit: derived, in bounded time
    assert time.perf_counter() - t0 < 30.0
    assert tok.decode(tok.encode(words[3])) == words[3]


def test_tokens_that_are_not_strings_are_refused(tmp_path: Path) -> None:
    meta = _sentencepiece_meta(["▁a"])
    meta["tokenizer.ggml.tokens"] = ([7] * len(meta["tokenizer.ggml.tokens"]), gguf.GGUFValueType.ARRAY)
    tensors, model_meta = _tiny_llama_meta()
    path = write_gguf(tmp_path / "t.gguf", tensors, {**model_meta, **meta})
    with pytest.raises(TokenizerError, match=r"tokenizer.ggml.tokens\[0\] is not a string"):
        GGUFSource.open(path).tokenizer()


def test_no_vocabulary_means_no_tokenizer(tmp_path: Path) -> None:
    tensors, meta = _tiny_llama_meta()
    assert GGUFSource.open(write_gguf(tmp_path / "m.gguf", tensors, meta)).tokenizer() is None


def test_chat_template_and_special_tokens_from_metadata(tmp_path: Path) -> None:
    tokens = ["<|start|>", "<|end|>"] + _byte_vocab()
    template = "{% for m in messages %}<|start|>{{ m['content'] }}<|end|>{% endfor %}"
    meta = _vocab_meta(tokens, [3, 3] + [1] * (len(tokens) - 2), [],
                       **{"tokenizer.ggml.pre": "gpt-2", "tokenizer.chat_template": template})
    tensors, model_meta = _tiny_llama_meta()
    tok = GGUFSource.open(write_gguf(tmp_path / "t.gguf", tensors, {**model_meta, **meta})).tokenizer()
    assert tok.chat_template == template
    assert (tok.bos_token, tok.eos_token) == ("<|start|>", "<|end|>")


# ---- broken files ---------------------------------------------------------------------------


def _assert_one_line_cli_error(path: Path, *needles: str, run: bool = False) -> None:
    proc = run_cli("run", "--model", path, "--prompt", "hi", "-n", "1") if run else run_cli("validate", "--model", path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelkit: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_garbage_gguf_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a valid GGUF"):
        modelkit.load(path)
    _assert_one_line_cli_error(path, "junk.gguf", "not a valid GGUF")


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.999])
def test_truncated_gguf_is_a_checkpoint_error(tmp_path: Path, keep: float) -> None:
    whole = fixture_as_gguf("llama_gqa", tmp_path / "whole.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(CheckpointError, match="cut.gguf"):
        modelkit.load(path)
    _assert_one_line_cli_error(path, "cut.gguf")


def test_huge_array_count_fails_fast(tmp_path: Path) -> None:
    # a header claiming 2**60 array elements must not be walked element by element
    good = write_gguf(tmp_path / "a.gguf", {}, {"x.list": [1, 2, 3]}).read_bytes()
    at = good.index(b"x.list") + len(b"x.list") + 4 + 4  # key, value type, item type
    bad = good[:at] + (2 ** 60).to_bytes(8, "little") + good[at + 8:]
    path = tmp_path / "huge.gguf"
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="more than the file can hold"):
        GGUFSource.open(path)


def test_magic_without_suffix_is_recognised(tmp_path: Path) -> None:
    path = fixture_as_gguf("llama_gqa", tmp_path / "model.bin")
    assert modelkit.load(path).name == "llama-gguf"


def test_split_gguf_is_refused(tmp_path: Path) -> None:
    tensors, meta = _tiny_llama_meta(**{"split.count": (2, gguf.GGUFValueType.UINT16)})
    with pytest.raises(CheckpointError, match="split into 2 files"):
        GGUFSource.open(write_gguf(tmp_path / "m-00001-of-00002.gguf", tensors, meta))


def test_undecodable_metadata_string_is_a_checkpoint_error(tmp_path: Path) -> None:
    tensors, meta = _tiny_llama_meta(**{"general.name": (b"\xff\xfe", gguf.GGUFValueType.STRING)})
    src = GGUFSource.open(write_gguf(tmp_path / "m.gguf", tensors, meta))
    with pytest.raises(CheckpointError, match="m.gguf: metadata key 'general.name' is unreadable"):
        src.config()


def test_folder_holding_one_gguf_file_loads_through_the_gguf_source(tmp_path: Path) -> None:
    # a downloaded repo folder with a .gguf and no safetensors (as `modelkit download --include` leaves)
    folder = tmp_path / "repo"
    folder.mkdir()
    fixture_as_gguf("llama_gqa", folder / "model.gguf")
    ids, logits = reference("llama_gqa")
    assert max_abs(modelkit.load(folder).forward(ids), logits) < ATOL
    fixture_as_gguf("llama_mqa_tied", folder / "other.gguf")
    with pytest.raises(CheckpointError, match="safetensors"):
        modelkit.load(folder)  # two candidates: nothing guessed
