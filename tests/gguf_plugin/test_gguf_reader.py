"""modelkit's GGUF header parser (plugins/modelkit_gguf/reader.py).

Files written with ``gguf.GGUFWriter`` must parse to what ``gguf.GGUFReader`` reads (the
package's reader is the oracle here only); truncated and hostile headers must fail fast with one
CheckpointError line, never another exception.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from modelkit import CheckpointError
from modelkit_gguf.reader import GGUFFile, GGUFTensor, is_gguf, open_gguf

SMOLLM2 = os.environ.get("MODELKIT_SMOLLM2_GGUF")

# ---- the oracle -----------------------------------------------------------------------------


def oracle_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """GGUFReader's metadata as modelkit normalises it: FLOAT32 as the shortest float32 decimal."""
    out = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):  # the package's pseudo-keys for the header counts
            continue
        value = fld.contents()
        if fld.types[-1] == V.FLOAT32:
            value = [float(str(np.float32(v))) for v in value] if isinstance(value, list) else float(str(np.float32(value)))
        out[key] = value
    return out


def flatten(value: Any) -> Any:
    # GGUFReader flattens nested arrays ([[1, 2], [3]] -> [1, 2, 3]); modelkit keeps the nesting
    if isinstance(value, list) and any(isinstance(v, list) for v in value):
        return [x for v in value for x in (flatten(v) if isinstance(v, list) else [v])]
    return value


