"""The product with a PyTorch-layout weight, ``x @ w.T``, in the orientation BLAS runs fastest."""

from __future__ import annotations

import numpy as np

from .parallel import PIECE_ROWS, blas_threads, map_rows, spread


def product_layout(*rows: np.ndarray) -> np.ndarray:
    """The weights ``rows`` ([out_k, in] each) stacked into one [sum(out_k), in] matrix in the
    memory layout whose one-row product (decoding) BLAS runs fastest with the threads it has
    now, for :func:`linear`: one copy, or none for a single float32 weight already so laid out.

    With two or more BLAS threads, [out, in] as PyTorch stores it: OpenBLAS splits a
    matrix-vector product by output rows, so each thread streams one contiguous block of the
    matrix (measured with two threads, alternating rounds: a decoded granite-4.0-h-350m token
    7% less time than the [in, out] layout; 300 MB of SmolLM2-135M's down projections 37.5
    against 29.0 GB/s). With one thread, [in, out] (a Fortran-ordered [out, in] array, so every
    ``w[rows]``, ``w.shape`` and ``linear(x, w)`` stays as it is): the matrix is then read
    column by column in one stream, measured 15-25% less CPU time per decoded token
    (OpenBLAS's SkylakeX kernels; within about 15% either way on its Haswell ones)."""
    order = "C" if blas_threads() >= 2 else "F"
    if order == "C" and len(rows) == 1 and rows[0].dtype == np.float32 and rows[0].flags.c_contiguous:
        return rows[0]  # already so: no copy (a float32 checkpoint's weight stays a view of its file)
    out = np.empty((sum(r.shape[0] for r in rows), rows[0].shape[1]), np.float32, order=order)
    start = 0
    for r in rows:
        out[start:start + r.shape[0]] = r
        start += r.shape[0]
    return out


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x [T, in] @ w.T`` for ``w [out, in]`` in either layout: a C-contiguous float32
    [T, out]; inside :func:`~modelkit.nn.parallel.blas_held_to_one`, spans of a long input's
    rows on the pool. (The other orientation, ``(w @ x.T).T``, measured slower for 16 to 256
    rows in both layouts.)"""
    if x.shape[0] >= 2 * PIECE_ROWS and spread():
        return map_rows(lambda rows: linear(rows, w), x)
    return x @ w.T
