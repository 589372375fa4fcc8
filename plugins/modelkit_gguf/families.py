"""The model families llama.cpp writes as GGUF, one row each: what modelkit needs beyond names.

A GGUF mapping is the family's Hugging Face mapping with llama.cpp's tensor names. The names
are not written by hand: ``derive.py`` maps each checkpoint name of the Hugging Face mapping
through gguf-py's ``TensorNameMap`` for the architecture and writes ``mappings/NAME.yaml``
(``python -m modelkit_gguf.derive``). A row here says only what llama.cpp's converter
(``convert_hf_to_gguf.py``) does beyond renaming:

- ``metadata``: config.json keys read from ``{arch}.*`` metadata, beyond :data:`COMMON`
  (``None`` drops a common one, for a rule to decide instead);
- ``constants``: what llama.cpp fixes in code for the architecture (the activation);
- ``presence``: config.json flags that say whether the file has a tensor (``attn_q.bias``);
- ``rules``: functions (:mod:`.family_rules`) for values llama.cpp decides in code;
- ``applied``: transforms of the Hugging Face mapping that the converter already applied to
  the stored tensors, so the GGUF mapping does not apply them again;
- ``yaml``: mapping text added as written, per section (checks, block options, and the
  ``weights`` entries whose tensors the converter changed, each with the transform that undoes
  the change and why);
- ``gguf_constants``: metadata the converter writes as fixed values, for ``modelkit convert``
  to write too;
- ``when``: for a family the converter writes under another's architecture (Mixtral as
  ``llama``), the ``{arch}.*`` key whose non-zero value tells its files apart (``expert_count``).

A family llama.cpp adds later is one row, then ``python -m modelkit_gguf.derive``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gguf import Keys

from . import family_rules as rules
from .fragments import (COHERE2_NO_QK_NORM, FALCON_QKV, FULL_ROTARY, GEMMA3, GRANITE_HYBRID, GRANITE_ROPE, LFM2, LLAMA_DEFAULTS, MAMBA, MAMBA2,
                        NO_DENSE_MLP, NO_HEAD, PHI2_NO_QK_NORM, PHI3_NO_GATE_BIAS, QKV_THIRDS, ROPE_FREQS,
                        STABLELM_QK_NORMS, STACKED_EXPERTS, UNPERMUTE_QK, Yaml)
from .metadata import Metadata, Tensors

Rule = Callable[[Metadata, dict[str, Any], Tensors], None]


@dataclass(frozen=True)
class Family:
    """One ``general.architecture`` of llama.cpp and the modelkit mapping it is."""

    arch: str  # general.architecture, llama.cpp's name (gguf-py's MODEL_ARCH_NAMES)
    mapping: str  # the modelkit (Hugging Face) mapping it extends; the GGUF one is NAME-gguf
    model_type: str  # config.json's model_type for the Hugging Face mapping
    hf_class: str  # the transformers class a converted folder declares
    description: str
    metadata: dict[str, str | None] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    presence: dict[str, str] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    applied: tuple[str, ...] = ()
    yaml: tuple[Yaml, ...] = ()
    # metadata the converter writes as fixed values, which modelkit's writer writes too
    # (``{arch}.attention.layer_norm_epsilon`` for OLMo, which llama.cpp requires)
    gguf_constants: dict[str, Any] = field(default_factory=dict)
    # a second family of the same architecture: it serves the files where this key is non-zero
    when: str | None = None

    # config.json name <- GGUF key, for every architecture (gguf-py's templates)
    COMMON: ClassVar[dict[str, str]] = {
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

    @property
    def name(self) -> str:
        """The GGUF mapping's architecture name (``--arch``)."""
        return f"{self.mapping}-gguf"

    @classmethod
    def common_table(cls) -> dict[str, str]:
        return dict(cls.COMMON)

    def metadata_table(self) -> dict[str, str]:
        """config.json name <- GGUF key template for this family."""
        table = self.common_table()
        for key, template in self.metadata.items():
            if template is None:
                table.pop(key, None)
            else:
                table[key] = template
        return table


