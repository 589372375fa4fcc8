"""GGUF metadata -> a config.json-style dict with Hugging Face key names.

llama.cpp stores hyperparameters as ``{arch}.{key}`` (``llama.embedding_length``, ...; the key
names are gguf-py's ``gguf.Keys``). The weight source translates them to the names config.json
uses, so a GGUF mapping reads the same fields as its safetensors twin and ``modelkit convert``
can write config.json from them. What a GGUF does not store but llama.cpp decides in code (Gemma
3's sliding-window pattern, its local rotary base) is decided here the same way. Values with no
config.json equivalent go under ``"gguf"`` (``gguf.rope_dimension_count``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import MODEL_TENSOR, TENSOR_NAMES, Keys

from modelkit import CheckpointError

# config.json name <- GGUF key (gguf-py's template, "{arch}" filled in)
HPARAMS = {
    "hidden_size": Keys.LLM.EMBEDDING_LENGTH,
    "num_hidden_layers": Keys.LLM.BLOCK_COUNT,
    "intermediate_size": Keys.LLM.FEED_FORWARD_LENGTH,
    "num_attention_heads": Keys.Attention.HEAD_COUNT,
    "num_key_value_heads": Keys.Attention.HEAD_COUNT_KV,
    "head_dim": Keys.Attention.KEY_LENGTH,
    "rms_norm_eps": Keys.Attention.LAYERNORM_RMS_EPS,
    "layer_norm_epsilon": Keys.Attention.LAYERNORM_EPS,
    "rope_theta": Keys.Rope.FREQ_BASE,
    "max_position_embeddings": Keys.LLM.CONTEXT_LENGTH,
    "vocab_size": Keys.LLM.VOCAB_SIZE,
}

# config.json name <- tokenizer metadata key
TOKEN_IDS = {
    "bos_token_id": Keys.Tokenizer.BOS_ID,
    "eos_token_id": Keys.Tokenizer.EOS_ID,
    "pad_token_id": Keys.Tokenizer.PAD_ID,
}

# llama.cpp's rotary base of sliding-window layers when the file has no rope.freq_base_swa
# (llama_hparams::rope_freq_base_train_swa), and Gemma 3's period of sliding and full layers
# when it has no attention.sliding_window_pattern (llama_model_gemma3::load_arch_hparams)
DEFAULT_ROPE_BASE_SWA = 10000.0
GEMMA3_SWA_PERIOD = 6
GEMMA3_27B_LAYERS = 62  # the one size that scales queries by hidden / heads, not by head_dim


def tensor_name(kind: MODEL_TENSOR, suffix: str = "weight", layer: int = 0) -> str:
    """llama.cpp's name of a tensor (gguf-py's table): ``blk.0.attn_q.bias``, ``output.weight``."""
    return f"{TENSOR_NAMES[kind].format(bid=layer)}.{suffix}"


def _same_for_every_layer(value: Any, name: str, path: Path) -> Any:
    # some files store per-layer arrays (head_count_kv); a uniform one is a plain value
    if isinstance(value, list):
        if value and all(v == value[0] for v in value):
            return value[0]
        raise CheckpointError(f"{path}: '{name}' differs between layers ({value[:8]}...); "
                              f"modelkit's GGUF mappings need one value for every layer")
    return value


def _rope_scaling(meta: Mapping[str, Any], arch: str) -> dict[str, Any] | None:
    kind = meta.get(Keys.Rope.SCALING_TYPE.format(arch=arch))
    factor = meta.get(Keys.Rope.SCALING_FACTOR.format(arch=arch))
    if kind is None and meta.get(f"{arch}.rope.scale_linear") is not None:  # older files
        kind, factor = "linear", meta.get(f"{arch}.rope.scale_linear")
    if kind in (None, "none") or factor in (None, 1.0):
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": factor}
    original = meta.get(Keys.Rope.SCALING_ORIG_CTX_LEN.format(arch=arch))
    if original is not None:
        scaling["original_max_position_embeddings"] = original
    return scaling  # types other than linear are refused by the rotary block, by name


def sliding_layers(meta: Mapping[str, Any], arch: str, layers: int, period: int, path: Path) -> list[bool]:
    """Which layers use the sliding window, as llama.cpp decides it (``load_swa_pattern``): no
    window (absent or 0) means none; else ``attention.sliding_window_pattern`` as one flag per
    layer, or as a period ``n`` (layer ``i`` slides when ``i % n < n - 1``; 0: every layer), or,
    without the key, the architecture's default period."""
    window = meta.get(Keys.Attention.SLIDING_WINDOW.format(arch=arch))
    if not isinstance(window, int) or window <= 0:
        return [False] * layers
    key = Keys.Attention.SLIDING_WINDOW_PATTERN.format(arch=arch)
    pattern = meta.get(key, period)
    if isinstance(pattern, list):
        if len(pattern) != layers or not all(isinstance(p, bool) for p in pattern):
            raise CheckpointError(f"{path}: '{key}' must hold one true/false per layer ({layers}), "
                                  f"got {pattern[:8]}")
        return list(pattern)
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0:
        raise CheckpointError(f"{path}: '{key}' must be a layer period or one flag per layer, got {pattern!r}")
    return [pattern == 0 or i % pattern < pattern - 1 for i in range(layers)]


