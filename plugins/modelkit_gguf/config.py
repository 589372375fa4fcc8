"""GGUF metadata -> a config.json-style dict with Hugging Face key names.

llama.cpp stores hyperparameters as ``{arch}.{key}`` (``llama.embedding_length``, ...). The
weight source translates them to the names config.json uses, so a GGUF mapping reads the same
fields as its safetensors twin and ``modelkit convert`` can write config.json from them.
Values with no config.json equivalent go under ``"gguf"`` (``gguf.rope_dimension_count``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelkit import CheckpointError

# general.architecture -> the transformers class a converted folder declares
HF_CLASSES = {"llama": "LlamaForCausalLM"}

# config.json name <- GGUF key (after the "{arch}." prefix)
HPARAMS = {
    "hidden_size": "embedding_length",
    "num_hidden_layers": "block_count",
    "intermediate_size": "feed_forward_length",
    "num_attention_heads": "attention.head_count",
    "num_key_value_heads": "attention.head_count_kv",
    "head_dim": "attention.key_length",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "layer_norm_epsilon": "attention.layer_norm_epsilon",
    "rope_theta": "rope.freq_base",
    "max_position_embeddings": "context_length",
    "vocab_size": "vocab_size",
}

# config.json name <- tokenizer metadata key
TOKEN_IDS = {
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
}


def _same_for_every_layer(value: Any, name: str, path: Path) -> Any:
    # some files store per-layer arrays (head_count_kv); a uniform one is a plain value
    if isinstance(value, list):
        if value and all(v == value[0] for v in value):
            return value[0]
        raise CheckpointError(f"{path}: '{name}' differs between layers ({value[:8]}...); "
                              f"modelkit's GGUF mappings need one value for every layer")
    return value


def _rope_scaling(meta: Mapping[str, Any], arch: str) -> dict[str, Any] | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if kind is None and meta.get(f"{arch}.rope.scale_linear") is not None:
        kind, factor = "linear", meta.get(f"{arch}.rope.scale_linear")
    if kind in (None, "none") or factor in (None, 1.0):
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": factor}
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling  # types other than linear are refused by the rotary block, by name


def config_from_metadata(meta: Mapping[str, Any], tensor_names: set[str], path: Path) -> dict[str, Any]:
    """The model's config as config.json would spell it, read from GGUF metadata
    (:attr:`GGUFFile.metadata <modelkit_gguf.reader.GGUFFile.metadata>`)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{path}: no 'general.architecture' metadata; not a model GGUF")
    cfg: dict[str, Any] = {"model_type": arch}
    if arch in HF_CLASSES:
        cfg["architectures"] = [HF_CLASSES[arch]]
    for name, key in HPARAMS.items():
        value = meta.get(f"{arch}.{key}")
        if value is not None:
            cfg[name] = _same_for_every_layer(value, f"{arch}.{key}", path)
    if "vocab_size" not in cfg:
        tokens = meta.get("tokenizer.ggml.tokens")
        if isinstance(tokens, list):
            cfg["vocab_size"] = len(tokens)
    scaling = _rope_scaling(meta, arch)
    if scaling is not None:
        cfg["rope_scaling"] = scaling
    cfg["hidden_act"] = "silu"  # every architecture with a GGUF mapping here uses SwiGLU
    cfg["tie_word_embeddings"] = "output.weight" not in tensor_names
    cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    cfg["mlp_bias"] = "blk.0.ffn_up.bias" in tensor_names
    for name, key in TOKEN_IDS.items():
        value = meta.get(key)
        if isinstance(value, int):
            cfg[name] = value
    cfg["gguf"] = {
        "architecture": arch,
        "rope_dimension_count": meta.get(f"{arch}.rope.dimension_count"),
        # llama.cpp's Llama 3.1+ rope scaling: per-dimension frequency factors as a tensor
        "rope_freqs": "rope_freqs.weight" in tensor_names,
        "name": meta.get("general.name"),
    }
    return cfg
