"""The product with a PyTorch-layout weight, ``x @ w.T``, in the orientation BLAS runs fastest."""

from __future__ import annotations

import numpy as np

# up to this many rows (a short prompt, a prompt's last piece) the product is taken as
# (w @ x.T).T: OpenBLAS then uses its kernel for a thin operand, measured about twice as fast
# for 16 rows and far less slowed by a busy second core; one row (decoding) is a
# matrix-vector product either way, and long pieces are equally fast in both orientations
THIN_ROWS = 128


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x [T, in] @ w.T`` for ``w [out, in]``: a C-contiguous float32 [T, out]."""
    if 1 < x.shape[0] <= THIN_ROWS:
        return np.ascontiguousarray((w @ x.T).T)  # the copy is T x out floats, the product T x out x in
    return x @ w.T