def _gemma3(meta: Mapping[str, Any], arch: str, cfg: dict[str, Any], path: Path) -> None:
    """Gemma 3's fields beyond Llama's, as llama.cpp's gemma3 loader (src/models/gemma3.cpp)
    decides them: what the file says, and llama.cpp's own defaults for what it does not."""
    layers = cfg.get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 1:
        return  # the mapping reports the missing block count
    sliding = sliding_layers(meta, arch, layers, GEMMA3_SWA_PERIOD, path)
    cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    window = meta.get(Keys.Attention.SLIDING_WINDOW.format(arch=arch))
    if any(sliding):
        cfg["sliding_window"] = window
    cfg["rope_local_base_freq"] = meta.get(Keys.Rope.FREQ_BASE_SWA.format(arch=arch), DEFAULT_ROPE_BASE_SWA)
    # queries are scaled by query_pre_attn_scalar ** -0.5: hidden / heads for the 27B model,
    # otherwise the head size (llama.cpp's f_attention_scale for gemma3)
    heads, head_dim = cfg.get("num_attention_heads"), cfg.get("head_dim")
    if layers == GEMMA3_27B_LAYERS and isinstance(heads, int) and heads > 0:
        cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // heads
    elif isinstance(head_dim, int):
        cfg["query_pre_attn_scalar"] = head_dim
    softcap = meta.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING.format(arch=arch))
    cfg["final_logit_softcapping"] = softcap if softcap else None  # 0 or absent: off, as llama.cpp
    cfg["attn_logit_softcapping"] = None  # Gemma 3 has none (the converter asserts it)


@dataclass(frozen=True)
class Architecture:
    """How one ``general.architecture`` becomes a config.json."""

    model_type: str  # config.json's model_type
    hf_class: str  # the transformers class a converted folder declares
    activation: tuple[str, str]  # (config.json key, value): llama.cpp's FFN activation
    extra: Callable[[Mapping[str, Any], str, dict[str, Any], Path], None] | None = None
    bias_keys: tuple[str, ...] = ("attention_bias", "mlp_bias")


ARCHITECTURES = {
    "llama": Architecture("llama", "LlamaForCausalLM", ("hidden_act", "silu")),
    # llama.cpp's LLM_FFN_GELU is the tanh approximation
    "gemma3": Architecture("gemma3_text", "Gemma3ForCausalLM", ("hidden_activation", "gelu_pytorch_tanh"),
                           _gemma3, ("attention_bias",)),
}
OTHER = Architecture("", "", ("hidden_act", "silu"))


def config_from_metadata(meta: Mapping[str, Any], tensor_names: set[str], path: Path) -> dict[str, Any]:
    """The model's config as config.json would spell it, read from GGUF metadata
    (:attr:`GGUFFile.metadata <modelkit_gguf.reader.GGUFFile.metadata>`)."""
    arch = meta.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{path}: no 'general.architecture' metadata; not a model GGUF")
    known = ARCHITECTURES.get(arch, OTHER)
    cfg: dict[str, Any] = {"model_type": known.model_type or arch}
    if known.hf_class:
        cfg["architectures"] = [known.hf_class]
    for name, key in HPARAMS.items():
        value = meta.get(key.format(arch=arch))
        if value is not None:
            cfg[name] = _same_for_every_layer(value, key.format(arch=arch), path)
    if "vocab_size" not in cfg:
        tokens = meta.get(Keys.Tokenizer.LIST)
        if isinstance(tokens, list):
            cfg["vocab_size"] = len(tokens)
    scaling = _rope_scaling(meta, arch)
    if scaling is not None:
        cfg["rope_scaling"] = scaling
    cfg[known.activation[0]] = known.activation[1]
    cfg["tie_word_embeddings"] = tensor_name(MODEL_TENSOR.OUTPUT) not in tensor_names
    biases = {"attention_bias": tensor_name(MODEL_TENSOR.ATTN_Q, "bias"),
              "mlp_bias": tensor_name(MODEL_TENSOR.FFN_UP, "bias")}
    for key in known.bias_keys:
        cfg[key] = biases[key] in tensor_names
    if known.extra is not None:
        known.extra(meta, arch, cfg, path)
    for name, key in TOKEN_IDS.items():
        value = meta.get(key)
        if isinstance(value, int):
            cfg[name] = value
    cfg["gguf"] = {
        "architecture": arch,
        "rope_dimension_count": meta.get(Keys.Rope.DIMENSION_COUNT.format(arch=arch)),
        "value_length": meta.get(Keys.Attention.VALUE_LENGTH.format(arch=arch)),
        "attn_logit_softcapping": meta.get(Keys.LLM.ATTN_LOGIT_SOFTCAPPING.format(arch=arch)),
        # llama.cpp's Llama 3.1+ rope scaling: per-dimension frequency factors as a tensor
        "rope_freqs": tensor_name(MODEL_TENSOR.ROPE_FREQS) in tensor_names,
        "name": meta.get(Keys.General.NAME),
    }
    return cfg
