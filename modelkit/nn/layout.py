"""Which memory layout of a weight BLAS multiplies one activation row by fastest, here.

A decoding step is one-row products, bound by how fast BLAS streams each weight. Stored
[out, in] (PyTorch's layout, C order), OpenBLAS computes each output as a dot product along a
contiguous row; stored [in, out] (a Fortran-ordered [out, in] array), it adds columns scaled by
the row's entries. Which streams faster depends on the machine, not only on the weight's shape:
with two threads, an AMD EPYC of the Zen 5 generation read every shape tried faster [out, in],
while one of the Zen 3 generation read [in, out] 17-23% faster for weights with more outputs
than inputs (short rows) and [out, in] 15-26% faster for the others. So with two or more BLAS
threads the first weight laid out measures both layouts once per process, on a tall and a wide
matrix out of cache, and keeps [in, out] for a shape class only where it is clearly faster.
With one thread, [in, out] everywhere (measured 15-25% less CPU time per decoded token).

``MODELKIT_PRODUCT_LAYOUT`` overrides it: ``rows`` ([out, in] everywhere), ``columns``
([in, out] everywhere) or ``measure`` (the default).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from ..errors import ConfigError
from .parallel import blas_threads

ENV = "MODELKIT_PRODUCT_LAYOUT"
SETTINGS = ("measure", "rows", "columns")
# the probe's matrices: a tall and a wide one of a small model's shapes, copies enough to be
# read from memory rather than from the caches (more than a last-level cache of 32 MB)
PROBE_SHAPES = ((3072, 768), (768, 3072))
PROBE_BYTES = 40 << 20
PROBE_ROUNDS = 5
# [in, out] is kept only when at least this much faster (best of the rounds): a tie keeps the
# layout PyTorch stores, which a float32 checkpoint's weight can be used in without a copy
MARGIN = 0.93

_lock = threading.Lock()
_measured: dict[int, tuple[str, str]] = {}  # BLAS threads -> (order of tall weights, of the others)


def setting() -> str:
    """The ``MODELKIT_PRODUCT_LAYOUT`` setting, checked."""
    value = os.environ.get(ENV, "measure").strip().lower() or "measure"
    if value not in SETTINGS:
        raise ConfigError(f"{ENV}={value!r}: expected one of {', '.join(SETTINGS)}")
    return value


def weight_order(out: int, inp: int) -> str:
    """The NumPy order ("C": [out, in]; "F": [in, out]) to store an [out, in] weight in."""
    chosen = setting()
    if chosen != "measure":
        return "C" if chosen == "rows" else "F"
    threads = blas_threads()
    if threads < 2:
        return "F"
    with _lock:
        if threads not in _measured:
            _measured[threads] = tuple(probe(*shape) for shape in PROBE_SHAPES)  # type: ignore[assignment]
        tall, wide = _measured[threads]
    return tall if out > inp else wide


def probe(out: int, inp: int, total_bytes: int = PROBE_BYTES, rounds: int = PROBE_ROUNDS) -> str:
    """The order to store [out, in] weights of this shape in: "F" ([in, out]) if one-row
    products with them are clearly faster so here, else "C"; both layouts timed in alternating
    rounds over copies enough to fill ``total_bytes``, best of ``rounds`` each."""
    copies = max(2, -(-total_bytes // (out * inp * 4)))
    # written, so that every page is real (untouched zero pages would read from the caches)
    rows = [np.full((out, inp), 0.5, np.float32) for _ in range(copies)]
    columns = [np.full((out, inp), 0.5, np.float32, order="F") for _ in range(copies)]
    x = np.full((1, inp), 0.25, np.float32)
    best = {"C": float("inf"), "F": float("inf")}
    for _ in range(rounds):
        for order, weights in (("C", rows), ("F", columns)):
            start = time.perf_counter()
            for w in weights:
                x @ w.T
            best[order] = min(best[order], time.perf_counter() - start)
    return "F" if best["F"] < MARGIN * best["C"] else "C"


def measured() -> dict[int, tuple[str, str]]:
    """What the probe chose so far in this process: BLAS threads -> (tall, other) orders."""
    return dict(_measured)
