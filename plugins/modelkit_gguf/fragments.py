"""Mapping text the family rows of :mod:`.families` share: checks, block options and the
``weights`` entries whose tensors llama.cpp's converter (``convert_hf_to_gguf.py``) changes
beyond renaming, each with the transform that undoes the change. ``derive.py`` copies them
into the GGUF mappings as written; ``@arch`` becomes the architecture's name.

A fragment is ``{section: entries}``, a section being ``config``, ``checks``, ``model``,
``layers`` or ``weights``.
"""

from __future__ import annotations

Yaml = dict[str, str]

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

# GPTNeoXModel and BloomModel re-order the per-head fused query_key_value (q, k, v of head 0,
# then head 1, ...) into all queries, then all keys, then all values
QKV_THIRDS: Yaml = {"weights": """\
# the converter stores query_key_value as [all q; all k; all v] (it was fused per head)
layers.{i}.attn.q.weight: {from: "blk.{i}.attn_qkv.weight", transform: {split: {parts: 3, index: 0}}}
layers.{i}.attn.k.weight: {from: "blk.{i}.attn_qkv.weight", transform: {split: {parts: 3, index: 1}}}
layers.{i}.attn.v.weight: {from: "blk.{i}.attn_qkv.weight", transform: {split: {parts: 3, index: 2}}}
layers.{i}.attn.q.bias: {from: "blk.{i}.attn_qkv.bias", optional: true, transform: {split: {parts: 3, index: 0}}}
layers.{i}.attn.k.bias: {from: "blk.{i}.attn_qkv.bias", optional: true, transform: {split: {parts: 3, index: 1}}}
layers.{i}.attn.v.bias: {from: "blk.{i}.attn_qkv.bias", optional: true, transform: {split: {parts: 3, index: 2}}}
"""}

# FalconModel re-orders query_key_value (grouped per KV head in falcon-40b) into all queries,
# then the KV heads' keys, then their values
FALCON_QKV: Yaml = {
    "config": """\
q_rows: {derive: num_heads * head_dim}
kv_rows: {derive: num_kv_heads * head_dim}
""",
    "weights": """\
# the converter stores query_key_value as [all q; all k; all v] (falcon-40b's was grouped per KV head)
layers.{i}.attn.q.weight: {from: "blk.{i}.attn_qkv.weight", transform: {slice: {start: 0, stop: $q_rows}}}
layers.{i}.attn.k.weight: {from: "blk.{i}.attn_qkv.weight", transform: {slice: {start: $q_rows, stop: $q_rows + kv_rows}}}
layers.{i}.attn.v.weight: {from: "blk.{i}.attn_qkv.weight", transform: {slice: {start: $q_rows + kv_rows, stop: $q_rows + 2 * kv_rows}}}
layers.{i}.attn.q.bias: null
layers.{i}.attn.k.bias: null
layers.{i}.attn.v.bias: null
# gguf-py names falcon-40b's ln_attn attn_norm_2 and its ln_mlp attn_norm (llama.cpp's falcon
# normalises the attention's input with attn_norm_2 when there is one, the MLP's with attn_norm)
layers.{i}.attn_norm.weight: ["blk.{i}.attn_norm_2.weight", "blk.{i}.attn_norm.weight"]
layers.{i}.attn_norm.bias: ["blk.{i}.attn_norm_2.bias", "blk.{i}.attn_norm.bias"]
layers.{i}.mlp_norm.weight: blk.{i}.attn_norm.weight
layers.{i}.mlp_norm.bias: blk.{i}.attn_norm.bias
""",
}

# Mamba2Model.modify_tensors and filter_tensors
MAMBA2: Yaml = {"weights": """\
# the depthwise conv [C, 1, K] is stored squeezed, [C, K]
layers.{i}.ssm.conv.weight: blk.{i}.ssm_conv1d.weight
# dt_bias is renamed dt_proj.bias before naming, which gguf-py names ssm_dt.bias
layers.{i}.ssm.dt_bias: blk.{i}.ssm_dt.bias
# A_log is stored as A = -exp(A_log), shaped [H, 1]
layers.{i}.ssm.A_log: {from: "blk.{i}.ssm_a", transform: [{reshape: {to: [-1]}}, undo_neg_exp]}
# D is stored [H, 1]
layers.{i}.ssm.D: {from: "blk.{i}.ssm_d", transform: {reshape: {to: [-1]}}}
# the gated norm's weight is stored per group, [G, D / G]
layers.{i}.ssm.norm.weight: {from: "blk.{i}.ssm_norm.weight", transform: {reshape: {to: [-1]}}}
"""}

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
    "weights": """\
# GraniteMoeModel splits shared_mlp.input_linear into gate and up: ffn_*_shexp beside routed
# experts, plain ffn_* without them
layers.{i}.mlp.gate.weight: ["blk.{i}.ffn_gate_shexp.weight", "blk.{i}.ffn_gate.weight"]
layers.{i}.mlp.up.weight: ["blk.{i}.ffn_up_shexp.weight", "blk.{i}.ffn_up.weight"]
layers.{i}.mlp.down.weight: ["blk.{i}.ffn_down_shexp.weight", "blk.{i}.ffn_down.weight"]
# and the experts' input_linear into gate and up, each [E, I, hidden], as the moe kind reads them
layers.{i}.mlp.experts.gate.weight: blk.{i}.ffn_gate_exps.weight
layers.{i}.mlp.experts.up.weight: blk.{i}.ffn_up_exps.weight
""",
}

