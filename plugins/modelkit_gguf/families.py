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
  the change and why).

A family llama.cpp adds later is one row, then ``python -m modelkit_gguf.derive``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gguf import Keys

from . import family_rules as rules
from .metadata import Metadata

Rule = Callable[[Metadata, dict[str, Any], set[str]], None]
Yaml = dict[str, str]  # mapping section ("config", "checks", "model", "layers", "weights") -> entries


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


# ---- mapping text shared by families ---------------------------------------------------------
# "@arch" is replaced by the architecture's name

# modelkit rotates whole heads: a rotary dimension count below the head size is refused
FULL_ROTARY: Yaml = {
    "config": "# rotary channels per head (@arch.rope.dimension_count); modelkit rotates whole heads\n"
              "rope_dim: {from: gguf.rope.dimension_count, type: int, min: 2, derive: head_dim}\n",
    "checks": '- {expr: "rope_dim == head_dim", message: "@arch.rope.dimension_count differs from the head '
              'size (partial rotary is not supported)"}\n',
}

# LlamaModel.permute reorders the Q and K rows of each head for llama.cpp's pairwise rotary kernel
UNPERMUTE_QK: Yaml = {"weights": """\
# llama.cpp permutes Q and K rows for its interleaved rotary kernel; put them back in halves
layers.{i}.attn.q.weight: {from: "blk.{i}.attn_q.weight", transform: {unpermute_rope: {heads: $num_heads}}}
layers.{i}.attn.k.weight: {from: "blk.{i}.attn_k.weight", transform: {unpermute_rope: {heads: $num_kv_heads}}}
layers.{i}.attn.q.bias: {from: "blk.{i}.attn_q.bias", optional: true, transform: {unpermute_rope: {heads: $num_heads}}}
layers.{i}.attn.k.bias: {from: "blk.{i}.attn_k.bias", optional: true, transform: {unpermute_rope: {heads: $num_kv_heads}}}
"""}

# Llama 3.1+ rope scaling as llama.cpp stores it: one divisor per frequency, shared by all layers
ROPE_FREQS: Yaml = {"weights": "layers.{i}.attn.rope_freq_factors: {from: rope_freqs.weight, optional: true}\n"}

LLAMA_DEFAULTS: Yaml = {"config": """\
rms_norm_eps: {default: 1.0e-5}
rope_theta: {from: rope_theta}
rope_scaling: {from: rope_scaling}
max_position_embeddings: {default: 4096}
"""}

LLAMA_BIASES = {"attention_bias": "attn_q.bias", "mlp_bias": "ffn_up.bias"}
SILU = {"hidden_act": "silu"}  # llama.cpp's LLM_FFN_SILU

GRANITE_SCALES = {  # Granite's multipliers, as the converter writes them (GraniteModel)
    "embedding_multiplier": Keys.LLM.EMBEDDING_SCALE,
    "residual_multiplier": Keys.LLM.RESIDUAL_SCALE,
    "logits_scaling": Keys.LLM.LOGIT_SCALE,
    "attention_multiplier": Keys.Attention.SCALE,
}

GEMMA3: Yaml = {
    "config": """\
value_length: {from: gguf.attention.value_length, type: int, min: 1, derive: head_dim}
gguf_attn_softcap: {from: gguf.attn_logit_softcapping, type: float, default: null}
""",
    "checks": """\
- {expr: "value_length == head_dim", message: "gemma3.attention.value_length differs from key_length (modelkit's attention has one head size)"}
- {expr: "gguf_attn_softcap is None", message: "gemma3.attn_logit_softcapping is set: Gemma 3 has no attention soft-capping and llama.cpp ignores the key, so modelkit refuses to guess"}
""",
    "weights": """\
# llama.cpp's converter stores every Gemma norm weight as 1 + w (it adds the 1 that Gemma's
# RMSNorm adds at run time), so gemma3.yaml's {add: {value: 1.0}} is not applied again.
# Q and K keep Hugging Face's row order: llama.cpp rotates Gemma's heads by halves (NEOX rope).
# Gemma 3 has no biases; a file with any is refused (unexpected tensors), not half-read
layers.{i}.attn.q.bias: null
layers.{i}.attn.k.bias: null
layers.{i}.attn.v.bias: null
layers.{i}.attn.o.bias: null
layers.{i}.mlp.gate.bias: null
layers.{i}.mlp.up.bias: null
layers.{i}.mlp.down.bias: null
""",
}

