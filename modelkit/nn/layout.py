"""Which memory layout of a weight BLAS multiplies one activation row by fastest, here, and
which form its products with a few rows take.

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

A product of a few rows (a batch of decoding sequences, a short prompt) is another matter:
BLAS packs the weight for every such call, and packs it fastest untransposed. On an Intel Xeon
(two threads, 16 rows, out of cache) ``(w @ x.T).T`` over an [out, in] weight took 12-40% less
time than ``x @ w.T`` (the heads least), and ``x @ w.T`` over an [in, out] weight took a
further 17-25% less for the heads and Granite's in_proj (the Granite head: 27.5 against 34.3
ms), where one row read both layouts alike.
So the probe also times 16 rows: which form an [out, in] weight's few-row products take
(:func:`turned`), and which layout a shape class takes when one row reads both within
``MARGIN``.

A weight small enough that OpenBLAS multiplies one row by it on one thread can be padded
with zero rows past that line (:func:`widened_rows`, measured per shape: SmolLM2's 576 x 576
attention output streams twice as fast at 828 rows).

``MODELKIT_PRODUCT_LAYOUT`` overrides it: ``rows`` ([out, in] everywhere), ``columns``
([in, out] everywhere) or ``measure`` (the default); with either of the first two, and with
one thread, an [out, in] weight's few-row products are turned (measured faster so on one
thread too) and no weight is padded.
"""

from __future__ import annotations

import os
import threading
import time
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from .parallel import blas_threads

ENV = "MODELKIT_PRODUCT_LAYOUT"
SETTINGS = ("measure", "rows", "columns")
# the shape classes and the probe's matrix for each, a wide and a tall one of a small model's
# shapes; copies enough to be read from memory rather than from most caches (more than a
# last-level cache of 32 MB: a host with a far larger one measures partly in it)
PROBE_SHAPES = {"wide": (768, 3072), "tall": (3072, 768)}
PROBE_BYTES = 40 << 20
PROBE_ROUNDS = 5
# [in, out] is kept only when at least this much faster (best of the rounds): a tie keeps the
# layout PyTorch stores, which a float32 checkpoint's weight can be used in without a copy
MARGIN = 0.93
# the rows of the probe's few-row products (a batch of decoding sequences)
PROBE_FEW_ROWS = 16


class Choice(NamedTuple):
    """What the probe chose for one shape class: the layout (``order``: "C" [out, in] or "F"
    [in, out]) and whether few-row products with an [out, in] weight are ``turned``,
    ``(w @ x.T).T`` instead of ``x @ w.T``."""

    order: str
    turned: bool


# only weights smaller than this (elements) are probed for padding rows (widened_rows)
WIDEN_BELOW = 1 << 20

_lock = threading.Lock()
_measured: dict[int, dict[str, Choice]] = {}  # BLAS threads -> shape class -> choice
_widened: dict[tuple[int, int, int], int] = {}  # (BLAS threads, out, in) -> rows to store


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
    choice = _choice(out, inp)
    return "F" if choice is None else choice.order


def turned(out: int, inp: int) -> bool:
    """Whether a product of a few rows with an [out, in] (C-ordered) weight of this shape runs
    faster as ``(w @ x.T).T`` than as ``x @ w.T`` here."""
    choice = _choice(out, inp) if setting() == "measure" else None
    return True if choice is None else choice.turned


def _choice(out: int, inp: int) -> Choice | None:
    """The probe's choice for this shape's class with this many BLAS threads (None with one);
    each class is probed the first time a weight of it is asked about."""
    threads = blas_threads()
    if threads < 2:
        return None
    kind = "tall" if out > inp else "wide"
    with _lock:
        chosen = _measured.setdefault(threads, {})
        if kind not in chosen:
            chosen[kind] = probe(*PROBE_SHAPES[kind])
        return chosen[kind]