GRANITE_ROPE: Yaml = {
    "config": "gguf_rope_on: {from: gguf.rope.scaling.finetuned, type: bool, default: true}\n",
    "checks": '- {expr: "gguf_rope_on", message: "granite.rope.scaling.finetuned is false: a dense Granite '
              'without rotary positions, which the granite3 mapping does not implement"}\n',
}

# StableLMModel stacks the per-head q/k LayerNorm weights into one [heads, head_dim] tensor
STABLELM_QK_NORMS: Yaml = {"weights": """\
# the per-head LayerNorms (q_layernorm.norms.{j}) are stored stacked, [heads, head_dim]
layers.{i}.attn.q_norm.weight: {from: "blk.{i}.attn_q_norm.weight", optional: true}
layers.{i}.attn.k_norm.weight: {from: "blk.{i}.attn_k_norm.weight", optional: true}
"""}

# llama.cpp's phi2 has no q/k LayerNorm: a file cannot hold one, and the mapping reads none
PHI2_NO_QK_NORM: Yaml = {"weights": """\
layers.{i}.attn.q_norm.weight: null
layers.{i}.attn.q_norm.bias: null
layers.{i}.attn.k_norm.weight: null
layers.{i}.attn.k_norm.bias: null
"""}

# llama.cpp's cohere2 has no q/k norms (a Cohere 2 with use_qk_norm has no file form)
COHERE2_NO_QK_NORM: Yaml = {"weights": """\
layers.{i}.attn.q_norm.weight: null
layers.{i}.attn.k_norm.weight: null
"""}

# gemma's and gemma2's converters drop lm_head.weight (llama.cpp ties the head)
NO_HEAD: Yaml = {"weights": "head.weight: null\n"}

# Phi-3's fused gate_up_proj has gate rows first; it has no MLP biases
PHI3_NO_GATE_BIAS: Yaml = {"weights": "layers.{i}.mlp.gate.bias: null\n"}

# the experts' gate, up and down as llama.cpp stores them: stacked, [E, I, hidden] and
# [E, hidden, I], as the moe kind reads them (the converter stacks per-expert tensors and splits
# fused gate_up ones)
STACKED_EXPERTS: Yaml = {"weights": """\
layers.{i}.mlp.experts.gate.weight: blk.{i}.ffn_gate_exps.weight
layers.{i}.mlp.experts.up.weight: blk.{i}.ffn_up_exps.weight
layers.{i}.mlp.experts.down.weight: blk.{i}.ffn_down_exps.weight
"""}

# llama.cpp's qwen3moe and granitemoe have no dense MLP (nor Qwen3-MoE's mlp_only_layers and
# decoder_sparse_step): a file has no dense MLP tensors, and the mapping reads none
NO_DENSE_MLP: Yaml = {"weights": """\
layers.{i}.mlp.gate.weight: null
layers.{i}.mlp.up.weight: null
layers.{i}.mlp.down.weight: null
layers.{i}.mlp.gate.bias: null
layers.{i}.mlp.up.bias: null
layers.{i}.mlp.down.bias: null
"""}

# MambaModel.modify_tensors (Mamba 1); Falcon-Mamba, written as mamba too, norms dt, B and C
MAMBA: Yaml = {
    "config": "gguf_dt_b_c_rms: {from: gguf.ssm.dt_b_c_rms, type: bool, default: false}\n",
    "checks": '- {expr: "not gguf_dt_b_c_rms", message: "mamba.ssm.dt_b_c_rms is true (Falcon-Mamba\'s RMS norms '
              'of dt, B and C are not supported)"}\n',
    "weights": """\
# the depthwise conv [C, 1, K] is stored squeezed, [C, K]
layers.{i}.ssm.conv.weight: blk.{i}.ssm_conv1d.weight
# A_log is stored as A = -exp(A_log), [d_inner, d_state]
layers.{i}.ssm.A_log: {from: "blk.{i}.ssm_a", transform: undo_neg_exp}
""",
}

# LFM2Model: the short convolution [H, 1, L] stored squeezed, [H, L]; llama.cpp's lfm2 has no
# convolution biases (its loader creates none), so a file with any is refused (unexpected tensors)
LFM2: Yaml = {"weights": """\
layers.{i}.conv.conv.weight: blk.{i}.shortconv.conv.weight
layers.{i}.conv.in_proj.bias: null
layers.{i}.conv.conv.bias: null
layers.{i}.conv.out_proj.bias: null
"""}
