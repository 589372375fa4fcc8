"""The metadata of a GGUF file written from a Hugging Face folder: the inverse of
:mod:`.config` (the family's table of ``{arch}.*`` keys, and what its rules decide) and of
:mod:`.tokenizer` (a byte-level BPE tokenizer.json as llama.cpp's ``tokenizer.ggml.*`` keys).

Values come from the folder's plan: each config.json key of the family's table is read through
the Hugging Face mapping's field that reads it (so ``rope_parameters.rope_theta`` and derived
defaults count), else from config.json as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from gguf import GGUFValueType, Keys

from modelkit import CheckpointError, Plan

from . import family_rules as rules
from .families import Family
from .tokenizer import PRE_TOKENIZERS

# the context length the converter writes for models without positions to bound (Mamba2Model,
# GraniteHybridModel without rope): nothing limits them
UNBOUNDED_CONTEXT = 2 ** 20

Meta = dict[str, Any]  # GGUF key -> value (a Python value, or (value, GGUFValueType) to choose the type)


def _has(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return False
        node = node[part]
    return True


def hf_value(plan: Plan, raw: dict[str, Any], key: str) -> Any:
    """config.json's ``key`` as the folder's mapping resolved it, when config.json says it (under
    that name or another the same field reads: ``rope_parameters.rope_theta``); None when it
    does not, so that a mapping's default is not written as if the folder had it."""
    for field in plan.mapping.fields:
        if key in field.sources and any(_has(raw, source) for source in field.sources):
            if plan.config.get(field.name) is not None:
                return plan.config[field.name]
    return raw.get(key)


def _block_option(plan: Plan, block: str, option: str) -> Any:
    for layer in plan.layers:
        if block in layer.blocks and layer.blocks[block].options.get(option) is not None:
            return layer.blocks[block].options[option]
    return None


def _layer_kinds(plan: Plan) -> list[str]:
    return list(plan.config.get("layer_types") or [])


def attention_option(plan: Plan, option: str, sliding: bool | None = None) -> Any:
    """An option of the first attention block (of a sliding or a full layer, when asked)."""
    for layer in plan.layers:
        attn = layer.blocks.get("attn")
        if attn is not None and (sliding is None or bool(attn.options.get("window")) == sliding):
            return attn.options.get(option)
    return None


