"""GGUF files for tests: writing single tensors and golden fixtures in llama.cpp's layout, and finding
the real model files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from conftest import FIXTURES, fixture_path, read_tensors


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Any]], meta: dict[str, Any] | None = None,
               arch: str = "llama") -> Path:
    """A GGUF file with ``tensors`` (name -> (array, raw ggml type or None)) and metadata.

    ``meta`` values: str, bool, float (FLOAT32), int (UINT32), lists of str / int (INT32) /
    float (FLOAT32), or ``(value, GGUFValueType)`` to choose the type.
    """
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (meta or {}).items():
        if isinstance(value, tuple):
            w.add_key_value(key, value[0], value[1],
                            sub_type=gguf.GGUFValueType.INT32 if value[1] == gguf.GGUFValueType.ARRAY else None)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, list):
            w.add_array(key, value)
        else:
            raise TypeError(key)
    for name, (array, raw) in tensors.items():
        w.add_tensor(name, array, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (K passes its KV head count)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def tokenizer_meta(tokenizer_json: Path, *, pre: str = "gpt-2", add_bos: bool = False,
                   bos: int = 0, eos: int = 0, chat_template: str | None = None) -> dict[str, Any]:
    """tokenizer.ggml.* metadata for a byte-level BPE tokenizer.json, as llama.cpp writes it."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = dict(data["model"]["vocab"])
    specials = {t["content"]: t["id"] for t in data["added_tokens"] if t["special"]}
    vocab.update(specials)
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    meta = {} if chat_template is None else {"tokenizer.chat_template": chat_template}
    return {
        **meta,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": ([3 if t in specials else 1 for t in tokens], gguf.GGUFValueType.ARRAY),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": bos,
        "tokenizer.ggml.eos_token_id": eos,
        "tokenizer.ggml.add_bos_token": add_bos,
    }


def fixture_as_gguf(name: str, path: Path, qtype: Any = None, vocab: dict[str, Any] | None = None,
                    **tok: Any) -> Path:
    """A Llama golden fixture written as llama.cpp would write its GGUF (F32 unless ``qtype``);
    ``vocab`` replaces the tokenizer.ggml.* metadata of the fixtures' tokenizer."""
    cfg = json.loads((fixture_path(name) / "config.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tensors = {}
    for hf, array in read_tensors(fixture_path(name)).items():
        array = array.astype(np.float32)
        if hf.startswith("model.layers."):
            _, _, i, rest = hf.split(".", 3)
            gname = f"blk.{i}.{HF_TO_GGUF[rest]}"
            if rest == "self_attn.q_proj.weight":
                array = llama_cpp_permute(array, heads)
            elif rest == "self_attn.k_proj.weight":
                array = llama_cpp_permute(array, kv)
        else:
            gname = HF_TO_GGUF[hf]
        if qtype is not None and array.ndim == 2:
            tensors[gname] = (gguf.quants.quantize(array, qtype), qtype)
        else:
            tensors[gname] = (array, None)
    rope = cfg.get("rope_parameters") or {}
    meta = {
        "general.name": name,
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": cfg["hidden_size"],
        "llama.block_count": cfg["num_hidden_layers"],
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv,
        "llama.rope.freq_base": float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        "llama.attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]),
        "llama.rope.dimension_count": cfg["head_dim"],
        "llama.vocab_size": cfg["vocab_size"],
        **(tokenizer_meta(FIXTURES / "tokenizer.json", **tok) if vocab is None else vocab),
    }
    return write_gguf(path, tensors, meta)


def gemma3_fixture_as_gguf(path: Path, *, pattern: Any = "period", **meta_extra: Any) -> Path:
    """The tiny Gemma 3 golden fixture written as llama.cpp's converter writes a gemma3 GGUF:
    tensors named by gguf-py's TensorNameMap, every norm weight stored as 1 + w
    (Gemma3Model.norm_shift), Q/K rows untouched, the metadata of Gemma3Model.set_gguf_parameters.

    The converter writes no sliding-window pattern; the fixture's (two sliding layers, one full)
    is written as llama.cpp reads one: ``pattern="period"`` (a uint32 period), ``"flags"`` (one
    bool per layer) or ``None`` (no key: llama.cpp's default period of 6 applies).
    ``meta_extra`` adds or overrides metadata keys (``None`` drops one).
    """
    cfg = json.loads((fixture_path("gemma3_text") / "config.json").read_text())
    layers = cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, layers)
    tensors = {}
    for hf, array in read_tensors(fixture_path("gemma3_text")).items():
        gname = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        assert gname is not None, hf
        array = array.astype(np.float32)
        tensors[gname] = (array + np.float32(1.0) if hf.endswith("norm.weight") else array, None)
    rope = cfg["rope_parameters"]
    arch = "gemma3"
    meta: dict[str, Any] = {
        "general.name": "gemma3_text",
        gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch): cfg["max_position_embeddings"],
        gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch): cfg["hidden_size"],
        gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch): layers,
        gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch): cfg["intermediate_size"],
        gguf.Keys.Attention.HEAD_COUNT.format(arch=arch): cfg["num_attention_heads"],
        gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=arch): cfg["num_key_value_heads"],
        gguf.Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch): float(cfg["rms_norm_eps"]),
        gguf.Keys.Attention.KEY_LENGTH.format(arch=arch): cfg["head_dim"],
        gguf.Keys.Attention.VALUE_LENGTH.format(arch=arch): cfg["head_dim"],
        gguf.Keys.Rope.FREQ_BASE.format(arch=arch): float(rope["full_attention"]["rope_theta"]),
        gguf.Keys.Rope.SCALING_TYPE.format(arch=arch): rope["full_attention"]["rope_type"],
        gguf.Keys.Rope.SCALING_FACTOR.format(arch=arch): float(rope["full_attention"]["factor"]),
        gguf.Keys.Attention.SLIDING_WINDOW.format(arch=arch): cfg["sliding_window"],
        **tokenizer_meta(FIXTURES / "tokenizer.json"),
    }
    key = gguf.Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)
    if pattern == "period":
        meta[key] = cfg["layer_types"].index("full_attention") + 1
    elif pattern == "flags":
        meta[key] = [t == "sliding_attention" for t in cfg["layer_types"]]
    for k, v in meta_extra.items():
        meta[k] = v
    return write_gguf(path, tensors, {k: v for k, v in meta.items() if v is not None}, arch=arch)


