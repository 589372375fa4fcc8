"""The head's layout chosen by timing its own one-row products while a model decodes.

The layout probe (:mod:`modelkit.nn.layout`) times copies of a layer's shapes. A model's head
is far taller (SmolLM2's is 49152 x 576) and a decoding step reads it after the layers have
flushed the caches, which the probe's copies cannot reproduce on a host whose last-level cache
holds them. On an Intel Xeon host with 260 MB of it, [out, in] led in the probe while the
[in, out] layout read SmolLM2's head 11-15% faster inside decoding (granite-350m's 5-10%).

So a large head starts a :class:`LayoutTrial`: after :data:`TRIAL_AFTER` one-row products
(a short generation never pays for the copy), the next alternate between its own layout and
a copy in the other, each timed; after :data:`TRIAL_CALLS` of each the
faster by median is kept and the other is dropped. Where the original is a view (of a
float32 checkpoint's mapped file: no memory of its own), the copy must be clearly faster, at
most ``MARGIN`` of the original's time; where the original is a copy too (converted from
bf16, dequantised), either costs the same memory and the faster is kept. Until then the head
takes twice its memory. The decision holds for the process: a head of the same shape loaded
later starts in the layout kept (:func:`start_head`). Only one-row products are timed, so a
model that only ever decodes batches keeps its head's layout. With one BLAS thread, or a ``MODELKIT_PRODUCT_LAYOUT`` other than ``measure``, no
trial runs.
"""

from __future__ import annotations

import statistics
import threading
from time import perf_counter

import numpy as np

from .layout import MARGIN, setting
from .linear import linear
from .parallel import blas_threads

# heads below this many elements get no trial: a product of a few megabytes is too short to
# time well, and too short to matter
TRIAL_MIN_ELEMENTS = 1 << 22
# one-row products before the trial begins: the copy costs 72 ms for SmolLM2's head and about
# 200 ms for granite-350m's, more than a short generation would win back
TRIAL_AFTER = 32
# timed one-row products per layout (the first product of the trial, which follows whatever
# came before it, is not counted)
TRIAL_CALLS = 6
# one-row products from a head's first to the trial's decision (the first of the trial is not
# timed): what a benchmark decodes untimed so that it measures the layout kept
TRIAL_PRODUCTS = TRIAL_AFTER + 1 + 2 * TRIAL_CALLS
# rows per block of the transposing copy: a blocked copy ran 2.3x faster than NumPy's
# asfortranarray for SmolLM2's head (72 against 166 ms)
COPY_ROWS = 256

# what trials kept: (BLAS threads, shape, the head's own order) -> the order kept
_decided: dict[tuple[int, tuple[int, ...], str], str] = {}


def wants_trial(weight: np.ndarray) -> bool:
    """Whether a head of this size and layout gets a :class:`LayoutTrial` here."""
    return (weight.ndim == 2 and weight.dtype == np.float32 and weight.size >= TRIAL_MIN_ELEMENTS
            and (weight.flags.c_contiguous or weight.flags.f_contiguous)
            and setting() == "measure" and blas_threads() >= 2)


def order_of(weight: np.ndarray) -> str:
    """ "C" for an [out, in] (C-ordered) weight, "F" for one laid out [in, out]."""
    return "C" if weight.flags.c_contiguous else "F"


def start_head(weight: np.ndarray) -> tuple[np.ndarray, LayoutTrial | None]:
    """The head to decode with and its :class:`LayoutTrial`, if one runs: ``weight`` and a
    trial, or ``weight`` (or its copy in the other layout) as a trial in this process kept for
    a head of its shape, or ``weight`` alone where no trial runs."""
    if not wants_trial(weight):
        return weight, None
    kept = _decided.get((blas_threads(), weight.shape, order_of(weight)))
    if kept is None:
        return weight, LayoutTrial(weight)
    return (weight if kept == order_of(weight) else other_layout(weight)), None


def other_layout(weight: np.ndarray) -> np.ndarray:
    """A copy of the [out, in] ``weight`` in the other memory layout (C <-> Fortran order),
    transposed in blocks of rows."""
    out_rows, inp = weight.shape
    if weight.flags.c_contiguous:  # -> [in, out] in memory: a C-ordered [in, out] array, transposed
        turned = np.empty((inp, out_rows), np.float32)
        for r in range(0, out_rows, COPY_ROWS):
            turned[:, r:r + COPY_ROWS] = weight[r:r + COPY_ROWS].T
        return turned.T
    rows = np.empty((out_rows, inp), np.float32)
    for r in range(0, out_rows, COPY_ROWS):
        rows[r:r + COPY_ROWS] = weight[r:r + COPY_ROWS]
    return rows


class LayoutTrial:
    """A weight held in both layouts for some of its one-row products, timed in alternation
    (see the module's docstring). :meth:`product` computes ``linear(x, w)``; once
    :attr:`kept` is set the trial is over and the caller keeps that array alone."""

    def __init__(self, weight: np.ndarray, calls: int = TRIAL_CALLS, after: int = TRIAL_AFTER):
        self.weights: list[np.ndarray | None] = [weight, None]  # the original, the copy (made as the trial begins)
        self.times: tuple[list[float], list[float]] = ([], [])
        first = order_of(weight)
        self.orders = (first, "F" if first == "C" else "C")
        self.key = (blas_threads(), weight.shape, self.orders[0])
        # the copy must be clearly faster only where the original costs no memory of its own
        self.margin = 1.0 if weight.flags.owndata else MARGIN
        self.calls = calls
        self.waiting = after  # one-row products left before the trial begins
        self.started = False
        self.kept: np.ndarray | None = None
        self._lock = threading.Lock()  # decoders in two threads take turns (and see one decision)

    def product(self, x: np.ndarray) -> np.ndarray:
        """``linear(x, w)`` for one row ``x [1, in]`` with the layout whose turn it is; after
        the last timed product, :attr:`kept` holds the faster weight."""
        with self._lock:
            if self.kept is not None:
                return linear(x, self.kept)
            if self.waiting > 0:
                self.waiting -= 1
                return linear(x, self.weights[0])
            if self.weights[1] is None:
                try:
                    self.weights[1] = other_layout(self.weights[0])
                except MemoryError:  # no room for a second head: the trial ends before it begins
                    self.kept, self.weights = self.weights[0], [None, None]
                    return linear(x, self.kept)
            if not self.started:  # the first product is not counted
                self.started = True
                return linear(x, self.weights[0])
            side = 0 if len(self.times[0]) <= len(self.times[1]) else 1
            start = perf_counter()
            y = linear(x, self.weights[side])
            self.times[side].append(perf_counter() - start)
            if len(self.times[1]) >= self.calls:
                original, copy = (statistics.median(t) for t in self.times)
                self.kept = self.weights[1] if copy < self.margin * original else self.weights[0]
                self.weights = [None, None]
                _decided[self.key] = order_of(self.kept)
            return y

    def report(self) -> dict[str, object]:
        """What the trial measured: the median milliseconds of a product in each layout timed
        ("C": [out, in], "F": [in, out]) and the layout kept (None while the trial runs)."""
        out: dict[str, object] = {order: round(statistics.median(t) * 1e3, 3) if t else None
                                  for order, t in zip(self.orders, self.times)}
        out["kept"] = None if self.kept is None else order_of(self.kept)
        return out
