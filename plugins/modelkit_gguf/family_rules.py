"""Config values a GGUF file does not store but llama.cpp decides in code, decided the same way.

Each rule takes the file's metadata (:class:`~modelkit_gguf.metadata.Metadata`), the config
being built (config.json names, the family's table already applied) and the file's tensors
(:class:`~modelkit_gguf.metadata.Tensors`: names, shapes, kinds), and sets config.json keys.
A family lists its rules in :data:`~modelkit_gguf.families.FAMILIES`; the llama.cpp source
each one follows is named in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gguf import Keys

from .metadata import Metadata, Tensors

Config = dict[str, Any]
Rule = Callable[[Metadata, Config, Tensors], None]

# llama.cpp's rotary base of sliding-window layers when the file has no rope.freq_base_swa
# (llama_hparams::rope_freq_base_train_swa), and Gemma 3's period of sliding and full layers
# when it has no attention.sliding_window_pattern (llama_model_gemma3::load_arch_hparams)
DEFAULT_ROPE_BASE_SWA = 10000.0
GEMMA3_SWA_PERIOD = 6
GEMMA3_27B_LAYERS = 62  # the one size that scales queries by hidden / heads, not by head_dim


def _layers(cfg: Config) -> int | None:
    layers = cfg.get("num_hidden_layers")
    return layers if isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1 else None


def sliding_layers(m: Metadata, layers: int, period: int) -> list[bool]:
    """Which layers use the sliding window, as llama.cpp decides it (``load_swa_pattern``): no
    window (absent or 0) means none; else ``attention.sliding_window_pattern`` as one flag per
    layer, or as a period ``n`` (layer ``i`` slides when ``i % n < n - 1``; 0: every layer), or,
    without the key, the architecture's default period."""
    window = m.get(Keys.Attention.SLIDING_WINDOW)
    if not isinstance(window, int) or window <= 0:
        return [False] * layers
    key = Keys.Attention.SLIDING_WINDOW_PATTERN
    pattern = m.get(key, period)
    if isinstance(pattern, list):
        if len(pattern) != layers or not all(isinstance(p, bool) for p in pattern):
            raise m.error(key, f"must hold one true/false per layer ({layers}), got {pattern[:8]}")
        return list(pattern)
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0:
        raise m.error(key, f"must be a layer period or one flag per layer, got {pattern!r}")
    return [pattern == 0 or i % pattern < pattern - 1 for i in range(layers)]


def gemma3(m: Metadata, cfg: Config, t: Tensors) -> None:
    """Gemma 3's fields beyond Llama's, as llama.cpp's gemma3 loader (src/models/gemma3.cpp)
    decides them: what the file says, and llama.cpp's own defaults for what it does not."""
    layers = _layers(cfg)
    if layers is None:
        return  # the mapping reports the missing block count
    sliding = sliding_layers(m, layers, GEMMA3_SWA_PERIOD)
    cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    if any(sliding):
        cfg["sliding_window"] = m.get(Keys.Attention.SLIDING_WINDOW)
    cfg["rope_local_base_freq"] = m.get(Keys.Rope.FREQ_BASE_SWA, DEFAULT_ROPE_BASE_SWA)
    # queries are scaled by query_pre_attn_scalar ** -0.5: hidden / heads for the 27B model,
    # otherwise the head size (llama.cpp's f_attention_scale for gemma3)
    heads, head_dim = cfg.get("num_attention_heads"), cfg.get("head_dim")
    if layers == GEMMA3_27B_LAYERS and isinstance(heads, int) and heads > 0:
        cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // heads
    elif isinstance(head_dim, int):
        cfg["query_pre_attn_scalar"] = head_dim
    softcap = m.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING)
    cfg["final_logit_softcapping"] = softcap if softcap else None  # 0 or absent: off, as llama.cpp
    cfg["attn_logit_softcapping"] = None  # Gemma 3 has none (the converter asserts it)


