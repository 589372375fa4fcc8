"""modelkit's own reader for the header of a GGUF file (metadata and tensor table).

The layout (little-endian; llama.cpp's gguf.cpp is the reference):

    magic b"GGUF" | uint32 version (2 or 3) | uint64 tensor count | uint64 metadata count
    metadata entries: string key, uint32 value type, value
        (string = uint64 length + UTF-8 bytes; array = uint32 item type + uint64 count + items)
    tensor infos: string name, uint32 n_dims, n_dims x uint64 ne (fastest-varying first),
        uint32 ggml type, uint64 offset from the start of the data section
    padding to ``general.alignment`` (default 32), then the data section

The file is memory-mapped read-only and parsed with a bounds check before every read, loop and
allocation, so a truncated or hostile header fails fast, in time and memory bounded by the file's
size, with one :class:`CheckpointError` line. The ``gguf`` package is used only for its public
constants; its dequantisers take the arrays :meth:`GGUFFile.tensor_data` returns.
"""

from __future__ import annotations

import math
import mmap
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.constants import GGUF_DEFAULT_ALIGNMENT

from modelkit import CheckpointError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 used 32-bit counts; 2 and 3 share one layout
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 8  # arrays of arrays: real files nest once at most; bounds the recursion

_V = GGUFValueType
# fixed-size value types -> little-endian format, valid both for struct and as a NumPy dtype
_FORMATS: dict[int, str] = {
    _V.UINT8: "<B", _V.INT8: "<b", _V.UINT16: "<H", _V.INT16: "<h", _V.UINT32: "<I", _V.INT32: "<i",
    _V.FLOAT32: "<f", _V.BOOL: "<B", _V.UINT64: "<Q", _V.INT64: "<q", _V.FLOAT64: "<d",
}
_STRUCTS = {kind: struct.Struct(fmt) for kind, fmt in _FORMATS.items()}
_DTYPES = {kind: np.dtype(fmt) for kind, fmt in _FORMATS.items()}
# plain ints: enum members cost a lookup in every comparison of the hot loops
_STRING, _ARRAY, _FLOAT32, _BOOL = int(_V.STRING), int(_V.ARRAY), int(_V.FLOAT32), int(_V.BOOL)
# the fewest bytes one array item can take: no count may exceed (bytes left) / this
_MIN_BYTES = {**{kind: s.size for kind, s in _STRUCTS.items()}, _STRING: 8, _ARRAY: 12}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_MIN_KV = 8 + 4 + 1  # empty key, value type, one-byte value
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset

