"""The bytes of a GGUF file `modelkit convert FOLDER OUT.gguf` writes: metadata through gguf-py's
``GGUFWriter``, then each tensor encoded as its type (float32, float16, gguf-py's BF16 and Q8_0
quantisers) and written straight into the file, one tensor in memory at a time.

A finite value its type cannot hold (beyond float16's 65504; past bfloat16's largest value;
past what a Q8_0 block's float16 scale allows, 65504 x 127) would become infinity: it is refused
by tensor name, or with ``clip`` set to the largest value of its sign, as ``convert`` does for a
folder. Tensor data goes through ``file.write`` rather than NumPy's ``tofile``, whose errors
carry no errno, so a full disk or a file-size limit is reported as such.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from modelkit import CheckpointError

from .export_meta import float32_safe

FLOAT16_MAX = 65504.0
# Q8_0 keeps one float16 scale per block of 32, the block's largest |value| / 127
Q8_0_MAX = FLOAT16_MAX * 127
# a type -> the --dtype values whose range is wider
WIDER = {Q.F16: "bf16 or f32", Q.BF16: "f32", Q.Q8_0: "bf16 or f32"}


def type_max(qtype: Q) -> float:
    """The largest finite value a tensor of ``qtype`` holds (float32's for F32)."""
    import ml_dtypes

    if qtype == Q.F16:
        return FLOAT16_MAX
    if qtype == Q.BF16:
        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    if qtype == Q.Q8_0:
        return Q8_0_MAX
    return float(np.finfo(np.float32).max)


def _overflows(array: np.ndarray, qtype: Q) -> np.ndarray:
    """Where a finite float32 value becomes infinite as ``qtype`` (after its rounding)."""
    import ml_dtypes

    with np.errstate(over="ignore"):
        if qtype == Q.F16:
            cast = array.astype(np.float16)
        elif qtype == Q.BF16:
            cast = array.astype(ml_dtypes.bfloat16)
        else:  # Q8_0: the scale |x| / 127 of a block holding x, as float16
            cast = (np.abs(array) / np.float32(127)).astype(np.float16)
    return np.isinf(cast) & np.isfinite(array)


def fit(array: np.ndarray, qtype: Q, name: str, clip: bool) -> tuple[np.ndarray, int]:
    """``array`` (float32) with every value ``qtype`` cannot hold refused (one line naming the
    tensor) or, with ``clip``, set to the largest finite value of its sign; and how many were."""
    if qtype == Q.F32:
        return array, 0
    over = _overflows(array, qtype)
    count = int(np.count_nonzero(over))
    if not count:
        return array, 0
    largest = type_max(qtype)
    if not clip:
        worst = float(np.max(np.abs(array[over])))
        raise CheckpointError(f"tensor '{name}': {count} value(s) beyond {qtype.name}'s range (up to {worst:.4g}; "
                              f"{qtype.name} ends at {largest:.5g}); choose --dtype {WIDER[qtype]}, or --clip to "
                              f"clip them")
    array = array.copy()
    array[over] = np.where(array[over] > 0, largest, -largest).astype(np.float32)
    return array, count


def encode(array: np.ndarray, qtype: Q) -> np.ndarray:
    """A float32 tensor as ``qtype`` data: float32/float16 arrays, or gguf-py's quantised blocks."""
    if qtype == Q.F32:
        return np.ascontiguousarray(array, np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(array, np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, np.float32), qtype)


def byte_shape(shape: tuple[int, ...], qtype: Q) -> tuple[tuple[int, ...], Any, int]:
    """The shape, NumPy dtype and size in bytes of a tensor of ``shape`` stored as ``qtype``."""
    if qtype in (Q.F32, Q.F16):
        dtype = np.float32 if qtype == Q.F32 else np.float16
        return shape, dtype, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    shape = (*shape[:-1], shape[-1] // block * size)
    return shape, np.uint8, int(np.prod(shape, dtype=np.int64))


def _add_value(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, tuple):  # (list of ints, ARRAY): an INT32 array, as the converter writes it
        w.add_key_value(key, list(value[0]), gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
    elif isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if 0 <= value < 2 ** 32 else w.add_int64(key, value)
    elif isinstance(value, float):
        w.add_float32(key, float32_safe(value))
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, list):
        w.add_array(key, value)
    else:
        raise CheckpointError(f"cannot write metadata '{key}' = {value!r}")


def _pad(f: BinaryIO, n: int, alignment: int) -> None:
    f.write(b"\0" * (-n % alignment))


def _write_data(f: BinaryIO, data: np.ndarray, alignment: int) -> None:
    # GGUFWriter.write_tensor_data's layout (aligned start, padded end), through f.write
    _pad(f, f.tell(), alignment)
    data = np.ascontiguousarray(data)
    if sys.byteorder != "little":
        data = data.byteswap()
    f.write(data.reshape(-1).view(np.uint8).data)
    _pad(f, data.nbytes, alignment)


def write_gguf(path: Path, arch: str, header: dict[str, Any], meta: dict[str, Any],
               tensors: Iterable[tuple[str, tuple[int, ...], Q]], make: Callable[[int], np.ndarray],
               clip: bool = False) -> dict[str, int]:
    """Write a GGUF file at ``path``: ``header`` (general.* values, written first) and ``meta``
    keys, then each of ``tensors`` (name, shape, type), its float32 data made by ``make(i)``.
    Returns how many values were clipped in each tensor that needed it."""
    tensors = list(tensors)
    w = gguf.GGUFWriter(str(path), arch)
    clipped: dict[str, int] = {}
    try:
        w.add_type("model")
        w.add_name(header["name"])
        w.add_file_type(int(header["file_type"]))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in meta.items():
            _add_value(w, key, value)
        for name, shape, qtype in tensors:
            stored_shape, np_dtype, nbytes = byte_shape(shape, qtype)
            w.add_tensor_info(name, stored_shape, np.dtype(np_dtype), nbytes, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        f = w.fout[0]
        for i, (name, _, qtype) in enumerate(tensors):
            array, n = fit(make(i), qtype, name, clip)
            if n:
                clipped[name] = n
            _write_data(f, encode(array, qtype), w.data_alignment)
        f.flush()
    finally:
        w.close()
    return clipped
