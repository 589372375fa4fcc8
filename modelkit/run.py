"""`modelkit run`: load, encode the prompt, stream generated text, report timings."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import GenerationError, TokenizerError


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that generate."""
    p.add_argument("--prompt", "-p", help="prompt text")
    p.add_argument("--max-tokens", "-n", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--temperature", "-t", type=float, default=None,
                   help="sampling temperature; 0 is greedy (default: generation_config.json, else 0)")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing line on stderr")


def run(args: argparse.Namespace) -> int:
    from .hub import resolve_model_path
    from .loader import load

    if args.prompt is None:
        raise GenerationError("--prompt is required")
    if args.max_tokens < 1:
        raise GenerationError("--max-tokens must be at least 1")
    t0 = time.perf_counter()
    model = load(resolve_model_path(args.model), args.arch, mapping=args.mapping, progress=True)
    load_s = time.perf_counter() - t0
    if model.tokenizer is None:
        raise TokenizerError(f"{args.model}: no tokenizer.json, so text cannot be encoded")
    ids = model.tokenizer.encode(args.prompt)
    if not ids:
        raise GenerationError("the prompt encodes to no tokens")
    temperature = 0.0 if args.temperature is None else args.temperature
    t1 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=args.max_tokens, temperature=temperature, seed=args.seed)
    gen_s = time.perf_counter() - t1
    sys.stdout.write(model.tokenizer.decode(out))
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        print(f"[{len(ids)} prompt tokens, {len(out)} generated; load {load_s:.2f} s, "
              f"{len(out) / gen_s:.1f} tok/s]", file=sys.stderr)
    return 0
