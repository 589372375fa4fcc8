"""The product with a PyTorch-layout weight, ``x @ w.T``, in the orientation BLAS runs fastest."""

from __future__ import annotations

import numpy as np

from .layout import turned, weight_order, widened_rows
from .parallel import PIECE_ROWS, map_rows, spread


def product_layout(*rows: np.ndarray) -> np.ndarray:
    """The weights ``rows`` ([out_k, in] each) stacked into one [sum(out_k), in] matrix in the
    memory layout whose one-row product (decoding) BLAS runs fastest here for that shape, for
    :func:`linear`: [out, in] (C order) or [in, out] (a Fortran-ordered [out, in] array, so
    every ``w[rows]``, ``w.shape`` and ``linear(x, w)`` stays as it is), as
    :func:`~modelkit.nn.layout.weight_order` measured it. One copy, or none for a single
    float32 weight already so laid out."""
    order = weight_order(sum(r.shape[0] for r in rows), rows[0].shape[1])
    if order == "C" and len(rows) == 1 and rows[0].dtype == np.float32 and rows[0].flags.c_contiguous:
        return rows[0]  # already so: no copy (a float32 checkpoint's weight stays a view of its file)
    out = np.empty((sum(r.shape[0] for r in rows), rows[0].shape[1]), np.float32, order=order)
    start = 0
    for r in rows:
        out[start:start + r.shape[0]] = r
        start += r.shape[0]
    return out


def widen(w: np.ndarray) -> np.ndarray:
    """An [out, in] weight laid out by :func:`product_layout`, with zero rows after its own
    where :func:`~modelkit.nn.layout.widened_rows` measured its one-row products faster so
    (BLAS then spreads them over its threads); else ``w`` itself. Give :func:`linear` the
    weight's own ``out`` as ``rows``."""
    if not w.flags.c_contiguous:  # the probe measured [out, in] weights only
        return w
    rows = widened_rows(*w.shape)
    if rows == w.shape[0]:
        return w
    wide = np.zeros((rows, w.shape[1]), np.float32)
    wide[:w.shape[0]] = w
    return wide


# up to this many rows a product with an [out, in] weight may be turned (layout.turned); past
# it the transposed copy of the result costs more than the turn saves (measured: even at 64
# rows, a loss at 128)
FEW_ROWS = 32


def linear(x: np.ndarray, w: np.ndarray, rows: int | None = None) -> np.ndarray:
    """``x [T, in] @ w.T`` for ``w [out, in]`` in either layout: a C-contiguous float32
    [T, out] (with ``rows`` below ``out``, for a :func:`widen`-ed weight, [T, rows]: its zero
    rows enter one-row products only); for 2 to :data:`FEW_ROWS` rows and an [out, in]
    weight, computed as ``(w @ x.T).T`` where :func:`~modelkit.nn.layout.turned` measured
    that faster; inside :func:`~modelkit.nn.parallel.blas_held_to_one`, spans of a long
    input's rows on the pool."""
    t = x.shape[0]
    if t > 1 and rows is not None and rows != w.shape[0]:
        # the padding serves one-row products: more rows are multiplied by the weight's own
        # rows (a C-contiguous view): SmolLM2's 128-token prompt and batched steps 3-4% faster
        return linear(x, w[:rows])
    if t >= 2 * PIECE_ROWS and spread():
        y = map_rows(lambda part: linear(part, w), x)
    elif 1 < t <= FEW_ROWS and w.flags.c_contiguous and turned(*w.shape):
        y = np.ascontiguousarray((w @ x.T).T)
    else:
        y = x @ w.T
    return y if rows is None or rows == w.shape[0] else y[:, :rows]
