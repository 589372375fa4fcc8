"""Weight transforms that undo what llama.cpp's converter does to tensors."""

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