def rewrite_gguf(src: Path, dst: Path, meta: dict[str, Any] | None = None,
                 tensors: dict[str, Any] | None = None) -> Path:
    """A copy of float GGUF ``src`` at ``dst`` with metadata keys changed (``None`` drops one)
    and tensors replaced (an array, or ``None`` to drop it): a file the converter wrote, with
    one thing wrong."""
    from modelkit_gguf.reader import open_gguf

    f = open_gguf(src)
    try:
        arch = f.metadata["general.architecture"]
        values = {k: v for k, v in f.metadata.items() if k != "general.architecture"}
        arrays = {n: np.array(f.tensor_data(n), np.float32).reshape(t.shape) for n, t in f.tensors.items()}
    finally:
        f.close()
    for table, changes in ((values, meta), (arrays, tensors)):
        for key, value in (changes or {}).items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return write_gguf(dst, {n: (a, None) for n, a in arrays.items()}, values, arch=arch)


# ---- dequantisation -------------------------------------------------------------------------

# per-type bound on |dequantised - original| / max|original| for round-to-nearest quantisers


def real_model_file(env_var: str, default: Path) -> Path | None:
    """A real model file the tests use: ``$env_var`` if set, else ``default``; None when absent."""
    env = os.environ.get(env_var)
    path = Path(env).expanduser() if env else default
    return path if path.is_file() else None



# what a refusal must not show: the mappings' transform names, canonical paths, placeholders
JARGON = ("falcon_qkv", "unpermute_rope", "undo_neg_exp", "on loading", "mapping", "layers.{i}", "canonical",
          "reshape", "slice", "split", "'attn", " attn ", "as stored", "None", "$")


def assert_plain(message: str) -> None:
    """A refusal of `modelkit convert` in plain words: none of the mappings' own terms."""
    for word in JARGON:
        assert word not in message, (word, message)
