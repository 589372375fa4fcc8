"""Where modelkit's decode (or prefill) time goes, by block kind, plus the head and the rest.

    python3 -m bench.breakdown CHECKPOINT [--tokens 64] [--prompt 32] [--prefill 0] [--cprofile]

Wraps every block's ``forward`` with a timer (the wrapper costs about a microsecond per call,
included in the figures), decodes greedily, and prints milliseconds per token for each block
kind, the final norm + head, and the remainder (embedding, the layer loop, residual adds,
argmax). ``--prefill N`` profiles one N-token prompt instead. ``--cprofile`` adds the top
functions by own time from cProfile (which slows Python-heavy code more than BLAS-heavy code).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np


def instrument(model: Any) -> dict[str, list[float]]:
    """Wrap each block's forward (and the head) to add its time to a per-kind total."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def wrap(obj: Any, attr: str, key: str) -> None:
        inner = getattr(obj, attr)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                slot = totals[key]
                slot[0] += time.perf_counter() - t0
                slot[1] += 1

        setattr(obj, attr, timed)

    for layer in model.layers:
        for name, block in layer.blocks.items():
            wrap(block, "forward", f"{name} ({type(block).__name__})")
    wrap(model, "_head", "final norm + head")
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens profiled")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens before decoding")
    parser.add_argument("--prefill", type=int, default=0, help="profile one prompt of this many tokens instead")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args(argv)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, str(args.threads))
    import modelkit

    model = modelkit.load(args.checkpoint)
    rng = np.random.default_rng(0)
    cache = model.make_cache()
    if args.prefill:
        model.forward(rng.integers(0, model.vocab_size, 16), model.make_cache(), last_only=True)  # warm up
        ids = rng.integers(0, model.vocab_size, args.prefill)
        steps, unit = 1, f"{args.prefill}-token prefill"
    else:
        token = int(np.argmax(model.forward(rng.integers(0, model.vocab_size, args.prompt), cache,
                                            last_only=True)[-1]))
        from modelkit.nn.trial import TRIAL_PRODUCTS

        for _ in range(TRIAL_PRODUCTS + 4):  # warm up, through the head's layout trial
            token = int(np.argmax(model.forward([token], cache, last_only=True)[-1]))
        steps, unit = args.tokens, "token"

    def work() -> None:
        nonlocal token
        if args.prefill:
            model.forward(ids, model.make_cache(), last_only=True)
        else:
            for _ in range(steps):
                token = int(np.argmax(model.forward([token], cache, last_only=True)[-1]))

    t0 = time.perf_counter()
    work()  # unwrapped: the true time
    plain = time.perf_counter() - t0
    totals = instrument(model)
    t0 = time.perf_counter()
    work()
    wall = time.perf_counter() - t0
    print(f"{args.checkpoint}: {1000 * plain / steps:.2f} ms per {unit} unprofiled "
          f"({steps / plain:.1f} per s), {1000 * wall / steps:.2f} ms with timers")
    accounted = 0.0
    for key, (seconds, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        accounted += seconds
        print(f"  {key:32s} {1000 * seconds / steps:8.2f} ms  {100 * seconds / wall:5.1f}%  "
              f"({calls // steps} calls, {1e6 * seconds / max(calls, 1):.0f} us each)")
    rest = wall - accounted
    print(f"  {'rest (embed, loop, residuals)':32s} {1000 * rest / steps:8.2f} ms  {100 * rest / wall:5.1f}%")
    if args.cprofile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        work()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    return 0


if __name__ == "__main__":
    sys.exit(main())
