"""Every tensor type the gguf package can dequantise loads: for each one, blocks of that type
written into a GGUF file come back from the weight source as exactly what gguf-py's own
``gguf.quants.dequantize`` makes of the same bytes, float32, in NumPy order, row by row (the
reader's offsets, alignment and shapes are what is tested; the arithmetic is the package's). A
type it cannot dequantise is refused before any tensor is read, in one line naming the file,
the tensor and the type."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

import modelkit
from gguf_files import fixture_as_gguf, write_gguf
from modelkit.errors import CheckpointError
from modelkit_gguf.source import GGUFSource, dequantisable

PLAIN = {Q.F32, Q.F16, Q.F64, Q.I8, Q.I16, Q.I32, Q.I64}
BLOCKED = sorted((q for q in Q if q not in PLAIN), key=lambda q: q.value)
READABLE = [q for q in BLOCKED if dequantisable(q)]
UNREADABLE = [q for q in BLOCKED if not dequantisable(q)]


def random_blocks(qtype: Q, rows: int, blocks: int, seed: int) -> np.ndarray:
    """``rows`` rows of ``blocks`` random blocks of ``qtype`` as [rows, bytes] uint8. Bit 6 of
    every byte is cleared, so that whatever bytes a type reads as a float16 scale, its exponent
    stays below 16: the values are finite, and the codes and scales are otherwise random."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, blocks * size), dtype=np.uint8)
    return raw & np.uint8(0xBF)


def test_the_installed_package_reads_the_issues_types() -> None:
    wanted = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.BF16,
              Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_NL, Q.IQ4_XS,
              Q.TQ1_0, Q.TQ2_0, Q.MXFP4}
    assert wanted <= set(READABLE)


@pytest.mark.parametrize("qtype", READABLE, ids=lambda q: q.name)
def test_each_type_reads_as_gguf_py_dequantises_it(tmp_path: Path, qtype: Q) -> None:
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    raw = random_blocks(qtype, 3, 2, seed=qtype.value)  # [out=3, in=2 blocks]: not square
    stacked = random_blocks(qtype, 2 * 3, 1, seed=100 + qtype.value).reshape(2, 3, -1)  # [2, 3, 1 block]
    path = write_gguf(tmp_path / "t.gguf", {"w": (raw, qtype), "experts": (stacked, qtype)})
    src = GGUFSource.open(path)
    try:
        assert src.tensor_infos()["w"].shape == (3, 2 * block)
        assert src.tensor_infos()["w"].dtype == qtype.name
        got = src.read("w")
        want = gguf.quants.dequantize(raw, qtype)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (3, 2 * block)
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, want.astype(np.float32))
        assert src.tensor_infos()["experts"].shape == (2, 3, block)
        np.testing.assert_array_equal(src.read("experts"), gguf.quants.dequantize(stacked, qtype).astype(np.float32))
    finally:
        src.close()


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16, Q.MXFP4], ids=lambda q: q.name)
def test_types_gguf_py_quantises_come_back_close_to_the_data(tmp_path: Path, qtype: Q) -> None:
    data = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    path = write_gguf(tmp_path / "t.gguf", {"w": (gguf.quants.quantize(data, qtype), qtype)})
    src = GGUFSource.open(path)
    try:
        got = src.read("w")
    finally:
        src.close()
    bound = {Q.BF16: 8e-3, Q.Q8_0: 1e-2, Q.Q5_0: 7e-2, Q.Q5_1: 7e-2, Q.Q4_0: 0.15, Q.Q4_1: 0.15, Q.MXFP4: 0.3}[qtype]
    assert np.abs(got - data).max() <= bound * np.abs(data).max()


@pytest.mark.parametrize("qtype", UNREADABLE, ids=lambda q: q.name)
def test_a_type_the_package_cannot_read_is_one_line(tmp_path: Path, qtype: Q) -> None:
    path = write_gguf(tmp_path / "t.gguf", {"w": (random_blocks(qtype, 2, 1, 0), qtype)})
    src = GGUFSource.open(path)
    with pytest.raises(CheckpointError) as info:
        src.tensor_infos()
    src.close()
    message = str(info.value)
    assert f"tensor 'w' is stored as {qtype.name}, which the gguf package cannot dequantise" in message
    assert str(path) in message and "\n" not in message


def test_a_model_with_an_unreadable_tensor_fails_before_reading(tmp_path: Path) -> None:
    if not UNREADABLE:
        pytest.skip("the installed gguf package dequantises every type")
    qtype = UNREADABLE[0]
    path = fixture_as_gguf("llama_gqa", tmp_path / "m.gguf")
    f = gguf.GGUFReader(path)
    tensors = {t.name: (np.array(t.data, np.float32).reshape(tuple(reversed(t.shape.tolist()))), None)
               for t in f.tensors}
    cols = tensors["blk.0.ffn_down.weight"][0].shape[1]
    rows = tensors["blk.0.ffn_down.weight"][0].shape[0]
    per_block = gguf.GGML_QUANT_SIZES[qtype][0]
    if cols % per_block:
        pytest.skip(f"{qtype.name} blocks do not divide the fixture's rows")
    tensors["blk.0.ffn_down.weight"] = (random_blocks(qtype, rows, cols // per_block, 1), qtype)
    meta = {fl.name: fl.contents() for fl in f.fields.values()
            if not fl.name.startswith("GGUF.") and fl.name != "general.architecture"}
    bad = write_gguf(tmp_path / "bad.gguf", tensors, meta)
    with pytest.raises(CheckpointError, match=f"blk.0.ffn_down.weight' is stored as {qtype.name}"):
        modelkit.load(bad)