def probe(out: int, inp: int, total_bytes: int = PROBE_BYTES, rounds: int = PROBE_ROUNDS) -> Choice:
    """What to do with [out, in] weights of this shape: store them [in, out] ("F") if one-row
    products with them are clearly faster so, or if one row reads both layouts within
    ``MARGIN`` and few-row products are clearly faster so; else [out, in] ("C"), with few-row
    products turned if that is faster. One row and :data:`PROBE_FEW_ROWS` rows are timed in
    both layouts (and both forms for [out, in]) in alternating rounds over copies enough to
    fill ``total_bytes``, best of ``rounds`` each."""
    copies = max(2, -(-total_bytes // (out * inp * 4)))
    # written, so that every page is real (untouched zero pages would read from the caches)
    rows = [np.full((out, inp), 0.5, np.float32) for _ in range(copies)]
    columns = [np.full((out, inp), 0.5, np.float32, order="F") for _ in range(copies)]
    one = np.full((1, inp), 0.25, np.float32)
    few = np.full((PROBE_FEW_ROWS, inp), 0.25, np.float32)
    trials = {
        "C": (rows, lambda w: one @ w.T),
        "F": (columns, lambda w: one @ w.T),
        "C few": (rows, lambda w: few @ w.T),
        "C few turned": (rows, lambda w: np.ascontiguousarray((w @ few.T).T)),
        "F few": (columns, lambda w: few @ w.T),
    }
    best = dict.fromkeys(trials, float("inf"))
    for _ in range(rounds):
        for name, (weights, product) in trials.items():
            start = time.perf_counter()
            for w in weights:
                product(w)
            best[name] = min(best[name], time.perf_counter() - start)
    is_turned = best["C few turned"] < best["C few"]
    c_few = min(best["C few"], best["C few turned"])
    if best["F"] < MARGIN * best["C"]:
        return Choice("F", is_turned)
    if best["F"] * MARGIN <= best["C"] and best["F few"] < MARGIN * c_few:  # a tie for one row
        return Choice("F", is_turned)
    return Choice("C", is_turned)


def widened_rows(out: int, inp: int) -> int:
    """The rows to store an [out, in] weight with (``out`` and zero rows after them) for its
    one-row products to run fastest here: ``out`` unless measured clearly faster padded.

    OpenBLAS runs a matrix-vector product on one thread below a size (out x in under 460,800
    in the builds measured): a small model's 576 x 576 attention output took 95.6 us a token
    on an Intel Xeon host, padded to 800 rows 66.2 us. The probe finds that line by
    measurement, for weights below :data:`WIDEN_BELOW` elements with two or more BLAS threads
    and the ``measure`` setting, once per shape and process."""
    if out * inp >= WIDEN_BELOW or setting() != "measure":
        return out
    threads = blas_threads()
    if threads < 2:
        return out
    with _lock:
        if (threads, out, inp) not in _widened:
            _widened[(threads, out, inp)] = probe_rows(out, inp)
        return _widened[(threads, out, inp)]


def probe_rows(out: int, inp: int, total_bytes: int = PROBE_BYTES // 2, rounds: int = 3) -> int:
    """The fewest rows from ``out`` up to twice it, in steps of a sixteenth, at which a one-row
    product is fastest, if at least ``MARGIN`` of the time at ``out`` rows; else ``out``. Timed
    in alternating rounds over leading-row views of copies enough to fill ``total_bytes``."""
    step = -(-out // 16)
    candidates = [out + k * step for k in range(17)]
    copies = max(2, -(-total_bytes // (candidates[-1] * inp * 4)))
    weights = [np.full((candidates[-1], inp), 0.5, np.float32) for _ in range(copies)]
    one = np.full((1, inp), 0.25, np.float32)
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for rows in candidates:
            start = time.perf_counter()
            for w in weights:
                one @ w[:rows].T
            best[rows] = min(best[rows], time.perf_counter() - start)
    fastest = min(candidates, key=lambda rows: (best[rows], rows))
    return fastest if best[fastest] < MARGIN * best[out] else out


def measured() -> dict[int, dict[str, Choice]]:
    """What the probe chose so far in this process: BLAS threads -> shape class -> choice."""
    return {threads: dict(chosen) for threads, chosen in _measured.items()}