LLAMA_BIASES = {"attention_bias": "attn_q.bias", "mlp_bias": "ffn_up.bias"}
SILU = {"hidden_act": "silu"}  # llama.cpp's LLM_FFN_SILU

GRANITE_SCALES = {  # Granite's multipliers, as the converter writes them (GraniteModel)
    "embedding_multiplier": Keys.LLM.EMBEDDING_SCALE,
    "residual_multiplier": Keys.LLM.RESIDUAL_SCALE,
    "logits_scaling": Keys.LLM.LOGIT_SCALE,
    "attention_multiplier": Keys.Attention.SCALE,
}
GPT2_NAMES = {  # GPT-2 style config.json names
    "n_embd": Keys.LLM.EMBEDDING_LENGTH, "n_layer": Keys.LLM.BLOCK_COUNT, "n_head": Keys.Attention.HEAD_COUNT,
    "n_positions": Keys.LLM.CONTEXT_LENGTH, "n_inner": Keys.LLM.FEED_FORWARD_LENGTH, "hidden_size": None, "num_hidden_layers": None,
    "num_attention_heads": None, "num_key_value_heads": None, "intermediate_size": None,
    "max_position_embeddings": None,
}
LAYER_NORM_EPS = {"layer_norm_eps": Keys.Attention.LAYERNORM_EPS}
EXPERTS = {"num_local_experts": Keys.LLM.EXPERT_COUNT, "num_experts_per_tok": Keys.LLM.EXPERT_USED_COUNT}
MAMBA2_SIZES = {"mamba_d_conv": Keys.SSM.CONV_KERNEL, "mamba_d_state": Keys.SSM.STATE_SIZE,
                "mamba_n_groups": Keys.SSM.GROUP_COUNT, "mamba_n_heads": Keys.SSM.TIME_STEP_RANK}


