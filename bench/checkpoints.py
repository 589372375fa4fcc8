"""Random-weight checkpoints with the exact shapes of published models, built from config alone.

For measuring load time, memory and speed at real sizes without downloading anything::

    python bench/checkpoints.py granite-4.0-h-350m --out /tmp/ckpt     # -> /tmp/ckpt/granite-4.0-h-350m/
    python bench/checkpoints.py --list

Each folder gets config.json (the published architecture fields), generation_config.json,
model.safetensors (bf16 by default, as on the hub; tensor names and shapes as published, tied
heads stored once), and a byte-level BPE tokenizer.json whose ids cover the whole vocabulary:
a small BPE trained on a paragraph of English, then filler tokens up to ``vocab_size``, and the
model's special tokens at their ids, with tokenizer_config.json carrying a short chat template
in the model's turn format. The weights are noise (matrices uniform with std 0.02, norms 1, Mamba A_log
log U(1, 16), D 1, dt_bias N(0, 0.5), Mamba v1 dt_proj.bias -4.6), so generated text is noise too;
the sizes are real.

``granite-4.0-h-350m`` and ``granite-4.0-h-1b`` have 340,332,224 and 1,461,538,368 parameters,
``smollm2-135m`` 134,515,008, ``mamba-130m`` 129,135,360, ``lfm2-350m`` 354,483,968 and
``granite-3.0-1b-a400m`` 1,334,628,352 (tied heads counted once; GraniteMoe, 32 routed experts
with 8 per token in each of 24 layers, so about 400M of them run per token).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

# ---- configs ----------------------------------------------------------------------------------


def _granite_h(hidden: int, layers: int, attention_at: list[int], head_count: int, mlp: int,
               mamba_head_dim: int, attention_multiplier: float, residual_multiplier: float,
               logits_scaling: float, max_positions: int) -> dict[str, Any]:
    """A Granite 4.0-H config.json as the hub spells it (transformers 4.5x style)."""
    return {
        "architectures": ["GraniteMoeHybridForCausalLM"],
        "model_type": "granitemoehybrid",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_multiplier": attention_multiplier,
        "bos_token_id": 100257,
        "eos_token_id": 100257,
        "pad_token_id": 100256,
        "embedding_multiplier": 12,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "shared_intermediate_size": mlp,
        "layer_types": ["attention" if i in attention_at else "mamba" for i in range(layers)],
        "logits_scaling": logits_scaling,
        "mamba_chunk_size": 256,
        "mamba_conv_bias": True,
        "mamba_d_conv": 4,
        "mamba_d_head": mamba_head_dim,
        "mamba_d_state": 128,
        "mamba_expand": 2,
        "mamba_n_groups": 1,
        "mamba_n_heads": 2 * hidden // mamba_head_dim,
        "mamba_proj_bias": False,
        "max_position_embeddings": max_positions,
        "normalization_function": "rmsnorm",
        "num_attention_heads": head_count,
        "num_key_value_heads": 4,
        "num_hidden_layers": layers,
        "num_experts_per_tok": 0,
        "num_local_experts": 0,
        "position_embedding_type": "nope",
        "residual_multiplier": residual_multiplier,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 100352,
    }


def _mamba(hidden: int, layers: int, vocab: int) -> dict[str, Any]:
    """A Mamba v1 config.json as the hub spells it (state-spaces/mamba-*-hf)."""
    return {
        "architectures": ["MambaForCausalLM"], "model_type": "mamba",
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
        "conv_kernel": 4, "expand": 2, "hidden_act": "silu", "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "layer_norm_epsilon": 1e-05, "num_hidden_layers": layers,
        "residual_in_fp32": True, "state_size": 16, "time_step_rank": -(-hidden // 16),
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_bias": False, "use_cache": True,
        "use_conv_bias": True, "vocab_size": vocab,
    }


def _lfm2(hidden: int, layers: int, attention_at: list[int], heads: int, ff_dim: int) -> dict[str, Any]:
    """An LFM2 config.json as the hub spells it (LiquidAI/LFM2-*)."""
    return {
        "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2",
        "block_auto_adjust_ff_dim": True, "block_ff_dim": ff_dim, "block_ffn_dim_multiplier": 1.0,
        "block_multiple_of": 256, "bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0,
        "conv_L_cache": 3, "conv_bias": False, "hidden_size": hidden, "intermediate_size": ff_dim,
        "layer_types": ["full_attention" if i in attention_at else "conv" for i in range(layers)],
        "max_position_embeddings": 128000, "norm_eps": 1e-05, "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": 8, "rope_theta": 1000000.0,
        "tie_embedding": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 65536,
    }


def _granite_moe(hidden: int, layers: int, heads: int, kv_heads: int, expert: int, experts: int, top_k: int,
                 attention_multiplier: float, residual_multiplier: float, logits_scaling: float) -> dict[str, Any]:
    """A Granite 3.x MoE config.json (GraniteMoeForCausalLM) as the hub spells it. The sizes are
    what the bench measures; the multipliers change no cost."""
    return {
        "architectures": ["GraniteMoeForCausalLM"], "model_type": "granitemoe",
        "attention_bias": False, "attention_dropout": 0.1, "attention_multiplier": attention_multiplier,
        "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "embedding_multiplier": 12.0,
        "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": expert,
        "logits_scaling": logits_scaling, "max_position_embeddings": 4096, "num_attention_heads": heads,
        "num_experts_per_tok": top_k, "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
        "num_local_experts": experts, "residual_multiplier": residual_multiplier, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 10000, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": 49155,
    }


CONFIGS: dict[str, dict[str, Any]] = {
    "granite-4.0-h-350m": _granite_h(768, 32, [10, 13, 17, 27], 12, 2048, 32, 0.015625, 0.246, 3, 32768),
    "granite-4.0-h-1b": _granite_h(1536, 40, [5, 15, 25, 35], 12, 4096, 64, 0.0078125, 0.22, 6, 131072),
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "max_position_embeddings": 8192,
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 100000,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 49152,
    },
    "mamba-130m": _mamba(768, 24, 50280),
    "lfm2-350m": _lfm2(1024, 16, [2, 5, 8, 10, 12, 14], 16, 6656),
    "granite-3.0-1b-a400m": _granite_moe(1024, 24, 16, 8, 512, 32, 8, 0.015625, 0.22, 6.0),
}

# special tokens by model type: id -> text; the first (or only) eos is the config's eos id
SPECIALS: dict[str, dict[int, str]] = {
    "granitemoehybrid": {100256: "<|pad|>", 100257: "<|end_of_text|>",
                         100264: "<|start_of_role|>", 100265: "<|end_of_role|>"},
    "llama": {0: "<|endoftext|>", 1: "<|im_start|>", 2: "<|im_end|>"},
    "mamba": {0: "<|endoftext|>", 1: "<|padding|>"},
    "lfm2": {0: "<|pad|>", 1: "<|startoftext|>", 6: "<|im_start|>", 7: "<|im_end|>"},
    "granitemoe": {0: "<|end_of_text|>", 49152: "<|start_of_role|>", 49153: "<|end_of_role|>",
                   49154: "<|tool_call|>"},
}

_GRANITE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}")

CHAT_TEMPLATES = {
    "granitemoehybrid": _GRANITE_TEMPLATE,
    "granitemoe": _GRANITE_TEMPLATE,
    "llama": (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"),
    "lfm2": (
        "{{- '<|startoftext|>' }}"
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"),
}


# ---- tensor shapes ----------------------------------------------------------------------------


def granite_h_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Granite 4.0-H checkpoint (no experts), hub names, [out, in] layout."""
    d, v = cfg["hidden_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", d // heads)
    inner = cfg["mamba_expand"] * d
    mh, g, n, k = cfg["mamba_n_heads"], cfg["mamba_n_groups"], cfg["mamba_d_state"], cfg["mamba_d_conv"]
    conv = inner + 2 * g * n
    mlp = cfg["shared_intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes[p + "shared_mlp.input_linear.weight"] = (2 * mlp, d)
        shapes[p + "shared_mlp.output_linear.weight"] = (d, mlp)
        if kind == "mamba":
            m = p + "mamba."
            shapes[m + "in_proj.weight"] = (inner + conv + mh, d)
            shapes[m + "conv1d.weight"] = (conv, 1, k)
            shapes[m + "conv1d.bias"] = (conv,)
            for name in ("dt_bias", "A_log", "D"):
                shapes[m + name] = (mh,)
            shapes[m + "norm.weight"] = (inner,)
            shapes[m + "out_proj.weight"] = (d, inner)
        else:
            a = p + "self_attn."
            shapes[a + "q_proj.weight"] = (heads * hd, d)
            shapes[a + "k_proj.weight"] = (kv * hd, d)
            shapes[a + "v_proj.weight"] = (kv * hd, d)
            shapes[a + "o_proj.weight"] = (d, heads * hd)
    return shapes


def llama_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Llama checkpoint, hub names, [out, in] layout."""
    d, v, inter = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", d // heads)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        shapes[p + "self_attn.q_proj.weight"] = (heads * hd, d)
        shapes[p + "self_attn.k_proj.weight"] = (kv * hd, d)
        shapes[p + "self_attn.v_proj.weight"] = (kv * hd, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, heads * hd)
        shapes[p + "mlp.gate_proj.weight"] = (inter, d)
        shapes[p + "mlp.up_proj.weight"] = (inter, d)
        shapes[p + "mlp.down_proj.weight"] = (d, inter)
    return shapes


def mamba_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Mamba v1 checkpoint, hub names, [out, in] layout (tied head)."""
    d, v, n, k = cfg["hidden_size"], cfg["vocab_size"], cfg["state_size"], cfg["conv_kernel"]
    inner, r = cfg["expand"] * d, cfg["time_step_rank"]
    shapes: dict[str, tuple[int, ...]] = {"backbone.embeddings.weight": (v, d), "backbone.norm_f.weight": (d,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"backbone.layers.{i}."
        shapes[p + "norm.weight"] = (d,)
        shapes[p + "mixer.in_proj.weight"] = (2 * inner, d)
        shapes[p + "mixer.conv1d.weight"] = (inner, 1, k)
        shapes[p + "mixer.conv1d.bias"] = (inner,)
        shapes[p + "mixer.x_proj.weight"] = (r + 2 * n, inner)
        shapes[p + "mixer.dt_proj.weight"] = (inner, r)
        shapes[p + "mixer.dt_proj.bias"] = (inner,)
        shapes[p + "mixer.A_log"] = (inner, n)
        shapes[p + "mixer.D"] = (inner,)
        shapes[p + "mixer.out_proj.weight"] = (d, inner)
    return shapes


def lfm2_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of an LFM2 checkpoint, hub names, [out, in] layout (tied head, no biases)."""
    d, v = cfg["hidden_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // heads
    ff = int(2 * cfg["block_ff_dim"] / 3)  # block_auto_adjust_ff_dim with multiplier 1.0
    ff = cfg["block_multiple_of"] * -(-ff // cfg["block_multiple_of"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.embedding_norm.weight": (d,)}
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        shapes[p + "operator_norm.weight"] = (d,)
        shapes[p + "ffn_norm.weight"] = (d,)
        shapes[p + "feed_forward.w1.weight"] = (ff, d)
        shapes[p + "feed_forward.w3.weight"] = (ff, d)
        shapes[p + "feed_forward.w2.weight"] = (d, ff)
        if kind == "conv":
            shapes[p + "conv.in_proj.weight"] = (3 * d, d)
            shapes[p + "conv.conv.weight"] = (d, 1, cfg["conv_L_cache"])
            shapes[p + "conv.out_proj.weight"] = (d, d)
        else:
            a = p + "self_attn."
            shapes[a + "q_proj.weight"] = (heads * hd, d)
            shapes[a + "k_proj.weight"] = (kv * hd, d)
            shapes[a + "v_proj.weight"] = (kv * hd, d)
            shapes[a + "out_proj.weight"] = (d, heads * hd)
            shapes[a + "q_layernorm.weight"] = (hd,)
            shapes[a + "k_layernorm.weight"] = (hd,)
    return shapes


def granitemoe_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a GraniteMoe checkpoint: Llama's attention and norms, and per layer the
    experts fused as the hub stores them (input_linear [E, 2I, d], output_linear [E, d, I])."""
    d, e, inter = cfg["hidden_size"], cfg["num_local_experts"], cfg["intermediate_size"]
    shapes = {name: shape for name, shape in llama_shapes(cfg).items() if ".mlp." not in name}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.block_sparse_moe."
        shapes[p + "router.layer.weight"] = (e, d)
        shapes[p + "input_linear.weight"] = (e, 2 * inter, d)
        shapes[p + "output_linear.weight"] = (e, d, inter)
    return shapes


SHAPES = {"granitemoehybrid": granite_h_shapes, "llama": llama_shapes, "mamba": mamba_shapes, "lfm2": lfm2_shapes,
          "granitemoe": granitemoe_shapes}


def tensor_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The checkpoint's tensors and shapes for a config of a supported model type."""
    return SHAPES[cfg["model_type"]](cfg)


def random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Plausible noise for a tensor, by its role (float32)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "A_log":
        return np.log(rng.uniform(1.0, 16.0, shape)).astype(np.float32)
    if leaf == "D":
        return np.ones(shape, np.float32)
    if leaf == "dt_bias":
        return (0.5 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if name.endswith("dt_proj.bias"):  # Mamba v1: dt about softplus(-4.6) = 0.01, as initialised
        return np.full(shape, -4.6, np.float32)
    if name.endswith("norm.weight"):  # RMSNorm, the gated norm, q/k norms
        return np.ones(shape, np.float32)
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    # uniform with standard deviation 0.02: four times faster to draw than normal noise
    out = rng.random(shape, dtype=np.float32)
    out -= np.float32(0.5)
    out *= np.float32(0.02 * np.sqrt(12.0))
    return out


# ---- tokenizer --------------------------------------------------------------------------------

TRAIN_TEXT = """\
The quick brown fox jumps over the lazy dog. Hi there, hello world! How are you today?
Once upon a time, in a small village by the sea, there lived an old fisherman and his wife.
Language models read tokens, predict the next token, and then read that token again.
Numbers such as 1, 2, 3, 10, 42 and 2024 appear in text; so do dates like 12/31/1999.
def main():
    print("hello, world")
    return 0
"""


def build_tokenizer(vocab_size: int, specials: dict[int, str], merges_vocab: int = 600) -> str:
    """tokenizer.json text: byte-level BPE covering ids 0..vocab_size-1.

    A BPE of ``merges_vocab`` entries is trained on a paragraph; filler entries (never produced
    by encoding, decoding to ``<tok1234>``) pad the model vocabulary; ``specials`` are added
    tokens at their given ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=merges_vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TRAIN_TEXT], trainer=trainer)
    data = json.loads(tok.to_str())
    trained = sorted(data["model"]["vocab"], key=data["model"]["vocab"].get)
    free = (i for i in range(vocab_size) if i not in specials)
    vocab = {token: next(free) for token in trained}
    for i in free:  # filler tokens: ASCII text, which byte-level BPE maps to itself
        vocab[f"<tok{i}>"] = i
    # specials live in the model vocabulary too: an added token not found there gets the next
    # free id, whatever id the file gives it
    vocab.update({text: i for i, text in specials.items()})
    data["model"]["vocab"] = vocab
    data["added_tokens"] = [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for i, text in sorted(specials.items())]
    text = json.dumps(data, ensure_ascii=False)
    check = Tokenizer.from_str(text)
    assert check.get_vocab_size(with_added_tokens=True) == vocab_size, check.get_vocab_size()
    assert all(check.token_to_id(t) == i for i, t in specials.items()), "special token ids moved"
    return text


# ---- checkpoints ------------------------------------------------------------------------------


def build_checkpoint(name: str, out: Path, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Write the random-weight checkpoint ``name`` (a key of CONFIGS) into ``out/name``."""
    from safetensors.numpy import save_file

    if name not in CONFIGS:
        raise ValueError(f"unknown checkpoint {name!r}; known: {', '.join(CONFIGS)}")
    cfg = dict(CONFIGS[name])
    cfg["torch_dtype"] = dtype
    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[dtype]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {tname: random_tensor(tname, shape, rng).astype(np_dtype)
               for tname, shape in tensor_shapes(cfg).items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    specials = SPECIALS[cfg["model_type"]]
    (folder / "tokenizer.json").write_text(build_tokenizer(cfg["vocab_size"], specials), encoding="utf-8")
    eos = specials[cfg["eos_token_id"]]
    tok_cfg = {"bos_token": specials.get(cfg["bos_token_id"]), "eos_token": eos,
               "pad_token": specials.get(cfg.get("pad_token_id", -1), eos),
               "add_bos_token": False}
    if cfg["model_type"] in CHAT_TEMPLATES:  # base models (Mamba) have none
        tok_cfg["chat_template"] = CHAT_TEMPLATES[cfg["model_type"]]
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    return folder


def parameter_count(name: str) -> int:
    """Parameters of a checkpoint from its shapes alone (a tied head counted once)."""
    return sum(int(np.prod(s)) for s in tensor_shapes(CONFIGS[name]).values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"checkpoints to build: {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, help="parent folder (one subfolder per checkpoint)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="list the checkpoints and their sizes")
    args = parser.parse_args(argv)
    if args.list or not args.names:
        for name in CONFIGS:
            print(f"{name:20s} {parameter_count(name):>15,d} parameters")
        return 0
    if args.out is None:
        parser.error("--out is required")
    unknown = [n for n in args.names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown checkpoint(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    for name in args.names:
        print(build_checkpoint(name, args.out, args.dtype, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