def _granite_hybrid(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    # a layer with no KV heads is a Mamba2 layer; the rest of the ssm.* keys are the table's
    kinds, kv = _layer_kinds(plan), attention_option(plan, "num_kv_heads") or 0
    meta[Keys.Attention.HEAD_COUNT_KV] = ([kv if k == "attention" else 0 for k in kinds], GGUFValueType.ARRAY)
    meta[Keys.Attention.HEAD_COUNT] = plan.config["num_heads"]
    meta[Keys.SSM.INNER_SIZE] = plan.config["mamba_d_inner"]
    meta[Keys.Rope.SCALING_FINETUNED] = plan.config.get("position_embedding_type") == "rope"
    meta[Keys.Rope.DIMENSION_COUNT] = plan.config["head_dim"]  # written with or without rotary


def _lfm2(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    # a short-convolution layer has no KV heads; the MLP's width as it runs (auto-adjusted or not)
    kv = attention_option(plan, "num_kv_heads") or 0
    meta[Keys.Attention.HEAD_COUNT_KV] = ([kv if "attn" in layer.blocks else 0 for layer in plan.layers],
                                          GGUFValueType.ARRAY)
    meta[Keys.LLM.FEED_FORWARD_LENGTH] = plan.config["ffn_size"]


def _sliding_flags(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    # llama.cpp reads attention.sliding_window_pattern as one flag per layer (load_swa_pattern)
    kinds = _layer_kinds(plan)
    if kinds and plan.config.get("sliding_window"):
        meta[Keys.Attention.SLIDING_WINDOW] = plan.config["sliding_window"]
        meta[Keys.Attention.SLIDING_WINDOW_PATTERN] = [k == "sliding_attention" for k in kinds]


def _gemma3(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    _sliding_flags(plan, raw, arch, meta)
    local = attention_option(plan, "rope_theta", sliding=True)
    if local is not None:
        meta[Keys.Rope.FREQ_BASE_SWA] = float(local)
    if plan.config.get("final_logit_softcapping"):
        meta[Keys.LLM.FINAL_LOGIT_SOFTCAPPING] = float(plan.config["final_logit_softcapping"])


def _gemma2(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    _sliding_flags(plan, raw, arch, meta)
    for key, name in ((Keys.LLM.ATTN_LOGIT_SOFTCAPPING, "attn_logit_softcapping"),
                      (Keys.LLM.FINAL_LOGIT_SOFTCAPPING, "final_logit_softcapping")):
        if plan.config.get(name):
            meta[key] = float(plan.config[name])


def _partial_rotary(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    factor = plan.config.get("partial_rotary_factor", 1.0)
    meta[Keys.Rope.DIMENSION_COUNT] = int(round(factor * plan.config["head_dim"]))


def _mamba2_sizes(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    # the mixer's inner width: mamba2's and granite's mamba_d_inner, mamba's d_inner
    meta[Keys.SSM.INNER_SIZE] = plan.config["mamba_d_inner" if "mamba_d_inner" in plan.config else "d_inner"]


def _kv_heads(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    # the KV head count the attention runs with (Falcon and StarCoder derive it from multi_query)
    meta[Keys.Attention.HEAD_COUNT_KV] = attention_option(plan, "num_kv_heads")


def _shared_mlp(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    # an attention-only Granite 4.0-H written as dense granite: the shared MLP's size
    if plan.config.get("shared_intermediate_size"):
        meta[Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH] = plan.config["shared_intermediate_size"]
        meta[Keys.Rope.SCALING_FINETUNED] = True


def _nothing(plan: Plan, raw: dict[str, Any], arch: str, meta: Meta) -> None:
    """The rule reads tensors or fixed choices only: there is no metadata to write."""


# a family rule -> what writes the metadata it reads
INVERSES: dict[Callable[..., None], Callable[[Plan, dict[str, Any], str, Meta], None]] = {
    rules.granite_hybrid: _granite_hybrid, rules.granite_multipliers: _nothing,
    rules.granite_dense_mlp: _shared_mlp, rules.gemma3: _gemma3, rules.gemma2: _gemma2,
    rules.partial_rotary: _partial_rotary, rules.mamba2_sizes: _mamba2_sizes,
    rules.one_kv_head_is_multi_query: _kv_heads, rules.falcon: _kv_heads,
    rules.kv_heads_from_tensors: _nothing, rules.lfm2: _lfm2,
}


def _inverse(rule: Callable[..., None]) -> Callable[[Plan, dict[str, Any], str, Meta], None] | None:
    if rule in INVERSES:
        return INVERSES[rule]
    name = getattr(rule, "__qualname__", "")
    if name.startswith("ffn_size."):
        return _nothing
    if name.startswith("sliding_pattern."):
        return _sliding_flags
    return None


def model_metadata(family: Family, plan: Plan, raw: dict[str, Any]) -> Meta:
    """``{arch}.*`` metadata for the folder's model, keys filled in for ``family.arch``."""
    meta: Meta = {Keys.LLM.VOCAB_SIZE: plan.config["vocab_size"], Keys.LLM.BLOCK_COUNT: len(plan.layers)}
    for hf_key, template in family.metadata_table().items():
        value = hf_value(plan, raw, hf_key)
        if value is None or isinstance(value, (dict, list)) and not value:
            continue
        if isinstance(value, bool) or isinstance(value, (int, float, str)):
            meta[template] = value
    # what llama.cpp needs that config.json may leave to a default: the blocks' own sizes
    for template, block, option in ((Keys.Attention.HEAD_COUNT, "attn", "num_heads"),
                                    (Keys.Attention.HEAD_COUNT_KV, "attn", "num_kv_heads"),
                                    (Keys.LLM.FEED_FORWARD_LENGTH, "mlp", "intermediate_size")):
        if template not in meta and template in family.metadata_table().values():
            value = _block_option(plan, block, option)
            if value is not None:
                meta[template] = value
    if Keys.LLM.CONTEXT_LENGTH not in meta:  # llama.cpp requires one; BloomModel's choice
        meta[Keys.LLM.CONTEXT_LENGTH] = raw.get("seq_length", plan.config["hidden_size"])
    if Keys.Attention.KEY_LENGTH in meta:
        meta[Keys.Attention.VALUE_LENGTH] = meta[Keys.Attention.KEY_LENGTH]
    meta.update(family.gguf_constants)
    rope = plan.config.get("rope_scaling")
    kind = rope.get("rope_type", "default") if isinstance(rope, dict) else None
    if kind == "linear":
        meta[Keys.Rope.SCALING_TYPE] = "linear"
        meta[Keys.Rope.SCALING_FACTOR] = float(rope["factor"])
    elif kind not in (None, "default", "llama3"):  # llama3: the rope_freqs.weight tensor (export.py)
        raise CheckpointError(f"cannot convert this folder to a GGUF file: its rope scaling is {kind!r}, and "
                              f"modelkit writes only linear and llama3 rope scaling into GGUF files")
    positions = {layer.blocks["attn"].options.get("positions") for layer in plan.layers if "attn" in layer.blocks}
    head_dim = attention_option(plan, "head_dim")
    if head_dim and "rope" in positions:
        meta[Keys.Rope.DIMENSION_COUNT] = head_dim
    if "rope" not in positions and any("ssm" in layer.blocks for layer in plan.layers):
        meta[Keys.LLM.CONTEXT_LENGTH] = UNBOUNDED_CONTEXT
    for rule in family.rules:
        inverse = _inverse(rule)
        if inverse is None:
            raise CheckpointError(f"cannot convert this folder to a GGUF file of llama.cpp's {family.arch} "
                                  f"architecture: modelkit does not yet write all of the metadata llama.cpp "
                                  f"reads for it")
        inverse(plan, raw, family.arch, meta)
    return {key.format(arch=family.arch): value for key, value in meta.items()}


# ---- the tokenizer ------------------------------------------------------------------------------

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def _pre_name(pre: Any) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer (None: none splits text this way)."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") != "Sequence":
        return None
    steps = pre.get("pretokenizers") or []
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    tail = steps[-1] if steps else {}
    if not regexes or None in regexes or tail.get("type") != "ByteLevel" or tail.get("use_regex", True):
        return None
    for name, spec in PRE_TOKENIZERS.items():
        if spec["regexes"] == regexes:
            return name
    return None


def tokenizer_metadata(source: Any, raw: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """``tokenizer.ggml.*`` keys for the folder's tokenizer (a byte-level BPE tokenizer.json),
    as llama.cpp's converter writes them for a ``gpt2`` vocabulary."""
    tok = source.tokenizer()
    if tok is None:
        raise CheckpointError(f"{source.path}: the folder has no tokenizer; a GGUF file carries one, and "
                              f"llama.cpp cannot run without it")
    data = json.loads(tok.backend.to_str())
    model = data.get("model") or {}
    pre = _pre_name(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or model.get("byte_fallback") or pre is None:
        raise CheckpointError(f"{source.path}: only byte-level BPE tokenizers (GPT-2's kind) can be written "
                              f"to GGUF here, with a pre-tokenizer llama.cpp names; this one is "
                              f"{model.get('type')} with {(data.get('pre_tokenizer') or {}).get('type')}")
    added = {t["id"]: t for t in data.get("added_tokens") or []}
    by_id = {i: t for t, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [(CONTROL if added[i].get("special") else USER_DEFINED) if i in added
             else NORMAL if i in by_id else UNUSED for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    meta: dict[str, Any] = {
        Keys.Tokenizer.MODEL: "gpt2", Keys.Tokenizer.PRE: pre, Keys.Tokenizer.LIST: tokens,
        Keys.Tokenizer.TOKEN_TYPE: (types, GGUFValueType.ARRAY), Keys.Tokenizer.MERGES: merges,
    }
    for key, name in ((Keys.Tokenizer.BOS_ID, "bos_token_id"), (Keys.Tokenizer.EOS_ID, "eos_token_id"),
                      (Keys.Tokenizer.PAD_ID, "pad_token_id")):
        if isinstance(raw.get(name), int):
            meta[key] = raw[name]
    probe = tok.backend.encode("a").ids
    meta[Keys.Tokenizer.ADD_BOS] = bool(probe) and probe[0] == raw.get("bos_token_id") and len(probe) > 1
    meta[Keys.Tokenizer.ADD_EOS] = bool(probe) and probe[-1] == raw.get("eos_token_id") and len(probe) > 1
    if tok.chat_template:
        meta[Keys.Tokenizer.CHAT_TEMPLATE] = tok.chat_template
    return meta


def float32_safe(value: Any) -> Any:
    """Python floats as float32 values (what a GGUF FLOAT32 holds), others as they are."""
    return float(np.float32(value)) if isinstance(value, float) else value
