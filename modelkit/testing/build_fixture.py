"""Build a golden fixture: a tiny random checkpoint and transformers' reference numbers for it.

Needs torch and transformers (a separate environment is fine: this module imports nothing of
modelkit's that needs more than NumPy)::

    python -m modelkit.testing.build_fixture --config tiny.json --out tests/fixtures/tiny \\
        [--seed 1] [--tokens 16] [--tokenizer tokenizer.json] [--step] [--blocks blocks.json]

``tiny.json`` is a config.json-style dict with ``model_type`` (and ``architectures`` when the
model type has several heads); keep it tiny (hidden 32, 2-4 layers, vocab a few hundred) and
exercise the family's distinctive options. The folder gets what ``save_pretrained`` writes
(config.json, model.safetensors, generation_config.json), the tokenizer when given, and
``ref.npz``: ``ids`` int64 [T], ``logits`` float32 [T, vocab] (float32, eval, no grad,
``use_cache=False``), with ``--step`` ``logits_step`` (token by token through transformers' own
cache) and with ``--blocks`` the hidden states ``modelkit compare`` reads (layer outputs, and the
outputs of the modules named in blocks.json, ``{"attn": "model.layers.{i}.self_attn", ...}``).
Every parameter is randomised (:func:`randomize`) so no bias is 0 and no norm weight 1, which
would hide bugs. The checkpoint is reloaded and its logits recomputed bit for bit, so the files
are exactly what produced ``ref.npz``. :func:`modelkit.testing.assert_matches_reference` checks a
model against it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.reference import write_npz_deterministic

# the files a fixture folder keeps from save_pretrained
KEEP_FILES = {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "ref.npz"}


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def randomize(model: Any, seed: int) -> None:
    """Re-draw every named parameter (tied parameters are visited once): matrices ~ N(0,
    clip(0.5/sqrt(fan_in), 0.02, 0.2)), embeddings and lm_head ~ N(0, 0.2) (learned positions
    N(0, 0.1)), norm weights 1 + 0.1 N(0, 1), biases 0.1 N(0, 1), Mamba A_log = log(U(1, 16)),
    D ~ N(1, 0.2), dt_bias ~ N(0, 0.5), Mamba v1's dt_proj.bias ~ N(-3, 0.7). A matrix of a
    module kind not listed takes the product of its trailing dimensions as fan-in."""
    import torch
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(seed)
    owner = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = mod

    def randn(shape: Any) -> Any:
        return torch.randn(shape, generator=g, dtype=torch.float32)

    with torch.no_grad():
        for name, p in model.named_parameters():
            mod = owner[name]
            leaf = name.rsplit(".", 1)[-1]
            shape = p.shape
            if leaf == "A_log":
                new = torch.log(1.0 + 15.0 * torch.rand(shape, generator=g))
            elif leaf == "D":
                new = 1.0 + 0.2 * randn(shape)
            elif leaf == "dt_bias":
                new = 0.5 * randn(shape)
            elif name.endswith("dt_proj.bias"):  # Mamba v1: softplus(-3 +- 0.7) ~ 0.01-0.2, as trained models
                new = -3.0 + 0.7 * randn(shape)
            elif leaf == "bias":
                new = 0.1 * randn(shape)
            elif isinstance(mod, torch.nn.Embedding):
                std = 0.1 if name.endswith("wpe.weight") else 0.2
                new = std * randn(shape)
            elif p.dim() == 1 or type(mod).__name__ == "CohereLayerNorm":
                # norm weights (RMSNorm, LayerNorm, gated RMSNorm; Cohere's q/k norms are [heads, hd])
                new = 1.0 + 0.1 * randn(shape)
            elif name.endswith("lm_head.weight"):
                new = 0.2 * randn(shape)
            else:
                if isinstance(mod, Conv1D):  # GPT-2: weight is [in, out]
                    fan_in = shape[0]
                elif isinstance(mod, torch.nn.Conv1d):  # depthwise: [C, 1, K]
                    fan_in = shape[1] * shape[2]
                elif isinstance(mod, torch.nn.Linear):  # [out, in]
                    fan_in = shape[1]
                elif type(mod).__name__ in ("GraniteMoeHybridExperts", "GraniteMoeHybridTopKRouter",
                                            "GraniteMoeExperts", "GraniteMoeTopKRouter", "MixtralExperts",
                                            "MixtralTopKRouter", "Qwen3MoeExperts", "Qwen3MoeTopKRouter"):
                    fan_in = shape[-1]  # experts [E, out, in], router [E, in]
                else:  # another layout: [out, *in]
                    fan_in = math.prod(shape[1:])
                std = min(0.2, max(0.02, 0.5 / math.sqrt(fan_in)))
                new = std * randn(shape)
            p.copy_(new.to(p.dtype))


def make_ids(seed: int, n_tokens: int, vocab: int) -> np.ndarray:
    """``n_tokens`` random token ids below ``vocab`` (int64), from their own seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=n_tokens, dtype=np.int64)


