"""Aggregate decoding throughput of continuous batching (BatchDecoder) at several batch sizes.

    python3 -m bench.batch [CHECKPOINT] [--streams 1,4,8,16] [--prompt 32] [--tokens 32]

For each number of streams N: N random prompts of about ``--prompt`` tokens join at once (read
together in one batched prefill), then greedy decoding of ``--tokens`` tokens each, all N in
every step. Prints per N: aggregate decode tokens/s (every stream's tokens over the decoding
time) and its ratio to the first N's (one stream by default); the same per second of the
process's CPU time (steadier than wall time on a shared machine, where other processes' load
inflates it less); ms per batched step; and two times to first token: ``ttft`` with all N
arriving together (the batched prefill of the N prompts, then the step that gives all N their
first token), and ``join`` for one more stream joining N-1 that are already decoding (its
prefill and the step that gives its first token). The default checkpoint is the SmolLM2-135M
shape under ~/.cache/modelkit/bench/checkpoints (``python3 bench/checkpoints.py smollm2-135m``;
its ``smollm2-135m-real`` sibling, the real weights, works the same).

``--interleave ROUNDS`` measures the steps alone, in a way the drift of a shared machine cannot
bias: one decoder per number of streams, each on its own copy of the model, all loaded at once,
each stepped once in turn for ROUNDS rounds; it prints the median ms per step of each and the
tokens/s ratio to the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT = Path.home() / ".cache" / "modelkit" / "bench" / "checkpoints" / "smollm2-135m"


def measure(model, streams: int, prompt: int, tokens: int, seed: int = 0) -> dict[str, float]:
    """One round at ``streams`` sequences: decode rate, step time and times to first token."""
    import numpy as np

    from modelkit.generation.batch import BatchDecoder

    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, model.vocab_size, prompt + int(rng.integers(-4, 5))).tolist()
               for _ in range(streams)]
    options = dict(max_new_tokens=tokens + 1, temperature=0.0, stop_ids=[])
    decoder = BatchDecoder(model, max_batch=max(streams, 1))
    t0 = time.perf_counter()
    decoder.add_many(prompts, options=options)  # all N arrive together: one batched prefill
    decoder.step()  # every stream's first token (chosen from its prefill) and the first batched forward
    ttft = time.perf_counter() - t0  # all N first tokens come out of that step
    steps = made = 0
    t1, c1 = time.perf_counter(), time.process_time()
    while decoder.active:
        made += len(decoder.step())
        steps += 1
    decode, cpu = time.perf_counter() - t1, time.process_time() - c1
    # one more stream joining N-1 that are decoding
    join = float("nan")
    if streams > 1:
        decoder = BatchDecoder(model, max_batch=streams)
        for p in prompts[1:]:
            decoder.add(p, **options)
        for _ in range(2):
            decoder.step()
        t2 = time.perf_counter()
        decoder.add(prompts[0], **options)
        decoder.step()
        join = time.perf_counter() - t2
    return {"streams": streams, "tok_s": made / decode, "cpu_tok_s": made / cpu, "step_ms": 1000 * decode / max(steps, 1),
            "ttft_ms": 1000 * ttft, "join_ms": 1000 * join}


def interleaved(models: list, counts: list[int], prompt: int, rounds: int,
                seed: int = 0) -> list[dict[str, float]]:
    """Median ms per step of a decoder of each size in ``counts``, the decoders stepped in turn,
    each on its own model from ``models`` (a model's blocks keep one running batch's states side
    by side: decoders sharing a model would re-seat them at every step)."""
    import numpy as np

    from modelkit.generation.batch import BatchDecoder

    rng = np.random.default_rng(seed)
    decoders = []
    for n, model in zip(counts, models):
        decoder = BatchDecoder(model, max_batch=n)
        decoder.add_many([rng.integers(0, model.vocab_size, prompt).tolist() for _ in range(n)],
                         options=dict(max_new_tokens=rounds + 2, temperature=0.0, stop_ids=[]))
        decoder.step()
        decoders.append(decoder)
    times: list[list[float]] = [[] for _ in counts]
    for _ in range(rounds):
        for decoder, spent in zip(decoders, times):
            t0 = time.perf_counter()
            decoder.step()
            spent.append(time.perf_counter() - t0)
    out = []
    for n, spent in zip(counts, times):
        step = float(np.median(spent))
        out.append({"streams": n, "step_ms": 1000 * step, "tok_s": n / step})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT))
    parser.add_argument("--streams", default="1,4,8,16", help="batch sizes, comma-separated")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream (+-4)")
    parser.add_argument("--tokens", type=int, default=32, help="decoded tokens per stream")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="step one decoder per size in turn, ROUNDS rounds (steps only)")
    args = parser.parse_args(argv)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, str(args.threads))
    import numpy as np

    import modelkit

    model = modelkit.load(args.checkpoint)
    # warm up, and let the head's layout trial finish (modelkit.nn.trial: one-row products
    # only), so that this model and those loaded below decode batches with the layout kept
    from modelkit.nn.trial import TRIAL_PRODUCTS

    cache, token = model.make_cache(), 1
    for _ in range(TRIAL_PRODUCTS + 4):
        token = int(np.argmax(model.forward([token], cache, last_only=True)[-1]))
    counts = [int(s) for s in args.streams.split(",")]
    if args.interleave:
        print(f"{args.checkpoint}: {args.prompt}-token prompts, decoders stepped in turn, {args.interleave} rounds")
        models = [model] + [modelkit.load(args.checkpoint) for _ in counts[1:]]
        rows = interleaved(models, counts, args.prompt, args.interleave)
        for r in rows:
            print(f"{r['streams']:7d} streams {r['step_ms']:8.1f} ms/step {r['tok_s']:8.1f} tok/s "
                  f"{r['tok_s'] / rows[0]['tok_s']:6.2f}x")
        return 0
    print(f"{args.checkpoint}: {args.prompt}-token prompts, {args.tokens} greedy tokens per stream")
    print(f"{'streams':>7} {'tok/s':>8} {'x 1st':>6} {'cpu tok/s':>9} {'x 1st':>6} {'ms/step':>8} "
          f"{'ttft ms':>8} {'join ms':>8}")
    first = None
    for n in counts:
        r = measure(model, n, args.prompt, args.tokens)
        first = first or r
        print(f"{n:7d} {r['tok_s']:8.1f} {r['tok_s'] / first['tok_s']:6.2f} {r['cpu_tok_s']:9.1f} "
              f"{r['cpu_tok_s'] / first['cpu_tok_s']:6.2f} {r['step_ms']:8.1f} {r['ttft_ms']:8.0f} "
              f"{r['join_ms']:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
