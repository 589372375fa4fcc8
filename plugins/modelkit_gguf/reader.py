"""Opening a GGUF file with the ``gguf`` package's reader, defensively.

``gguf.GGUFReader`` memory-maps the file and parses its header (metadata and tensor table). It
trusts the counts and lengths it reads, so a truncated or garbage file fails deep inside NumPy
(or, with a huge array count, loops for a long time). :class:`SafeReader` adds two bounds checks;
:func:`open_reader` turns every failure into one :class:`CheckpointError` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from modelkit import CheckpointError

MAGIC = b"GGUF"

# the smallest encoding of one array element of each type: no element count can exceed
# (bytes left) / (this), whatever the header claims
_MIN_ITEM_BYTES = {GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
_ARRAY = int(GGUFValueType.ARRAY)  # a plain int: comparing with the enum member costs a lookup per field


class SafeReader(GGUFReader):
    """``GGUFReader`` that refuses to read past the end of the file, and parses long arrays fast.

    The package parses an array element by element through NumPy views of a ``np.memmap``; for
    a 50k-token vocabulary with its merges that takes seconds. Here arrays of strings and of
    scalars are walked in one pass over a plain ``ndarray`` view, producing the same parts
    (so ``ReaderField.contents()`` works unchanged).
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self._plain = self.data.view(np.ndarray)
        count = int(count)
        end = offset + np.dtype(dtype).itemsize * count
        if count < 0 or end > plain.shape[0]:
            raise ValueError(f"truncated: needs bytes up to {end}, the file has {plain.shape[0]}")
        arr = plain[offset:end].view(dtype=dtype)[:count]
        order = self.byte_order if override_order is None else override_order
        return arr.view(arr.dtype.newbyteorder(order))

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
        if raw_type != _ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_item = self._get(orig_offs, np.uint32)
        count_part = self._get(orig_offs + 4, np.uint64)
        item = GGUFValueType(int(raw_item[0]))  # ValueError for an unknown type
        count = int(count_part[0])
        scalar = self.gguf_scalar_to_np.get(item)
        least = np.dtype(scalar).itemsize if scalar is not None else _MIN_ITEM_BYTES[item]
        if count * least > self._plain.shape[0] - orig_offs - 12:
            raise ValueError(f"an array claims {count} elements, more than the file can hold")
        if self.byte_order != "I" or (scalar is None and item != GGUFValueType.STRING):
            return super()._get_field_parts(orig_offs, raw_type)  # nested arrays, other byte order
        parts: list[np.ndarray] = [raw_item, count_part]
        offs = orig_offs + 12
        if scalar is not None:
            values = self._get(offs, scalar, count)
            parts += [values[k:k + 1] for k in range(count)]
            return 12 + values.nbytes, parts, list(range(2, 2 + count)), [GGUFValueType.ARRAY, item]
        plain, end = self._plain, self._plain.shape[0]
        raw = memoryview(plain)
        for _ in range(count):
            if offs + 8 > end:
                raise ValueError("truncated inside a string array")
            n = int.from_bytes(raw[offs:offs + 8], "little")
            if offs + 8 + n > end:
                raise ValueError("truncated inside a string array")
            parts.append(plain[offs:offs + 8].view(np.uint64))
            parts.append(plain[offs + 8:offs + 8 + n])
            offs += 8 + n
        return offs - orig_offs, parts, list(range(3, 2 + 2 * count, 2)), [GGUFValueType.ARRAY, item]


def is_gguf(path: Path) -> bool:
    """True for a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def open_reader(path: Path) -> SafeReader:
    """The parsed header of a GGUF file; a corrupt, truncated or unsupported one is a CheckpointError."""
    try:
        reader = SafeReader(path, "r")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # the gguf package raises ValueError, KeyError, IndexError, ... on bad files
        raise CheckpointError(f"{path}: not a valid GGUF file ({first_line(exc)})") from None
    if reader.byte_order != "I":
        raise CheckpointError(f"{path}: a GGUF file of the other byte order (big-endian); "
                              f"modelkit reads little-endian GGUF only")
    return reader


def field_value(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value as a Python value (str, int, float, bool, or a list of them).

    FLOAT32 values come back as the shortest decimal that round-trips in float32 (1e-05, not
    9.999999747378752e-06), so config.json written from them reads naturally.
    """
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        value = field.contents()
    except Exception as exc:  # malformed value: bad UTF-8, wrong part layout
        where = getattr(reader.data, "filename", None) or "GGUF file"
        raise CheckpointError(f"{where}: metadata key '{key}' is unreadable ({first_line(exc)})") from None
    kind = field.types[-1] if field.types else None
    if kind == GGUFValueType.FLOAT32:
        if isinstance(value, list):
            return [float(str(np.float32(v))) for v in value]
        return float(str(np.float32(value)))
    return value


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only, for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)
