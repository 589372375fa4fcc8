"""The inverses of the core's weight transforms: how ``modelkit convert`` writes a canonical
tensor back in the form a mapping reads it from.

An :class:`~modelkit.plugins.registry.Inverse` is registered next to its transform (the
``inverse=`` argument of ``register_transforms``' callback), so a plugin that adds a transform
adds its inverse too. Two kinds:

- ``apply(array, **args)`` gives the stored tensor from the transformed one, ``shape(shape,
  **args)`` its shape (``transpose``, ``reshape`` with ``from``, ``scale``, ``add``, ...);
- ``place(whole, piece, **args)`` writes a transform's piece into the stored tensor it was
  taken from (``split``, ``slice``, ``falcon_qkv``), ``shape(piece_shape, **args)`` the least
  shape that tensor has; the pieces of one stored tensor are placed together.

The transforms' arguments are the same as on loading, resolved over the same config.
"""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError
from ..plugins.registry import Inverse
from .transforms import falcon_rows, reshape_shape

Shape = tuple[int, ...]


def _axis_index(ndim: int, axis: int, span: slice) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axis] = span
    return tuple(index)


def place_split(whole: np.ndarray, piece: np.ndarray, parts: int, index: int, axis: int = 0) -> None:
    """Write piece ``index`` of ``parts`` equal pieces along ``axis``."""
    size = whole.shape[axis] // parts
    whole[_axis_index(whole.ndim, axis, slice(index * size, (index + 1) * size))] = piece


def split_whole(shape: Shape, parts: int, index: int, axis: int = 0) -> Shape:
    out = list(shape)
    out[axis] *= parts
    return tuple(out)


def place_slice(whole: np.ndarray, piece: np.ndarray, start: int, stop: int, axis: int = 0) -> None:
    """Write ``[start, stop)`` along ``axis``."""
    whole[_axis_index(whole.ndim, axis, slice(start, stop))] = piece


def slice_whole(shape: Shape, start: int, stop: int, axis: int = 0) -> Shape:
    out = list(shape)
    out[axis] = stop  # at least: the pieces of one tensor together give its length
    return tuple(out)


def place_falcon_qkv(whole: np.ndarray, piece: np.ndarray, part: str, num_heads: int, num_kv_heads: int,
                     head_dim: int, layout: str) -> None:
    """Write q, k or v back into Falcon's fused query_key_value, row groups as
    :func:`~modelkit.loading.transforms.falcon_qkv` takes them."""
    per, groups = falcon_rows(num_heads, num_kv_heads, layout, part)
    rest = whole.shape[1:]
    blocks = whole.reshape(-1, per, head_dim, *rest)  # a view: whole is C-contiguous
    heads = piece.reshape(-1, head_dim, *rest)  # [heads, head_dim, ...] in the order taken
    at = 0
    for g, s in groups:
        n = s.stop - s.start
        blocks[g, s] = heads[at:at + n]
        at += n


def falcon_qkv_whole(shape: Shape, part: str, num_heads: int, num_kv_heads: int, head_dim: int,
                     layout: str) -> Shape:
    kv = num_kv_heads if layout == "grouped" else 1 if layout == "multi_query" else num_heads
    return ((num_heads + 2 * kv) * head_dim, *shape[1:])


def unreshape(a: np.ndarray, to: list[int], **stored: list[int]) -> np.ndarray:
    """Back to the stored shape ``from`` (a mapping's reshape records it to be written back)."""
    return np.ascontiguousarray(a.reshape(unreshape_shape(a.shape, to, **stored)))


def unreshape_shape(shape: Shape, to: list[int], **stored: list[int]) -> Shape:
    if "from" not in stored:
        raise CheckpointError("reshape: the stored shape is unknown (the mapping gives no 'from')")
    return reshape_shape(shape, stored["from"])


def unscale(a: np.ndarray, factor: float) -> np.ndarray:
    return (a / np.float32(factor)).astype(np.float32)


def unscale_shape(shape: Shape, factor: float) -> Shape:
    if factor == 0:
        raise CheckpointError("scale: a factor of 0 cannot be undone")
    return shape


def unscale_segments(a: np.ndarray, sizes: list[int], factors: list[float], axis: int = 0) -> np.ndarray:
    row = np.repeat(np.asarray(factors, np.float32), sizes)  # [sum(sizes)]
    shape = [1] * a.ndim
    shape[axis] = row.size
    return (a / row.reshape(shape)).astype(np.float32)


def unscale_segments_shape(shape: Shape, sizes: list[int], factors: list[float], axis: int = 0) -> Shape:
    if any(f == 0 for f in factors):
        raise CheckpointError("scale_segments: a factor of 0 cannot be undone")
    return shape


CORE_INVERSES: dict[str, Inverse] = {
    "transpose": Inverse(apply=lambda a: np.ascontiguousarray(a.T), shape=lambda s: (s[1], s[0])),
    "split": Inverse(place=place_split, shape=split_whole),
    "slice": Inverse(place=place_slice, shape=slice_whole),
    "falcon_qkv": Inverse(place=place_falcon_qkv, shape=falcon_qkv_whole),
    "reshape": Inverse(apply=unreshape, shape=unreshape_shape),
    "scale": Inverse(apply=unscale, shape=unscale_shape),
    "scale_segments": Inverse(apply=unscale_segments, shape=unscale_segments_shape),
    "add": Inverse(apply=lambda a, value: (a - np.float32(value)).astype(np.float32)),
}