ROWS: tuple[Family, ...] = (
    Family("llama", "llama", "llama", "LlamaForCausalLM",
           "Llama family in llama.cpp's GGUF layout (Llama 1/2/3, SmolLM, TinyLlama, Mistral 7B)",
           constants=SILU, presence=LLAMA_BIASES,
           yaml=(LLAMA_DEFAULTS, FULL_ROTARY, UNPERMUTE_QK, ROPE_FREQS)),
    Family("llama", "mixtral", "mixtral", "MixtralForCausalLM",
           "Mixtral (Llama layers with routed experts) in llama.cpp's GGUF layout, which the converter "
           "writes as llama",
           # llama.cpp's llama graph routes by a softmax over all experts, top k renormalised, as Mixtral
           metadata=EXPERTS, constants=SILU, presence={"attention_bias": "attn_q.bias"},
           yaml=(LLAMA_DEFAULTS, FULL_ROTARY, UNPERMUTE_QK, ROPE_FREQS, STACKED_EXPERTS, NO_DENSE_MLP),
           when=Keys.LLM.EXPERT_COUNT),
    Family("qwen2", "qwen2", "qwen2", "Qwen2ForCausalLM", "Qwen2 / Qwen2.5 in llama.cpp's GGUF layout",
           constants=SILU, yaml=(FULL_ROTARY,)),
    Family("qwen3", "qwen3", "qwen3", "Qwen3ForCausalLM", "Qwen3 in llama.cpp's GGUF layout",
           constants=SILU, yaml=(FULL_ROTARY,)),
    Family("qwen3moe", "qwen3_moe", "qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3-MoE in llama.cpp's GGUF layout",
           metadata={**EXPERTS, "moe_intermediate_size": Keys.LLM.EXPERT_FEED_FORWARD_LENGTH},
           # llama.cpp's qwen3moe graph renormalises the top-k weights (build_moe_ffn(..., true, ...))
           # and routes every layer (it has no dense layers: mlp_only_layers, decoder_sparse_step)
           constants={**SILU, "norm_topk_prob": True}, yaml=(FULL_ROTARY, STACKED_EXPERTS, NO_DENSE_MLP)),
    Family("smollm3", "smollm3", "smollm3", "SmolLM3ForCausalLM", "SmolLM3 in llama.cpp's GGUF layout",
           # llama.cpp's smollm3 loader fixes n_no_rope_layer_step = 4: every fourth layer has no rotary
           constants={**SILU, "no_rope_layer_interval": 4}, presence=LLAMA_BIASES,
           yaml=(FULL_ROTARY, UNPERMUTE_QK)),
    Family("gemma", "gemma", "gemma", "GemmaForCausalLM", "Gemma in llama.cpp's GGUF layout",
           # llama.cpp's LLM_FFN_GELU is the tanh approximation
           constants={"hidden_activation": "gelu_pytorch_tanh"}, applied=("add",),
           yaml=(FULL_ROTARY, NO_HEAD)),
    Family("gemma2", "gemma2", "gemma2", "Gemma2ForCausalLM", "Gemma 2 in llama.cpp's GGUF layout",
           constants={"hidden_activation": "gelu_pytorch_tanh"}, rules=(rules.gemma2,), applied=("add",),
           yaml=(FULL_ROTARY, NO_HEAD)),
    Family("gemma3", "gemma3", "gemma3_text", "Gemma3ForCausalLM",
           "Gemma 3 text family in llama.cpp's GGUF layout",
           constants={"hidden_activation": "gelu_pytorch_tanh"}, presence={"attention_bias": "attn_q.bias"},
           rules=(rules.gemma3,), applied=("add",), yaml=(FULL_ROTARY, GEMMA3)),
    Family("phi3", "phi3", "phi3", "Phi3ForCausalLM", "Phi-3 in llama.cpp's GGUF layout",
           # llama.cpp's phi3 loader turns the sliding window off, so it is not read
           constants=SILU, rules=(rules.partial_rotary,), yaml=(PHI3_NO_GATE_BIAS,)),
    Family("phi2", "phi", "phi", "PhiForCausalLM", "Phi-1/1.5/2 in llama.cpp's GGUF layout",
           metadata=LAYER_NORM_EPS, constants={"hidden_act": "gelu_new"},
           rules=(rules.partial_rotary, rules.ffn_size("intermediate_size"), rules.kv_heads_from_tensors),
           yaml=(PHI2_NO_QK_NORM,)),
    Family("olmo", "olmo", "olmo", "OlmoForCausalLM", "OLMo in llama.cpp's GGUF layout",
           metadata={"clip_qkv": Keys.Attention.CLAMP_KQV}, constants=SILU, yaml=(FULL_ROTARY, UNPERMUTE_QK),
           # OLMo's LayerNorm has eps 1e-5 in code; the converter writes it, llama.cpp requires it
           gguf_constants={Keys.Attention.LAYERNORM_EPS: 1e-5}),
    Family("olmo2", "olmo2", "olmo2", "Olmo2ForCausalLM", "OLMo 2 in llama.cpp's GGUF layout",
           constants=SILU, yaml=(FULL_ROTARY,)),
    Family("stablelm", "stablelm", "stablelm", "StableLmForCausalLM", "StableLM 2 in llama.cpp's GGUF layout",
           metadata={**LAYER_NORM_EPS, "use_parallel_residual": Keys.LLM.USE_PARALLEL_RESIDUAL},
           constants=SILU, presence={"use_qkv_bias": "attn_q.bias", "qk_layernorm": "attn_q_norm.weight"},
           rules=(rules.partial_rotary,), yaml=(STABLELM_QK_NORMS,)),
    Family("gptneox", "gpt_neox", "gpt_neox", "GPTNeoXForCausalLM", "GPT-NeoX / Pythia in llama.cpp's GGUF layout",
           metadata={**LAYER_NORM_EPS, "use_parallel_residual": Keys.LLM.USE_PARALLEL_RESIDUAL},
           constants={"hidden_act": "gelu"}, rules=(rules.partial_rotary,), yaml=(QKV_THIRDS,)),
    Family("starcoder2", "starcoder2", "starcoder2", "Starcoder2ForCausalLM",
           "StarCoder 2 in llama.cpp's GGUF layout",
           # llama.cpp's starcoder2 has no sliding window, so it is not read
           metadata={"norm_epsilon": Keys.Attention.LAYERNORM_EPS}, constants={"hidden_act": "gelu_pytorch_tanh"},
           presence={"use_bias": "attn_q.bias"}, yaml=(FULL_ROTARY,)),
    Family("command-r", "cohere", "cohere", "CohereForCausalLM", "Command-R (Cohere) in llama.cpp's GGUF layout",
           metadata={**LAYER_NORM_EPS, "logit_scale": Keys.LLM.LOGIT_SCALE}, constants=SILU,
           presence={"use_qk_norm": "attn_q_norm.weight", "attention_bias": "attn_q.bias"},
           yaml=(FULL_ROTARY, NO_HEAD)),
    Family("cohere2", "cohere2", "cohere2", "Cohere2ForCausalLM", "Command-R7B (Cohere 2) in llama.cpp's GGUF layout",
           metadata={**LAYER_NORM_EPS, "logit_scale": Keys.LLM.LOGIT_SCALE,
                     "sliding_window": Keys.Attention.SLIDING_WINDOW},
           constants=SILU, rules=(rules.sliding_pattern(4),), yaml=(FULL_ROTARY, NO_HEAD, COHERE2_NO_QK_NORM)),
    Family("starcoder", "gpt_bigcode", "gpt_bigcode", "GPTBigCodeForCausalLM",
           "StarCoder (GPTBigCode) in llama.cpp's GGUF layout",
           metadata={**GPT2_NAMES, "layer_norm_epsilon": Keys.Attention.LAYERNORM_EPS},
           constants={"activation_function": "gelu_pytorch_tanh"},
           rules=(rules.ffn_size("n_inner"), rules.one_kv_head_is_multi_query)),
    Family("gpt2", "gpt2", "gpt2", "GPT2LMHeadModel", "GPT-2 in llama.cpp's GGUF layout",
           metadata={**GPT2_NAMES, "layer_norm_epsilon": Keys.Attention.LAYERNORM_EPS},
           # the converter transposes GPT-2's Conv1D weights to [out, in]
           constants={"activation_function": "gelu_new"}, rules=(rules.ffn_size("n_inner"),),
           applied=("transpose",)),
    Family("bloom", "bloom", "bloom", "BloomForCausalLM", "BLOOM in llama.cpp's GGUF layout",
           yaml=(QKV_THIRDS,)),
    Family("falcon", "falcon", "falcon", "FalconForCausalLM", "Falcon (7B, 40B, 180B) in llama.cpp's GGUF layout",
           metadata={"num_kv_heads": Keys.Attention.HEAD_COUNT_KV, "num_key_value_heads": None,
                     "ffn_hidden_size": Keys.LLM.FEED_FORWARD_LENGTH, "intermediate_size": None},
           constants={"activation": "gelu"}, rules=(rules.falcon,), yaml=(FULL_ROTARY, FALCON_QKV),
           # the converter's name for its q, k, v re-ordering
           gguf_constants={Keys.LLM.TENSOR_DATA_LAYOUT: "jploski"}),
    Family("mamba", "mamba", "mamba", "MambaForCausalLM", "Mamba (1) in llama.cpp's GGUF layout",
           metadata={"state_size": Keys.SSM.STATE_SIZE, "conv_kernel": Keys.SSM.CONV_KERNEL,
                     "time_step_rank": Keys.SSM.TIME_STEP_RANK, "layer_norm_epsilon": Keys.Attention.LAYERNORM_RMS_EPS,
                     "rms_norm_eps": None, "num_attention_heads": None, "num_key_value_heads": None,
                     "intermediate_size": None, "max_position_embeddings": None},
           constants=SILU, presence={"use_bias": "ssm_in.bias", "use_conv_bias": "ssm_conv1d.bias"},
           rules=(rules.mamba2_sizes,), yaml=(MAMBA,),
           # "unused, but seemingly required when loading"; classic Mamba norms no dt, B, C (MambaModel)
           gguf_constants={Keys.LLM.FEED_FORWARD_LENGTH: 0, Keys.Attention.HEAD_COUNT: 0,
                           Keys.SSM.DT_B_C_RMS: False}),
    Family("mamba2", "mamba2", "mamba2", "Mamba2ForCausalLM", "Mamba2 in llama.cpp's GGUF layout",
           metadata={"num_heads": Keys.SSM.TIME_STEP_RANK, "n_groups": Keys.SSM.GROUP_COUNT,
                     "state_size": Keys.SSM.STATE_SIZE, "conv_kernel": Keys.SSM.CONV_KERNEL,
                     "layer_norm_epsilon": Keys.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps": None,
                     "num_attention_heads": None, "num_key_value_heads": None, "intermediate_size": None},
           constants=SILU, presence={"use_bias": "ssm_in.bias", "use_conv_bias": "ssm_conv1d.bias"},
           rules=(rules.mamba2_sizes,), yaml=(MAMBA2,),
           # "unused, but seemingly required when loading" (Mamba2Model)
           gguf_constants={Keys.LLM.FEED_FORWARD_LENGTH: 0, Keys.Attention.HEAD_COUNT: 0}),
    Family("lfm2", "lfm2", "lfm2", "Lfm2ForCausalLM", "LiquidAI LFM2 in llama.cpp's GGUF layout",
           metadata={"norm_eps": Keys.Attention.LAYERNORM_RMS_EPS, "rms_norm_eps": None,
                     "conv_L_cache": Keys.ShortConv.L_CACHE, "num_key_value_heads": None},
           # the converter writes the MLP's width as it is (block_auto_adjust_ff_dim applied)
           constants={"block_auto_adjust_ff_dim": False}, rules=(rules.lfm2,), yaml=(LFM2,)),
    Family("granitehybrid", "granite", "granitemoehybrid", "GraniteMoeHybridForCausalLM",
           "Granite 4.0-H (Mamba2 and attention layers, shared MLP, optional experts) in llama.cpp's "
           "GGUF layout",
           metadata={"num_attention_heads": None, "num_key_value_heads": None,
                     "shared_intermediate_size": Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH,
                     "num_local_experts": Keys.LLM.EXPERT_COUNT,
                     "num_experts_per_tok": Keys.LLM.EXPERT_USED_COUNT, **MAMBA2_SIZES, **GRANITE_SCALES},
           constants=SILU,
           presence={"attention_bias": "attn_q.bias", "mamba_conv_bias": "ssm_conv1d.bias",
                     "mamba_proj_bias": "ssm_in.bias"},
           rules=(rules.granite_hybrid, rules.granite_multipliers),
           yaml=(MAMBA2, GRANITE_HYBRID, UNPERMUTE_QK)),
    Family("granitemoe", "granitemoe", "granitemoe", "GraniteMoeForCausalLM",
           "GraniteMoe (Granite 3 with routed experts) in llama.cpp's GGUF layout",
           metadata={**GRANITE_SCALES, **EXPERTS}, constants=SILU, presence={"attention_bias": "attn_q.bias"},
           rules=(rules.granite_multipliers,),
           yaml=(LLAMA_DEFAULTS, FULL_ROTARY, UNPERMUTE_QK, ROPE_FREQS, STACKED_EXPERTS, NO_DENSE_MLP)),
    Family("granite", "granite3", "granite", "GraniteForCausalLM",
           "Granite 3 dense family in llama.cpp's GGUF layout (and attention-only Granite 4.0-H, "
           "which the converter writes as granite)",
           metadata=GRANITE_SCALES, constants=SILU, presence=LLAMA_BIASES,
           rules=(rules.granite_dense_mlp, rules.granite_multipliers),
           yaml=(LLAMA_DEFAULTS, FULL_ROTARY, GRANITE_ROPE, UNPERMUTE_QK, ROPE_FREQS)),
)

# general.architecture -> its family; those written under another's architecture are in ROWS only
FAMILIES: dict[str, Family] = {f.arch: f for f in ROWS if f.when is None}


def family_for(arch: str, meta: Metadata) -> Family | None:
    """The family serving a file of ``arch`` with this metadata: one whose ``when`` key is set
    (non-zero), else the architecture's own row."""
    for family in ROWS:
        if family.arch == arch and family.when is not None and meta.get(family.when):
            return family
    return FAMILIES.get(arch)