def full_logits(model: Any, ids: np.ndarray) -> np.ndarray:
    """float32 logits [T, vocab] of one forward pass (eval, no grad, no cache)."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids)[None], use_cache=False)
    return out.logits[0].float().numpy().astype(np.float32)


def step_logits(model: Any, ids: np.ndarray, all_linear: bool = False, positions: bool = False) -> np.ndarray:
    """Feed one token at a time through transformers' own cache (use_cache=True).

    all_linear: for a granitemoehybrid model without attention layers. transformers derives
    position_ids and the (unused) full-attention mask from `cache.get_seq_length()`, which raises
    for a cache holding only linear-attention (mamba) layers; passing position_ids and a
    precomputed (empty) mask mapping sidesteps those two calls without changing the math.

    positions: pass each token's position_ids, as generate() does. BambaModel defaults them to
    arange(T) of the call, ignoring the tokens already in the cache (every step would be
    position 0).
    """
    import torch

    model.eval()
    cache = None
    rows = []
    with torch.no_grad():
        for t in range(len(ids)):
            kwargs: dict[str, Any] = {}
            if all_linear or positions:
                kwargs["position_ids"] = torch.tensor([[t]])
            if all_linear:
                kwargs["attention_mask"] = {"full_attention": None, "linear_attention": None}
            out = model(input_ids=torch.from_numpy(ids[t : t + 1])[None], cache=cache, use_cache=True, **kwargs)
            cache = out.cache
            rows.append(out.logits[0, -1].float().numpy())
    return np.stack(rows).astype(np.float32)


def check_logits(name: str, logits: np.ndarray) -> dict:
    """Refuse reference logits too flat to catch a bug: near-constant rows, logits that barely
    depend on the position, fewer than 3 distinct argmaxes. Returns their statistics."""
    assert np.isfinite(logits).all(), f"{name}: non-finite logits"
    row_std = logits.std(axis=1)
    stats = {
        "std": float(logits.std()),
        "min_row_std": float(row_std.min()),
        "absmax": float(np.abs(logits).max()),
        "distinct_argmax": int(len(set(logits.argmax(axis=1).tolist()))),
        "pos_std": float(logits.std(axis=0).mean()),  # variation across positions
    }
    assert stats["min_row_std"] > 0.05, f"{name}: near-constant logits row {stats}"
    assert stats["pos_std"] > 0.05, f"{name}: logits barely depend on the position/token {stats}"
    assert stats["distinct_argmax"] >= 3, f"{name}: too few distinct argmaxes {stats}"
    return stats


def save_model(model: Any, d: Path) -> None:
    """save_pretrained into ``d``, keeping only :data:`KEEP_FILES`."""
    # transformers 5 always serialises to safetensors (the `safe_serialization` switch is gone).
    model.save_pretrained(str(d))
    for f in d.iterdir():
        if f.name not in KEEP_FILES:
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
    assert (d / "model.safetensors").exists() or (d / "model.safetensors.index.json").exists()


def reload(d: Path, **kw: Any) -> Any:
    """The saved fixture, loaded back in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, **kw)


def assert_same(a: np.ndarray, b: np.ndarray, what: str, atol: float = 0.0) -> float:
    """max |a - b|, asserted to be at most ``atol`` (bit-for-bit by default)."""
    diff = float(np.abs(a - b).max())
    assert diff <= atol, f"{what}: max abs diff {diff} > {atol}"
    return diff


def build(config: dict[str, Any], out: Path, *, seed: int = 1, n_tokens: int = 16, tokenizer: Path | None = None,
          step: bool = False, blocks: dict[str, str] | None = None) -> dict[str, Any]:
    """Build the fixture folder ``out`` (see the module docstring); returns what was measured."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise SystemExit("the config needs a model_type")
    cfg = AutoConfig.for_model(model_type, **config)
    seed_all(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    randomize(model, seed)
    ids = make_ids(seed + 1, n_tokens, int(cfg.vocab_size))
    logits = full_logits(model, ids)
    info: dict[str, Any] = {"tokens": n_tokens, "stats": check_logits(str(out), logits)}
    arrays: dict[str, np.ndarray] = {"ids": ids, "logits": logits}
    if step:
        arrays["logits_step"] = step_logits(model, ids)
        info["step_vs_full"] = assert_same(arrays["logits_step"], logits, "step vs full", atol=2e-5)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_model(model, out)
    info["reload"] = assert_same(full_logits(reload(out), ids), logits, "reload")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    if blocks is not None:
        arrays.update(reference_states(out, ids, int(cfg.num_hidden_layers), blocks))
    write_npz_deterministic(out / "ref.npz", arrays)
    return info


def reference_states(folder: Path, ids: np.ndarray, n_layers: int, blocks: dict[str, str]) -> dict[str, Any]:
    """The states ``modelkit compare`` reads, from transformers on ``folder`` (eager attention),
    with ``blocks`` naming each block's module (``{i}``: the layer index) and a ``meta`` entry."""
    from ..evaluation import transformers_run

    block_modules = {f"block.{i}.{name}": module.replace("{i}", str(i))
                     for i in range(n_layers) for name, module in blocks.items()}
    states, meta = transformers_run.run(str(folder), ids, n_layers=n_layers, block_modules=block_modules)
    missing = meta["not_captured"]
    assert not missing, f"no single [T, width] output from {missing}"
    return {**states, "meta": np.array(json.dumps(meta, sort_keys=True))}


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    import torch
    import transformers

    p = argparse.ArgumentParser(prog="python -m modelkit.testing.build_fixture", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, type=Path, help="config.json-style dict with model_type")
    p.add_argument("--out", required=True, type=Path, help="the fixture folder (replaced)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tokens", type=int, default=16, help="length of the reference sequence")
    p.add_argument("--tokenizer", type=Path, help="a tokenizer.json to copy in")
    p.add_argument("--step", action="store_true", help="also record transformers' own cached decoding")
    p.add_argument("--blocks", type=Path, help="JSON: block name -> module name with {i}, for compare's states")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    blocks = json.loads(args.blocks.read_text()) if args.blocks else None
    info = build(json.loads(args.config.read_text()), args.out, seed=args.seed, n_tokens=args.tokens,
                 tokenizer=args.tokenizer, step=args.step, blocks=blocks)
    print(f"{args.out}: " + json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
