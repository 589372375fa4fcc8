"""The core's named weight transforms, applied by mappings to checkpoint tensors.

Each transform has ``apply(array, **args)`` and ``shape(shape, **args)``; the loader checks
shapes with the latter before reading any data. docs/mappings.md documents each one.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import CheckpointError

Shape = tuple[int, ...]


def transpose(a: np.ndarray) -> np.ndarray:
    """Swap the two axes of a matrix: GPT-2's Conv1D stores weights [in, out], not [out, in]."""
    return np.ascontiguousarray(a.T)


def transpose_shape(shape: Shape) -> Shape:
    if len(shape) != 2:
        raise CheckpointError(f"transpose needs a matrix, got shape {list(shape)}")
    return (shape[1], shape[0])


def split(a: np.ndarray, parts: int, index: int, axis: int = 0) -> np.ndarray:
    """Take piece ``index`` of ``parts`` equal pieces along ``axis``: fused QKV (GPT-2 c_attn)
    or fused gate/up (Granite's input_linear: gate first, then up)."""
    return np.ascontiguousarray(np.split(a, parts, axis=axis)[index])


def split_shape(shape: Shape, parts: int, index: int, axis: int = 0) -> Shape:
    if not 0 <= index < parts or axis >= len(shape) or shape[axis] % parts:
        raise CheckpointError(f"cannot take piece {index} of {parts} along axis {axis} of shape {list(shape)}")
    out = list(shape)
    out[axis] //= parts
    return tuple(out)


def slice_(a: np.ndarray, start: int, stop: int, axis: int = 0) -> np.ndarray:
    """Take ``[start, stop)`` along ``axis``: one part of a fused tensor whose parts differ in
    size (Phi-3's qkv_proj holds H query heads, then KV key heads, then KV value heads)."""
    return np.ascontiguousarray(np.take(a, np.arange(start, stop), axis=axis))


def slice_shape(shape: Shape, start: int, stop: int, axis: int = 0) -> Shape:
    if not (isinstance(start, int) and isinstance(stop, int) and isinstance(axis, int)) \
            or not 0 <= axis < len(shape) or not 0 <= start < stop <= shape[axis]:
        raise CheckpointError(f"cannot take [{start}, {stop}) along axis {axis} of shape {list(shape)}")
    out = list(shape)
    out[axis] = stop - start
    return tuple(out)


def reshape(a: np.ndarray, to: list[int], **stored: list[int]) -> np.ndarray:
    """Reshape (one entry may be -1): e.g. a depthwise conv weight [C, 1, K] -> [C, K].

    ``from`` (optional, one entry may be -1) is the shape the checkpoint stores: checked on
    loading, and the shape ``modelkit convert`` writes the tensor back in."""
    return np.ascontiguousarray(a.reshape(reshape_shape(a.shape, to, **stored)))