def assert_same_as_gguf_reader(path: Path, dequantize: bool = True) -> GGUFFile:
    reader = gguf.GGUFReader(path)
    parsed = open_gguf(path)
    expected = oracle_metadata(reader)
    assert list(parsed.metadata) == list(expected)
    for key, value in expected.items():
        mine = parsed.metadata[key]
        assert flatten(mine) == value, key
        assert type(flatten(mine)) is type(value), key
        if isinstance(value, list):
            assert [type(v) for v in flatten(mine)] == [type(v) for v in value], key
        assert parsed.value_type(key) == tuple(reader.fields[key].types[:2]), key
    assert parsed.data_offset == reader.data_offset
    assert list(parsed.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = parsed.tensors[t.name]
        assert info.ggml_type == t.tensor_type
        assert info.shape == tuple(reversed(t.shape.tolist()))
        assert (info.offset, info.nbytes, info.n_elements) == (t.data_offset, t.n_bytes, t.n_elements)
        data = parsed.tensor_data(t.name)
        assert data.dtype == t.data.dtype and data.shape == t.data.shape, t.name
        assert np.array_equal(data.view(np.uint8), np.asarray(t.data).view(np.uint8)), t.name  # same bytes
        if dequantize and info.ggml_type not in (Q.I8, Q.I16, Q.I32, Q.I64):
            np.testing.assert_array_equal(gguf.quants.dequantize(data, info.ggml_type),
                                          gguf.quants.dequantize(np.asarray(t.data), t.tensor_type))
    return parsed


# ---- writing files --------------------------------------------------------------------------


def q4_k_blocks(rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """Q4_K data: random codes and scales with finite f16 super-block scales (the package has no
    Q4_K quantiser: ``gguf.quants.quantize`` raises NotImplementedError)."""
    rng = np.random.default_rng(seed)
    n = rows * blocks_per_row
    blocks = rng.integers(0, 256, (n, gguf.GGML_QUANT_SIZES[Q.Q4_K][1]), dtype=np.uint8)
    blocks[:, :4] = rng.uniform(0.01, 0.1, (n, 2)).astype(np.float16).view(np.uint8)  # d, dmin
    return blocks.reshape(rows, -1)


def write_all_types(path: Path) -> Path:
    """Every scalar value type, string / numeric / bool / nested arrays, six tensor types."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 1e-5)
    w.add_uint64("t.u64", 2 ** 64 - 1)
    w.add_int64("t.i64", -2 ** 63)
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.true", True)
    w.add_bool("t.false", False)
    w.add_string("t.str", "héllo ✓ 世界")
    w.add_string("t.empty", "")
    w.add_array("a.str", ["a", "", "Ġthe", "<|endoftext|>", "ü"])
    w.add_array("a.int", [1, -2, 3])
    w.add_key_value("a.u8", [0, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("a.i64", [-2 ** 63, 2 ** 63 - 1], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("a.f64", [0.1, -1e300], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("a.f32", [0.1, 1e-5, -3.5])
    w.add_array("a.bool", [True, False, True])
    w.add_array("a.nested", [[1, 2], [3]])
    w.add_array("a.nested_str", [["x", "y"], ["z"]])
    x = rng.standard_normal((3, 256)).astype(np.float32)
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    w.add_tensor("bf16", gguf.quants.quantize(x, Q.BF16), raw_dtype=Q.BF16)
    w.add_tensor("q8_0", gguf.quants.quantize(x, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("q4_k", q4_k_blocks(3, 1, 1), raw_dtype=Q.Q4_K)
    w.add_tensor("cube", gguf.quants.quantize(rng.standard_normal((2, 3, 32)).astype(np.float32), Q.Q8_0),
                 raw_dtype=Q.Q8_0)
    w.add_tensor("ids", np.arange(5, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def all_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all_types(tmp_path_factory.mktemp("gguf_reader") / "all.gguf")


# ---- well-formed files ----------------------------------------------------------------------


def test_every_value_and_tensor_type_matches_gguf_reader(all_types: Path) -> None:
    parsed = assert_same_as_gguf_reader(all_types)
    meta = parsed.metadata
    assert meta["t.f32"] == 1e-05 and meta["a.f32"] == [0.1, 1e-05, -3.5]  # shortest float32 decimal
    assert meta["t.u64"] == 2 ** 64 - 1 and meta["t.true"] is True and meta["a.bool"] == [True, False, True]
    assert meta["a.nested"] == [[1, 2], [3]] and meta["a.nested_str"] == [["x", "y"], ["z"]]
    assert parsed.value_type("a.str") == (V.ARRAY, V.STRING) and parsed.value_type("t.u8") == (V.UINT8,)
    assert parsed.value_type("missing") is None and meta.get("missing", 7) == 7
    q4k = parsed.tensors["q4_k"]
    assert q4k == GGUFTensor("q4_k", Q.Q4_K, (3, 256), q4k.offset, 144 * 3)
    assert parsed.tensor_data("q4_k").shape == (3, 144) and parsed.tensor_data("f16").dtype == np.float16
    assert parsed.tensor_data("cube").shape == (2, 3, 34)  # [*shape[:-1], bytes per row]
    parsed.close()


def test_tensor_data_is_a_read_only_view_that_outlives_close(all_types: Path) -> None:
    parsed = open_gguf(all_types)
    view = parsed.tensor_data("f32")
    assert not view.flags.writeable and np.shares_memory(view, parsed.data)
    expected = view.copy()
    parsed.close()
    np.testing.assert_array_equal(view, expected)  # still mapped: the view holds the map
    with pytest.raises(CheckpointError, match="closed"):
        parsed.tensor_data("f32")
    with pytest.raises(CheckpointError, match="no tensor 'nope'"):
        open_gguf(all_types).tensor_data("nope")
    with open_gguf(all_types) as again:
        assert again.tensors["ids"].shape == (5,)


def test_alignment_and_version_2(tmp_path: Path) -> None:
    path = tmp_path / "a.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_tensor("a", np.ones(3, np.float32))
    w.add_tensor("b", np.arange(7, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    parsed = assert_same_as_gguf_reader(path)
    assert parsed.data_offset % 64 == 0 and parsed.tensors["b"].offset % 64 == 0
    blob = bytearray(path.read_bytes())
    blob[4:8] = (2).to_bytes(4, "little")  # version 2 has the same layout
    (tmp_path / "v2.gguf").write_bytes(bytes(blob))
    assert open_gguf(tmp_path / "v2.gguf").version == 2
    assert is_gguf(path) and not is_gguf(tmp_path / "missing.gguf")


def test_undecodable_string_fails_when_read_not_when_opened(tmp_path: Path) -> None:
    body = kv("good", V.UINT32, u32(1)) + kv("bad", V.STRING, string(b"\xff\xfe")) \
        + kv("bad.list", V.ARRAY, u32(V.STRING) + u64(2) + string(b"ok") + string(b"\xc3"))
    parsed = open_gguf(write_raw(tmp_path / "u.gguf", body, n_kv=3))
    assert parsed.metadata["good"] == 1 and "bad" in parsed.metadata and len(parsed.metadata) == 3
    for key in ("bad", "bad.list"):
        with pytest.raises(CheckpointError, match=f"u.gguf: metadata key '{key}' is unreadable"):
            parsed.metadata.get(key)


@pytest.mark.skipif(not SMOLLM2 or not Path(SMOLLM2).is_file(), reason="set MODELKIT_SMOLLM2_GGUF")
def test_smollm2_matches_gguf_reader_and_parses_fast() -> None:
    path = Path(SMOLLM2 or "")
    best = min(_timed(lambda: open_gguf(path).close()) for _ in range(3))
    assert best < 0.5, f"parsing SmolLM2's header took {best:.3f}s"
    parsed = assert_same_as_gguf_reader(path, dequantize=False)  # same bytes: same dequantised values
    assert len(parsed.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(parsed.metadata["tokenizer.ggml.merges"]) == 48900
    parsed.close()


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- truncated files ------------------------------------------------------------------------


def test_truncation_at_every_offset_is_a_checkpoint_error(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "small.gguf"), "llama")
    w.add_uint32("n", 3)
    w.add_float32("eps", 1e-5)
    w.add_array("toks", ["a", "bc", "def"])
    w.add_array("ids", [1, 2, 3])
    w.add_array("nest", [[1], [2, 3]])
    w.add_tensor("w", gguf.quants.quantize(np.ones((2, 32), np.float32), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("b", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    whole = (tmp_path / "small.gguf").read_bytes()
    parsed = open_gguf(tmp_path / "small.gguf")
    data_end = max(t.offset + t.nbytes for t in parsed.tensors.values())  # beyond: trailing padding
    parsed.close()
    cut = tmp_path / "cut.gguf"
    start = time.perf_counter()
    for size in range(data_end):
        cut.write_bytes(whole[:size])
        with pytest.raises(CheckpointError) as err:
            open_gguf(cut)
        message = str(err.value)
        assert message.startswith(f"{cut}: ") and "\n" not in message, (size, message)
    assert time.perf_counter() - start < 10


# ---- hostile headers ------------------------------------------------------------------------


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def string(raw: bytes | str) -> bytes:
    raw = raw.encode() if isinstance(raw, str) else raw
    return u64(len(raw)) + raw


def kv(key: str, kind: int, payload: bytes) -> bytes:
    return string(key) + u32(kind) + payload


def tensor_info(name: str, ne: list[int], qtype: int, offset: int = 0) -> bytes:
    return string(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(qtype) + u64(offset)


def write_raw(path: Path, body: bytes, n_kv: int = 0, n_tensors: int = 0, version: int = 3,
              tail: bytes = b"") -> Path:
    path.write_bytes(b"GGUF" + u32(version) + u64(n_tensors) + u64(n_kv) + body + tail)
    return path


def _padded(body_len: int) -> bytes:
    return b"\0" * (-(24 + body_len) % 32)


HOSTILE = {
    "kv count": (dict(body=b"", n_kv=2 ** 63), "claims 9223372036854775808 metadata entries"),
    "tensor count": (dict(body=b"", n_tensors=2 ** 64 - 1), "claims 18446744073709551615 tensors"),
    "key length": (dict(body=u64(2 ** 64 - 1) + b"abcdefgh", n_kv=1), "string claims 18446744073709551615 bytes"),
    "string value": (dict(body=kv("k", V.STRING, u64(2 ** 40)), n_kv=1), "metadata key 'k': a string claims"),
    "string array": (dict(body=kv("tokenizer.ggml.tokens", V.ARRAY, u32(V.STRING) + u64(2 ** 32 - 1)), n_kv=1),
                     "metadata key 'tokenizer.ggml.tokens': array claims 4294967295 elements, "
                     "more than the file can hold"),
    "int array": (dict(body=kv("k", V.ARRAY, u32(V.INT32) + u64(2 ** 62) + b"\0" * 64), n_kv=1), "array claims"),
    "nested array": (dict(body=kv("k", V.ARRAY, u32(V.ARRAY) + u64(2 ** 40)), n_kv=1), "array claims"),
    "string in array": (dict(body=kv("k", V.ARRAY, u32(V.STRING) + u64(2) + string("a") + u64(2 ** 50)), n_kv=1),
                        "string 1 claims 1125899906842624 bytes"),
    "deep nesting": (dict(body=kv("k", V.ARRAY, (u32(V.ARRAY) + u64(1)) * 20_000), n_kv=1), "nested more than"),
    "value type": (dict(body=kv("k", 13, u32(0)), n_kv=1), "metadata key 'k': unknown value type 13"),
    "array item type": (dict(body=kv("k", V.ARRAY, u32(99) + u64(1)), n_kv=1), "array of unknown value type 99"),
    "duplicate key": (dict(body=kv("k", V.UINT8, b"\1") * 2, n_kv=2), "metadata key 'k' appears twice"),
    "bad key": (dict(body=string(b"\xff") + u32(V.UINT8) + b"\1", n_kv=1), "the name is not UTF-8"),
    "alignment": (dict(body=kv("general.alignment", V.UINT32, u32(48)), n_kv=1), "power of two"),
    "alignment type": (dict(body=kv("general.alignment", V.UINT64, u64(32)), n_kv=1), "must be a UINT32"),
    "n_dims": (dict(body=tensor_info("t", [1] * 5, Q.F32), n_tensors=1), "tensor 't' has 5 dimensions"),
    "huge n_dims": (dict(body=tensor_info("t", [], Q.F32)[:-16] + u32(2 ** 32 - 1) + u32(0) + u64(0),
                         n_tensors=1), "4294967295 dimensions"),
    "zero dim": (dict(body=tensor_info("t", [4, 0], Q.F32), n_tensors=1), "dimension that is not positive"),
    "ggml type": (dict(body=tensor_info("t", [4], 4), n_tensors=1), "tensor 't' has unknown ggml type 4"),
    "block size": (dict(body=tensor_info("t", [33, 2], Q.Q8_0), n_tensors=1),
                   "rows of 33 Q8_0 values are not whole blocks of 32"),
    "data past end": (dict(body=tensor_info("t", [4], Q.F32, offset=8), n_tensors=1,
                           tail=_padded(len(tensor_info("t", [4], Q.F32))) + b"\0" * 16), "runs past the end"),
    "huge dims": (dict(body=tensor_info("t", [2 ** 63, 2 ** 63], Q.F32), n_tensors=1), "runs past the end"),
    "huge offset": (dict(body=tensor_info("t", [1], Q.F32, offset=2 ** 64 - 1), n_tensors=1), "runs past the end"),
    "duplicate tensor": (dict(body=tensor_info("t", [1], Q.F32) * 2, n_tensors=2, tail=b"\0" * 64),
                         "tensor 't' appears twice"),
    "version 1": (dict(body=b"\0" * 16, version=1), "GGUF version 1 is not supported"),
    "version 4": (dict(body=b"\0" * 16, version=4), "GGUF version 4 is not supported"),
    "big-endian": (dict(body=b"\0" * 16, version=3 << 24), "big-endian"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_header_is_a_quick_checkpoint_error(tmp_path: Path, case: str) -> None:
    spec, needle = HOSTILE[case]
    path = write_raw(tmp_path / "hostile.gguf", **spec)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        open_gguf(path)
    assert time.perf_counter() - start < 0.5
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert needle in message, message


def test_not_gguf_at_all(tmp_path: Path) -> None:
    for name, blob in (("empty.gguf", b""), ("short.gguf", b"GG"), ("junk.gguf", b"PK\3\4" + b"\0" * 40)):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match=f"{name}: not a valid GGUF file"):
            open_gguf(tmp_path / name)
    with pytest.raises(CheckpointError, match="cannot read"):
        open_gguf(tmp_path / "missing.gguf")
