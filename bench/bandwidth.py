"""The machine's float32 matrix-vector bandwidth: the speed limit of decoding one token.

    python3 bench/bandwidth.py [--mb 768] [--rounds 7]

Decoding a token reads every weight once, so no engine can decode faster than the bytes of its
weights divided by this bandwidth. The matrices are the shapes of a model's layers (hidden
width 768: projections of 3376, 1536, 4096 and 2048 rows), together larger than any cache,
multiplied by one row of activations the way NumPy decodes: ``x @ W.T`` with W stored
[out, in] (PyTorch's layout) and ``x @ W`` with W stored [in, out]. Run in a fresh process with
the thread count of the engines (``python -m bench`` runs it before every round with the
workers' environment). Prints one JSON object: GB/s per form (best round; 1 GB = 1e9 bytes)
and ``matvec_gbps``, the faster form's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# [out, in] shapes of one layer's matrices at hidden width 768 (granite-4.0-h-350m's Mamba2
# in_proj and out_proj, its MLP's fused gate/up and down)
LAYER = ((3376, 768), (768, 1536), (4096, 768), (768, 2048))


def measure(total_mb: int, rounds: int) -> dict[str, float]:
    """Best GB/s over ``rounds`` passes for each product form, over ``total_mb`` of weights."""
    rng = np.random.default_rng(0)
    per_layer = sum(o * i for o, i in LAYER) * 4
    layers = max(1, total_mb * 2**20 // per_layer)
    stored = [rng.standard_normal(s, dtype=np.float32) for _ in range(layers) for s in LAYER]
    transposed = [np.ascontiguousarray(w.T) for w in stored]  # [in, out]
    xs = {i: rng.standard_normal((1, i), dtype=np.float32) for _, i in LAYER}
    nbytes = sum(w.nbytes for w in stored)
    best = {"x @ W.T, W [out, in]": float("inf"), "x @ W, W [in, out]": float("inf")}
    for r in range(rounds + 1):  # the first pass warms up (page faults, thread start)
        order = list(best) if r % 2 == 0 else list(best)[::-1]
        for form in order:
            mats = stored if form.endswith("[out, in]") else transposed
            t0 = time.perf_counter()
            if mats is stored:
                for w in mats:
                    xs[w.shape[1]] @ w.T
            else:
                for w in mats:
                    xs[w.shape[0]] @ w
            seconds = time.perf_counter() - t0
            if r:
                best[form] = min(best[form], seconds)
    out = {f"{form} (GB/s)": nbytes / s / 1e9 for form, s in best.items()}
    out["matvec_gbps"] = max(out.values())
    out["matvec_mb"] = nbytes / 2**20
    out["loadavg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=768, help="MiB of weights (well past the caches)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.mb, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