def _fit_shape(shape: Shape, target: list[int], what: str) -> Shape:
    """``target`` with its -1 filled in from ``shape``'s size; refused when sizes differ."""
    target = list(target)
    size = int(np.prod(shape))
    if target.count(-1) > 1:
        raise CheckpointError(f"{what} {target}: at most one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        if known == 0 or size % known:
            raise CheckpointError(f"cannot reshape {list(shape)} to {target}")
        target[target.index(-1)] = size // known
    if int(np.prod(target)) != size:
        raise CheckpointError(f"cannot reshape {list(shape)} to {target}")
    return tuple(target)


def reshape_shape(shape: Shape, to: list[int], **stored: list[int]) -> Shape:
    if set(stored) - {"from"}:
        raise CheckpointError(f"reshape: unknown arguments {sorted(set(stored) - {'from'})}; expected to, from")
    if "from" in stored and tuple(shape) != _fit_shape(shape, stored["from"], "reshape from"):
        raise CheckpointError(f"reshape: expected a stored shape of {list(stored['from'])}, got {list(shape)}")
    return _fit_shape(shape, to, "reshape to")


def falcon_rows(num_heads: int, num_kv_heads: int, layout: str, part: str) -> tuple[int, list]:
    """Row groups (in head units) of Falcon's fused query_key_value for one part."""
    if layout == "grouped":  # new_decoder_architecture: per KV group, its query heads then k then v
        per = num_heads // num_kv_heads + 2
        return per, [(g, slice(0, per - 2) if part == "q" else slice(per - 2, per - 1) if part == "k"
                      else slice(per - 1, per)) for g in range(num_kv_heads)]
    if layout == "multi_query":  # falcon-7b: all query heads, then one k, then one v
        return num_heads + 2, [(0, slice(0, num_heads) if part == "q" else slice(num_heads, num_heads + 1)
                                if part == "k" else slice(num_heads + 1, num_heads + 2))]
    if layout == "interleaved":  # falcon-rw: per head, its q, k and v
        return 3, [(h, slice("qkv".index(part), "qkv".index(part) + 1)) for h in range(num_heads)]
    raise CheckpointError(f"falcon_qkv: unknown layout {layout!r}; expected grouped, multi_query or interleaved")


def falcon_qkv(a: np.ndarray, part: str, num_heads: int, num_kv_heads: int, head_dim: int,
               layout: str) -> np.ndarray:
    """Take q, k or v out of Falcon's fused query_key_value (weight [rows, in] or bias [rows]).

    Falcon fuses three ways: ``grouped`` (new_decoder_architecture, falcon-40b/180b),
    ``multi_query`` (falcon-7b) and ``interleaved`` (falcon-rw, classic multi-head).
    """
    per, groups = falcon_rows(num_heads, num_kv_heads, layout, part)
    rest = a.shape[1:]
    blocks = a.reshape(-1, per, head_dim, *rest)
    out = np.concatenate([blocks[g, s] for g, s in groups], axis=0)
    return np.ascontiguousarray(out.reshape(-1, *rest))


def falcon_qkv_shape(shape: Shape, part: str, num_heads: int, num_kv_heads: int, head_dim: int,
                     layout: str) -> Shape:
    if part not in ("q", "k", "v"):
        raise CheckpointError(f"falcon_qkv: part must be q, k or v, got {part!r}")
    kv = num_kv_heads if layout == "grouped" else 1 if layout == "multi_query" else num_heads
    rows = (num_heads + 2 * kv) * head_dim
    if not shape or shape[0] != rows:
        raise CheckpointError(f"falcon_qkv ({layout}): expected {rows} fused rows, got shape {list(shape)}")
    heads = num_heads if part == "q" else kv
    return (heads * head_dim, *shape[1:])


def scale(a: np.ndarray, factor: float) -> np.ndarray:
    """Multiply by a constant (folding a config multiplier into a weight)."""
    return (a * np.float32(factor)).astype(np.float32)


def scale_segments(a: np.ndarray, sizes: list[int], factors: list[float], axis: int = 0) -> np.ndarray:
    """Multiply consecutive segments along ``axis`` (``sizes[k]`` rows each) by ``factors[k]``:
    a per-part multiplier of a fused projection folded into its rows (Falcon-H1 scales the
    z | x | B | C | dt parts of the Mamba2 in_proj output by one factor each)."""
    row = np.repeat(np.asarray(factors, np.float32), sizes)  # [sum(sizes)]
    shape = [1] * a.ndim
    shape[axis] = row.size
    return (a * row.reshape(shape)).astype(np.float32)


def scale_segments_shape(shape: Shape, sizes: list[int], factors: list[float], axis: int = 0) -> Shape:
    ok = (isinstance(sizes, list) and isinstance(factors, list) and len(sizes) == len(factors)
          and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)
          and all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors))
    if not ok:
        raise CheckpointError(f"scale_segments: sizes must be non-negative integers and factors numbers, "
                              f"one per segment; got sizes {sizes!r}, factors {factors!r}")
    if not isinstance(axis, int) or not 0 <= axis < len(shape) or sum(sizes) != shape[axis]:
        raise CheckpointError(f"scale_segments: segments of {sizes} ({sum(sizes)} rows) do not cover "
                              f"axis {axis} of shape {list(shape)}")
    return tuple(shape)


def add(a: np.ndarray, value: float) -> np.ndarray:
    """Add a constant (norms stored as ``w - 1``, such as Gemma's, become plain weights)."""
    return (a + np.float32(value)).astype(np.float32)


CORE_TRANSFORMS: dict[str, tuple[Callable, Callable | None]] = {
    "transpose": (transpose, transpose_shape),
    "split": (split, split_shape),
    "reshape": (reshape, reshape_shape),
    "slice": (slice_, slice_shape),
    "falcon_qkv": (falcon_qkv, falcon_qkv_shape),
    "scale": (scale, None),
    "scale_segments": (scale_segments, scale_segments_shape),
    "add": (add, None),
}