GRANITE_HYBRID: Yaml = {
    "config": """\
gguf_rope_dim: {from: gguf.rope.dimension_count, type: int, min: 2, derive: head_dim}
""",
    "checks": """\
- {expr: "position_embedding_type != 'rope' or gguf_rope_dim == head_dim", message: "granitehybrid.rope.dimension_count differs from the head size (partial rotary is not supported)"}
""",
    # llama.cpp keeps the experts' gate and up projections apart (ffn_gate_exps, ffn_up_exps)
    "layers": """\
variants:
  mamba_moe: {blocks: {mlp: {fused_experts: false}}}
  attention_moe: {blocks: {mlp: {fused_experts: false}}}
""",
    "weights": """\
# Mamba2Model.modify_tensors: the depthwise conv [C, 1, K] is stored squeezed, [C, K]
layers.{i}.ssm.conv.weight: blk.{i}.ssm_conv1d.weight
# Mamba2Model.filter_tensors renames dt_bias to dt_proj.bias, which gguf-py names ssm_dt.bias
layers.{i}.ssm.dt_bias: blk.{i}.ssm_dt.bias
# A_log is stored as A = -exp(A_log), shaped [H, 1]
layers.{i}.ssm.A_log: {from: "blk.{i}.ssm_a", transform: [{reshape: {to: [-1]}}, undo_neg_exp]}
# D is stored [H, 1]
layers.{i}.ssm.D: {from: "blk.{i}.ssm_d", transform: {reshape: {to: [-1]}}}
# the gated norm's weight is stored per group, [G, D / G]
layers.{i}.ssm.norm.weight: {from: "blk.{i}.ssm_norm.weight", transform: {reshape: {to: [-1]}}}
# GraniteMoeModel splits shared_mlp.input_linear into gate and up: ffn_*_shexp beside routed
# experts, plain ffn_* without them
layers.{i}.mlp.gate.weight: ["blk.{i}.ffn_gate_shexp.weight", "blk.{i}.ffn_gate.weight"]
layers.{i}.mlp.up.weight: ["blk.{i}.ffn_up_shexp.weight", "blk.{i}.ffn_up.weight"]
layers.{i}.mlp.down.weight: ["blk.{i}.ffn_down_shexp.weight", "blk.{i}.ffn_down.weight"]
# and the experts' input_linear into gate and up, each [E, I, hidden] (fused_experts: false)
layers.{i}.mlp.experts.gate_up.weight: null
layers.{i}.mlp.experts.gate.weight: blk.{i}.ffn_gate_exps.weight
layers.{i}.mlp.experts.up.weight: blk.{i}.ffn_up_exps.weight
""",
}

GRANITE_ROPE: Yaml = {
    "config": "gguf_rope_on: {from: gguf.rope.scaling.finetuned, type: bool, default: true}\n",
    "checks": '- {expr: "gguf_rope_on", message: "granite.rope.scaling.finetuned is false: a dense Granite '
              'without rotary positions, which the granite3 mapping does not implement"}\n',
}


FAMILIES: dict[str, Family] = {f.arch: f for f in (
    Family("llama", "llama", "llama", "LlamaForCausalLM",
           "Llama family in llama.cpp's GGUF layout (Llama 1/2/3, SmolLM, TinyLlama, Mistral 7B)",
           constants=SILU, presence=LLAMA_BIASES,
           yaml=(LLAMA_DEFAULTS, FULL_ROTARY, UNPERMUTE_QK, ROPE_FREQS)),
    Family("gemma3", "gemma3", "gemma3_text", "Gemma3ForCausalLM",
           "Gemma 3 text family in llama.cpp's GGUF layout",
           # llama.cpp's LLM_FFN_GELU is the tanh approximation
           constants={"hidden_activation": "gelu_pytorch_tanh"}, presence={"attention_bias": "attn_q.bias"},
           rules=(rules.gemma3,), applied=("add",), yaml=(FULL_ROTARY, GEMMA3)),
    Family("granitehybrid", "granite", "granitemoehybrid", "GraniteMoeHybridForCausalLM",
           "Granite 4.0-H (Mamba2 and attention layers, shared MLP, optional experts) in llama.cpp's "
           "GGUF layout",
           metadata={"num_attention_heads": None, "num_key_value_heads": None,
                     "shared_intermediate_size": Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH,
                     "num_local_experts": Keys.LLM.EXPERT_COUNT,
                     "num_experts_per_tok": Keys.LLM.EXPERT_USED_COUNT,
                     "mamba_d_conv": Keys.SSM.CONV_KERNEL, "mamba_d_state": Keys.SSM.STATE_SIZE,
                     "mamba_n_groups": Keys.SSM.GROUP_COUNT, "mamba_n_heads": Keys.SSM.TIME_STEP_RANK,
                     **GRANITE_SCALES},
           constants=SILU,
           presence={"attention_bias": "attn_q.bias", "mamba_conv_bias": "ssm_conv1d.bias",
                     "mamba_proj_bias": "ssm_in.bias"},
           rules=(rules.granite_hybrid, rules.granite_multipliers),
           yaml=(GRANITE_HYBRID, UNPERMUTE_QK)),
    Family("granite", "granite3", "granite", "GraniteForCausalLM",
           "Granite 3 dense family in llama.cpp's GGUF layout (and attention-only Granite 4.0-H, "
           "which the converter writes as granite)",
           metadata=GRANITE_SCALES, constants=SILU, presence=LLAMA_BIASES,
           rules=(rules.granite_dense_mlp, rules.granite_multipliers),
           yaml=(LLAMA_DEFAULTS, FULL_ROTARY, GRANITE_ROPE, UNPERMUTE_QK, ROPE_FREQS)),
)}