_Q = GGMLQuantizationType
# tensor types stored as plain arrays (BF16 is not: the dequantiser takes its bytes)
_TYPED = {_Q.F32: np.dtype("<f4"), _Q.F16: np.dtype("<f2"), _Q.F64: np.dtype("<f8"),
          _Q.I8: np.dtype("<i1"), _Q.I16: np.dtype("<i2"), _Q.I32: np.dtype("<i4"), _Q.I64: np.dtype("<i8")}


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table. ``shape`` is in NumPy order (ggml's ``ne`` reversed, so a
    [out, in] weight reads [out, in]); ``offset`` (from the start of the file) and ``nbytes``
    locate its data."""

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class _Unreadable:
    """A metadata value that could not be decoded: reading its key raises, not opening the file."""

    def __init__(self, reason: str):
        self.reason = reason


class Metadata(Mapping[str, Any]):
    """Metadata key -> Python value (str, int, float, bool, or a list, nested for nested arrays).

    FLOAT32 values are the shortest decimal that round-trips in float32 (1e-05, not
    9.999999747378752e-06), so config.json written from them reads naturally. A value whose
    strings are not UTF-8 raises CheckpointError when read, so the rest stays usable.
    """

    def __init__(self, values: dict[str, Any], path: Path):
        self._values, self._path = values, path

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        if isinstance(value, _Unreadable):
            raise CheckpointError(f"{self._path}: metadata key '{key}' is unreadable ({value.reason})")
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values  # without decoding (Mapping's default would read the value)


class _Parser:
    """One forward pass over the header; every read is checked against the end of the file."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path):
        # slicing an mmap gives bytes: decoding those is twice as fast as decoding memoryviews
        self.buf, self.path, self.end, self.pos = buf, path, len(buf), 0

    def fail(self, what: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: not a valid GGUF file: {what}")

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            self.fail(f"{what}: truncated (needs {n} bytes at offset {self.pos}, the file has "
                      f"{self.end - self.pos} left)")

    def u32(self, what: str) -> int:
        self.need(4, what)
        self.pos += 4
        return _U32.unpack_from(self.buf, self.pos - 4)[0]

    def u64(self, what: str) -> int:
        self.need(8, what)
        self.pos += 8
        return _U64.unpack_from(self.buf, self.pos - 8)[0]

    def raw_string(self, what: str) -> bytes:
        n = self.u64(what)
        if n > self.end - self.pos:
            self.fail(f"{what}: a string claims {n} bytes, more than the file can hold")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def name(self, what: str) -> str:
        """A key or tensor name: it must decode, since nothing could refer to it otherwise."""
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.fail(f"{what}: the name is not UTF-8 ({exc.reason})")

    def value(self, kind: int, what: str, depth: int = 0) -> Any:
        """The value of type ``kind`` at the current position, or an :class:`_Unreadable`."""
        fmt = _STRUCTS.get(kind)
        if fmt is not None:
            self.need(fmt.size, what)
            (value,) = fmt.unpack_from(self.buf, self.pos)
            self.pos += fmt.size
            return _scalar(kind, value)
        if kind == _STRING:
            raw = self.raw_string(what)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return _Unreadable(f"not UTF-8: {exc.reason} at byte {exc.start}")
        if kind == _ARRAY:
            return self.array(what, depth)
        self.fail(f"{what}: unknown value type {kind}")

    def array(self, what: str, depth: int) -> Any:
        item = self.u32(what)
        count = self.u64(what)
        least = _MIN_BYTES.get(item)
        if least is None:
            self.fail(f"{what}: array of unknown value type {item}")
        if count * least > self.end - self.pos:
            self.fail(f"{what}: array claims {count} elements, more than the file can hold")
        if item in _DTYPES:  # one read for the whole array
            values = np.frombuffer(self.buf, _DTYPES[item], count, self.pos) if count else np.empty(0)
            self.pos += count * least
            if item == _FLOAT32:
                return [float(str(v)) for v in values]  # str(np.float32): the shortest decimal
            return (values != 0).tolist() if item == _BOOL else values.tolist()
        if item == _STRING:
            return self.strings(count, what)
        if depth >= MAX_NESTING:
            self.fail(f"{what}: arrays nested more than {MAX_NESTING} deep")
        items = [self.array(f"{what}[{i}]", depth + 1) for i in range(count)]
        bad = next((v for v in items if isinstance(v, _Unreadable)), None)
        return bad if bad is not None else items

    def strings(self, count: int, what: str) -> list[str] | _Unreadable:
        # the hot loop (a 50k-token vocabulary and its merges): locals, no method calls
        buf, end, pos, unpack = self.buf, self.end, self.pos, _U64.unpack_from
        out: list[str] = []
        append = out.append
        bad: _Unreadable | None = None
        for i in range(count):
            if end - pos < 8:
                self.pos = pos
                self.need(8, f"{what}: string {i} of {count}")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                self.fail(f"{what}: string {i} claims {n} bytes, more than the file can hold")
            if bad is None:  # after a bad string, only walk on to find the end
                try:
                    append(buf[pos:pos + n].decode("utf-8"))
                except UnicodeDecodeError as exc:
                    bad = _Unreadable(f"string {i} is not UTF-8: {exc.reason}")
            pos += n
        self.pos = pos
        return bad if bad is not None else out


def _scalar(kind: int, value: Any) -> Any:
    if kind == _FLOAT32:
        return float(str(np.float32(value)))
    return value != 0 if kind == _BOOL else value


class GGUFFile:
    """A GGUF file, memory-mapped read-only, with its header parsed.

    ``metadata``: key -> value (:class:`Metadata`); ``tensors``: name -> :class:`GGUFTensor`, in
    file order; ``data``: the whole file as a read-only uint8 array. :meth:`tensor_data` views
    one tensor's bytes. Any problem with the file is a one-line :class:`CheckpointError`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                if f.seek(0, 2) == 0:
                    raise CheckpointError(f"{self.path}: not a valid GGUF file: the file is empty")
                self._mm: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read ({exc.strerror or exc})") from None
        try:
            self._parse(_Parser(self._mm, self.path))
        except BaseException:
            _unmap(self._mm)
            raise
        self._data: np.ndarray | None = np.frombuffer(self._mm, np.uint8)

    def _parse(self, p: _Parser) -> None:
        p.need(4, "magic")
        if bytes(p.buf[:4]) != MAGIC:
            p.fail(f"no GGUF magic at the start (found {bytes(p.buf[:4])!r})")
        p.pos = 4
        self.version = p.u32("version")
        if self.version not in VERSIONS:
            if int.from_bytes(p.buf[4:8], "big") in (1, 2, 3):
                raise CheckpointError(f"{self.path}: a GGUF file of the other byte order (big-endian); "
                                      f"modelkit reads little-endian GGUF only")
            raise CheckpointError(f"{self.path}: GGUF version {self.version} is not supported "
                                  f"(modelkit reads versions 2 and 3)")
        n_tensors = p.u64("tensor count")
        n_kv = p.u64("metadata count")
        if n_kv * _MIN_KV > p.end - p.pos:
            p.fail(f"the header claims {n_kv} metadata entries, more than the file can hold")
        values: dict[str, Any] = {}
        self._types: dict[str, tuple[GGUFValueType, ...]] = {}
        for i in range(n_kv):
            key = p.name(f"metadata entry {i}")
            if key in values:
                p.fail(f"metadata key '{key}' appears twice")
            kind = p.u32(f"metadata key '{key}'")
            start = p.pos
            values[key] = p.value(kind, f"metadata key '{key}'")
            self._types[key] = _declared(kind, p.buf, start)
        self.metadata = Metadata(values, self.path)
        if n_tensors * _MIN_TENSOR_INFO > p.end - p.pos:
            p.fail(f"the header claims {n_tensors} tensors, more than the file can hold")
        infos = [self._tensor_info(p, i) for i in range(n_tensors)]
        align = self._alignment(p)
        self.data_offset = -(-p.pos // align) * align
        self.tensors: dict[str, GGUFTensor] = {}
        for name, ne, qtype, offset in infos:
            if name in self.tensors:
                p.fail(f"tensor '{name}' appears twice")
            self.tensors[name] = self._tensor(p, name, ne, qtype, offset)

    def _tensor_info(self, p: _Parser, index: int) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
        name = p.name(f"tensor {index}")
        what = f"tensor '{name}'"
        n_dims = p.u32(what)
        if n_dims > MAX_DIMS:
            p.fail(f"{what} has {n_dims} dimensions (at most {MAX_DIMS})")
        p.need(8 * n_dims, what)
        ne = struct.unpack_from(f"<{n_dims}Q", p.buf, p.pos)
        p.pos += 8 * n_dims
        raw_type = p.u32(what)
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            p.fail(f"{what} has unknown ggml type {raw_type}")
        return name, ne, qtype, p.u64(what)

    def _alignment(self, p: _Parser) -> int:
        kind = self._types.get("general.alignment")
        if kind is None:
            return GGUF_DEFAULT_ALIGNMENT
        if kind != (_V.UINT32,):
            p.fail(f"general.alignment must be a UINT32, not {kind[-1].name}")
        align = self.metadata["general.alignment"]
        if align <= 0 or align & (align - 1):
            p.fail(f"general.alignment must be a power of two, not {align}")
        return align

    def _tensor(self, p: _Parser, name: str, ne: tuple[int, ...], qtype: GGMLQuantizationType,
                offset: int) -> GGUFTensor:
        what = f"tensor '{name}'"
        if any(d <= 0 for d in ne):
            p.fail(f"{what} has a dimension that is not positive ({list(ne)})")
        if qtype not in GGML_QUANT_SIZES:
            p.fail(f"{what} has ggml type {qtype.name}, of unknown block size")
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        row = ne[0] if ne else 1
        if row % block:  # whole blocks per row, as the dequantisers need
            p.fail(f"{what}: rows of {row} {qtype.name} values are not whole blocks of {block}")
        count = math.prod(ne)  # Python ints: no overflow on hostile dimensions
        nbytes = count // block * block_bytes
        start = self.data_offset + offset
        if start + nbytes > p.end:
            p.fail(f"{what}: its data (bytes {start} to {start + nbytes}) runs past the end of "
                   f"the file ({p.end} bytes)")
        return GGUFTensor(name, qtype, tuple(reversed(ne)), start, nbytes)

    @property
    def data(self) -> np.ndarray:
        """The whole file as a read-only uint8 array (a view of the memory map)."""
        if self._data is None:
            raise CheckpointError(f"{self.path}: the GGUF file was closed")
        return self._data

    def value_type(self, key: str) -> tuple[GGUFValueType, ...] | None:
        """A key's declared type: ``(UINT32,)``, or ``(ARRAY, item type)`` for an array; None
        for a missing key."""
        return self._types.get(key)

    def tensor_data(self, name: str) -> np.ndarray:
        """A tensor's data as a read-only view of the file, in the layout ``gguf.quants.dequantize``
        takes: typed [*shape] for F32/F16/F64 and the integer types, uint8 [*shape[:-1], bytes per
        row] for BF16 and the block-quantised types."""
        tensor = self.tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"{self.path}: no tensor '{name}'")
        raw = self.data[tensor.offset:tensor.offset + tensor.nbytes]
        dtype = _TYPED.get(tensor.ggml_type)
        if dtype is not None:
            return raw.view(dtype).reshape(tensor.shape)
        return raw.reshape(*tensor.shape[:-1], -1)

    def close(self) -> None:
        """Drop the memory map. Views handed out stay valid: the map then closes with the last."""
        mm, self._mm, self._data = self._mm, None, None
        if mm is not None:
            _unmap(mm)

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unmap(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # arrays still view it; it is unmapped when the last is collected
        pass


def _declared(kind: int, buf: mmap.mmap | bytes, start: int) -> tuple[GGUFValueType, ...]:
    # the value was parsed already, so an array's item type at ``start`` is in bounds and known
    if kind != _ARRAY:
        return (GGUFValueType(kind),)
    return (_V.ARRAY, GGUFValueType(_U32.unpack_from(buf, start)[0]))


def open_gguf(path: str | Path) -> GGUFFile:
    """The parsed header of a GGUF file; a corrupt, truncated or unsupported one is a CheckpointError."""
    return GGUFFile(path)


def is_gguf(path: Path) -> bool:
    """True for a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only, for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)