def granite_multipliers(m: Metadata, cfg: Config, t: Tensors) -> None:
    """Granite's four scalars (llama.cpp's f_embedding_scale, f_residual_scale, f_logit_scale,
    f_attention_scale): absent or 0 means off, and attention is then scaled by 1/sqrt(head
    size), as llama.cpp does (Hugging Face's default multiplier would be 1)."""
    for key in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        if not cfg.get(key):
            cfg[key] = 1.0
    if not cfg.get("attention_multiplier"):
        heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
        head_dim = cfg.get("head_dim") or (hidden // heads if isinstance(hidden, int) and heads else None)
        if isinstance(head_dim, int) and head_dim > 0:
            cfg["attention_multiplier"] = 1.0 / math.sqrt(head_dim)


def granite_dense_mlp(m: Metadata, cfg: Config, t: Tensors) -> None:
    """A dense Granite file the converter wrote from an attention-only Granite 4.0-H checkpoint
    (GraniteHybridModel falls back to arch ``granite``) has the shared MLP's size under
    ``expert_shared_feed_forward_length``; its ``feed_forward_length`` is the unused expert size
    of the Hugging Face config. The tensors are the shared MLP's, so that size is the one."""
    shared = m.count(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH)
    if shared and not m.count(Keys.LLM.EXPERT_COUNT, 0):
        cfg["intermediate_size"] = shared


def granite_hybrid(m: Metadata, cfg: Config, t: Tensors) -> None:
    """Granite 4.0-H's layer kinds and Mamba2 sizes, as llama.cpp's granite-hybrid loader reads
    them (src/models/granite-hybrid.cpp): a layer is Mamba2 exactly when its
    ``attention.head_count_kv`` is 0; ``ssm.time_step_rank`` is the number of Mamba heads (not
    a rank: the converter writes ``mamba_n_heads`` there); ``ssm.inner_size`` is
    ``mamba_expand * hidden``; rotary positions are on unless ``rope.scaling.finetuned`` is
    false (the converter writes false for hybrids, whose attention has no positions)."""
    layers = _layers(cfg)
    if layers is None:
        return
    kv = m.per_layer(Keys.Attention.HEAD_COUNT_KV, layers) or [0] * layers
    heads = m.per_layer(Keys.Attention.HEAD_COUNT, layers) or [0] * layers
    attention = [i for i, n in enumerate(kv) if n]
    cfg["layer_types"] = ["attention" if n else "mamba" for n in kv]
    if attention:
        for name, values, template in (("num_key_value_heads", kv, Keys.Attention.HEAD_COUNT_KV),
                                       ("num_attention_heads", heads, Keys.Attention.HEAD_COUNT)):
            used = {values[i] for i in attention}
            if len(used) != 1:
                raise m.error(template, f"differs between attention layers ({sorted(used)}); "
                                        f"modelkit's attention layers share one head count")
            cfg[name] = used.pop()
    elif heads[0]:
        cfg["num_attention_heads"] = heads[0]
    hidden = cfg.get("hidden_size")
    inner = m.count(Keys.SSM.INNER_SIZE)
    if inner is not None and isinstance(hidden, int) and hidden > 0:
        if inner % hidden:
            raise m.error(Keys.SSM.INNER_SIZE, f"({inner}) is not a multiple of the hidden size {hidden}")
        cfg["mamba_expand"] = inner // hidden
        mamba_heads = cfg.get("mamba_n_heads")
        if isinstance(mamba_heads, int) and mamba_heads > 0:
            cfg["mamba_d_head"] = inner // mamba_heads
    finetuned = m.get(Keys.Rope.SCALING_FINETUNED, True)
    cfg["position_embedding_type"] = "rope" if finetuned else "nope"
    if "shared_intermediate_size" not in cfg and "intermediate_size" in cfg:
        cfg["shared_intermediate_size"] = cfg["intermediate_size"]
    if not m.count(Keys.LLM.EXPERT_COUNT, 0):
        cfg["num_local_experts"] = 0
        cfg["num_experts_per_tok"] = 0


def _head_dim(cfg: Config) -> int | None:
    head_dim = cfg.get("head_dim")
    heads, hidden = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    if not isinstance(head_dim, int) and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        head_dim = hidden // heads
    return head_dim if isinstance(head_dim, int) and head_dim > 0 else None


def partial_rotary(m: Metadata, cfg: Config, t: Tensors) -> None:
    """``partial_rotary_factor`` from ``rope.dimension_count`` (rotary channels per head), which
    the converter writes as ``int(factor * head size)`` (Phi-2, Phi-3, StableLM, GPT-NeoX)."""
    rotary, head_dim = m.count(Keys.Rope.DIMENSION_COUNT), _head_dim(cfg)
    if rotary is not None and head_dim:
        if rotary > head_dim:
            raise m.error(Keys.Rope.DIMENSION_COUNT, f"({rotary}) is more than the head size {head_dim}")
        cfg["partial_rotary_factor"] = rotary / head_dim


def ffn_size(key: str) -> Rule:
    """A rule setting ``key`` to the MLP width the tensors have: the converters of GPT-2,
    StarCoder, Phi-2 and BLOOM write ``feed_forward_length`` as 4 * hidden whatever the
    config says (llama.cpp then refuses a file whose tensors differ); the tensors are right."""
    def rule(m: Metadata, cfg: Config, t: Tensors) -> None:
        rows = t.rows("ffn_up.weight")
        if rows:
            cfg[key] = rows
    return rule


def sliding_pattern(period: int) -> Rule:
    """A rule for families whose loader calls ``load_swa_pattern(ml, period)`` (Cohere 2: 4):
    ``layer_types`` from ``attention.sliding_window_pattern``, else that period."""
    def rule(m: Metadata, cfg: Config, t: Tensors) -> None:
        layers = _layers(cfg)
        if layers is not None:
            sliding = sliding_layers(m, layers, period)
            cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    return rule


GEMMA2_27B_LAYERS = 46
GEMMA2_WINDOW = 4096  # llama.cpp's n_swa for gemma2 when the file has none
GEMMA2_SOFTCAPS = (50.0, 30.0)  # llama_hparams' defaults: attention, final logits


def gemma2(m: Metadata, cfg: Config, t: Tensors) -> None:
    """Gemma 2 as llama.cpp's gemma2 loader has it (src/models/gemma2.cpp): every other layer
    slides (``load_swa_pattern(ml, 2)``), the window is 4096 without the key, both soft caps
    are on (50 and 30 without their keys), and queries are scaled by 1/sqrt(head size), or by
    1/sqrt(hidden / heads) for the 46-layer model (27B)."""
    layers = _layers(cfg)
    if layers is None:
        return
    window = m.get(Keys.Attention.SLIDING_WINDOW) or GEMMA2_WINDOW
    sliding = sliding_layers(m, layers, 2) if m.get(Keys.Attention.SLIDING_WINDOW) else \
        [i % 2 == 0 for i in range(layers)]
    cfg["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    cfg["sliding_window"] = window
    cfg["attn_logit_softcapping"] = m.get(Keys.LLM.ATTN_LOGIT_SOFTCAPPING) or GEMMA2_SOFTCAPS[0]
    cfg["final_logit_softcapping"] = m.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING) or GEMMA2_SOFTCAPS[1]
    heads, head_dim = cfg.get("num_attention_heads"), _head_dim(cfg)
    if layers == GEMMA2_27B_LAYERS and isinstance(heads, int) and heads > 0:
        cfg["query_pre_attn_scalar"] = cfg["hidden_size"] // heads
    elif head_dim:
        cfg["query_pre_attn_scalar"] = head_dim


def falcon(m: Metadata, cfg: Config, t: Tensors) -> None:
    """Falcon's layout from what the file has (llama.cpp's falcon loader): a second norm per
    layer (``attn_norm_2``, falcon-40b's ln_mlp) or several KV heads mean the new decoder
    architecture; one KV head otherwise means falcon-7b's multi-query. llama.cpp runs every
    Falcon with parallel attention and rotary positions."""
    kv = cfg.get("num_kv_heads")
    two_norms = t.has("attn_norm_2.weight")
    new = two_norms or (isinstance(kv, int) and kv > 1)
    cfg["new_decoder_architecture"] = new
    cfg["num_ln_in_parallel_attn"] = 2 if two_norms else 1
    cfg["multi_query"] = not new and kv == 1
    cfg["parallel_attn"] = True
    cfg["alibi"] = False


def mamba2_sizes(m: Metadata, cfg: Config, t: Tensors) -> None:
    """Mamba's and Mamba2's ``expand``, and Mamba2's ``head_dim``, from ``ssm.inner_size``
    (llama.cpp's mamba2 loader reads d_inner and the head count, ``ssm.time_step_rank``, and
    divides; Mamba 1 has no head count)."""
    hidden, inner, heads = cfg.get("hidden_size"), m.count(Keys.SSM.INNER_SIZE), cfg.get("num_heads")
    if inner is None or not isinstance(hidden, int) or hidden <= 0:
        return
    if inner % hidden:
        raise m.error(Keys.SSM.INNER_SIZE, f"({inner}) is not a multiple of the hidden size {hidden}")
    cfg["expand"] = inner // hidden
    if isinstance(heads, int) and heads > 0:
        cfg["head_dim"] = inner // heads


def one_kv_head_is_multi_query(m: Metadata, cfg: Config, t: Tensors) -> None:
    """StarCoder (GPTBigCode): the converter always writes ``head_count_kv`` 1, which is
    ``multi_query``; a multi-head StarCoder cannot be told apart, and llama.cpp reads it as
    multi-query too."""
    cfg["multi_query"] = m.get(Keys.Attention.HEAD_COUNT_KV, 1) == 1


def kv_heads_from_tensors(m: Metadata, cfg: Config, t: Tensors) -> None:
    """``num_key_value_heads`` from the key projection's rows: Phi-2's converter writes
    ``head_count_kv`` = ``head_count`` whatever the config says (llama.cpp then refuses a file
    whose key projection is narrower); the tensor is right."""
    rows, head_dim = t.rows("attn_k.weight"), _head_dim(cfg)
    if rows and head_dim and rows % head_dim == 0:
        cfg["num_key_value_heads"] = rows // head_dim


def lfm2(m: Metadata, cfg: Config, t: Tensors) -> None:
    """LFM2's layer kinds, as llama.cpp's lfm2 loader reads them (src/models/lfm2.cpp): a layer
    is a short convolution exactly when its ``attention.head_count_kv`` is 0 (LFM2Model writes
    0 for them); the attention layers share one KV head count."""
    layers = _layers(cfg)
    if layers is None:
        return
    kv = m.per_layer(Keys.Attention.HEAD_COUNT_KV, layers) or [0] * layers
    cfg["layer_types"] = ["full_attention" if n else "conv" for n in kv]
    used = {n for n in kv if n}
    if len(used) > 1:
        raise m.error(Keys.Attention.HEAD_COUNT_KV, f"differs between attention layers ({sorted(used)}); "
                                                    f"modelkit's attention layers share one head count")
    if used:
        cfg["num_key_value_heads"] = used.pop()
