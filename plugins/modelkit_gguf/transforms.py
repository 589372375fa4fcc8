"""Weight transforms that undo what llama.cpp's converter does to tensors.

Each is registered under its name (``__init__.py``) with a shape function, so a plan checks
its result before any tensor is read. What each undoes, and where the converter does it
(``convert_hf_to_gguf.py``):

- ``unpermute_rope``: LlamaModel.permute, Q/K rows interleaved per head for llama.cpp's
  pairwise rotary kernel;
- ``undo_neg_exp``: MambaModel / Mamba2Model store Mamba's ``A = -exp(A_log)`` rather than
  ``A_log``.
"""

from __future__ import annotations

import numpy as np

from modelkit import CheckpointError

Shape = tuple[int, ...]


def unpermute_rope(a: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of Q/K for rotary (GGUF stores rows interleaved per head;
    modelkit rotates halves, as Hugging Face Llama does)."""
    rest = a.shape[1:]
    return np.ascontiguousarray(
        a.reshape(heads, a.shape[0] // heads // 2, 2, *rest).swapaxes(1, 2).reshape(a.shape))


def unpermute_rope_shape(shape: Shape, heads: int) -> Shape:
    if heads <= 0 or shape[0] % (2 * heads):
        raise CheckpointError(f"unpermute_rope: {shape[0]} rows do not split into {heads} heads of even size")
    return shape


def undo_neg_exp(a: np.ndarray) -> np.ndarray:
    """``A_log`` from the ``A = -exp(A_log)`` llama.cpp stores (``blk.N.ssm_a``): ``log(-A)``.

    The log is taken in float64 so that ``-exp`` of the result gives back the stored float32
    ``A`` (to the rounding of one float32). ``A`` is negative by construction; a value that is
    not cannot come from an ``A_log`` and is refused.
    """
    if not np.all(a < 0):  # ValueError: the loader names the tensor
        raise ValueError(f"{int(np.sum(~(a < 0)))} of {a.size} values are not negative; "
                         f"llama.cpp stores A = -exp(A_log) < 0")
    return np.log(-a.astype(np.float64)).astype(np.float32)


def permute_rope(a: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`unpermute_rope`: llama.cpp's row order (LlamaModel.permute)."""
    rest = a.shape[1:]
    return np.ascontiguousarray(
        a.reshape(heads, 2, a.shape[0] // heads // 2, *rest).swapaxes(1, 2).reshape(a.shape))


def neg_exp(a: np.ndarray) -> np.ndarray:
    """The inverse of :func:`undo_neg_exp`: ``A = -exp(A_log)``."""
    return (-np.exp(a.astype(np.float64))).astype(np.float32)
