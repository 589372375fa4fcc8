"""The product with a PyTorch-layout weight, ``x @ w.T``, in the orientation BLAS runs fastest."""

from __future__ import annotations

import numpy as np

from .parallel import PIECE_ROWS, map_rows, spread

# up to this many rows (a short prompt, a prompt's last piece) a weight kept in PyTorch's
# memory layout is multiplied as (w @ x.T).T: OpenBLAS then uses its kernel for a thin
# operand, measured about twice as fast for 16 rows; one row (decoding) is a matrix-vector
# product either way, and long pieces are equally fast in both orientations
THIN_ROWS = 128


def product_layout(*rows: np.ndarray) -> np.ndarray:
    """The weights ``rows`` ([out_k, in] each) stacked into one [sum(out_k), in] matrix stored
    the other way round in memory ([in, out], Fortran order), for :func:`linear`: one copy.

    ``x @ w.T`` then reads ``w.T`` row by row, the form OpenBLAS's matrix-vector kernel runs
    fastest: measured (single thread, CPU time, alternating rounds) 19% less time than the
    [out, in] layout for the matrices of a 768-wide layer and 30% for a 100352 x 768 head, a
    decoded SmolLM2-135M token 25% and a granite-4.0-h-350m one 15% less; products with
    16-256 rows 8-30% less than either orientation of the [out, in] layout."""
    out = np.empty((sum(r.shape[0] for r in rows), rows[0].shape[1]), np.float32, order="F")
    start = 0
    for r in rows:
        out[start:start + r.shape[0]] = r
        start += r.shape[0]
    return out


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x [T, in] @ w.T`` for ``w [out, in]``: a C-contiguous float32 [T, out]; inside
    :func:`~modelkit.nn.parallel.blas_held_to_one`, spans of a long input's rows on the pool."""
    if x.shape[0] >= 2 * PIECE_ROWS and spread():
        return map_rows(lambda rows: linear(rows, w), x)
    if w.flags.f_contiguous and not w.flags.c_contiguous:  # laid out by product_layout
        return x @ w.T
    if 1 < x.shape[0] <= THIN_ROWS:
        return np.ascontiguousarray((w @ x.T).T)  # the copy is T x out floats, the product T x out x in
    return x @ w.T
