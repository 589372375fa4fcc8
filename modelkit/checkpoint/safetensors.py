"""Hugging Face folders: config.json with one or many *.safetensors files."""

from __future__ import annotations

import errno
import json
import mmap
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, ConfigError, ModelkitError, out_of_memory
from .config_json import read_config_json
from .files import MAX_SIDE_FILE_BYTES, read_json_if_present, read_text_file
from .source import TensorInfo, WeightSource

INDEX = "model.safetensors.index.json"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
# dtypes read straight from the mapped file (little-endian, as safetensors stores them)
_DIRECT = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


def pickle_advice(folder: Path, files: list[Path]) -> CheckpointError:
    names = ", ".join(sorted(f.name for f in files)[:3])
    return CheckpointError(
        f"{folder}: only pickle weights ({names}); modelkit never unpickles files, because "
        f"loading a pickle can run arbitrary code. Convert them to safetensors elsewhere, in an "
        f"environment you trust (for example transformers' save_pretrained(safe_serialization=True))")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a folder, from its shard index when it has one.

    Refuses shard names that leave the folder, missing shards, and pickle-only folders.
    """
    index = folder / INDEX
    if index.exists():
        text = read_text_file(index, MAX_SIDE_FILE_BYTES, CheckpointError, "shard index")
        try:
            data = json.loads(text)
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError, RecursionError):  # ValueError: bad JSON, UTF-8
            raise CheckpointError(f"{index}: not a valid shard index (needs a 'weight_map' object)") from None
        files: list[Path] = []
        for name in sorted(set(map(str, weight_map.values()))):
            # a plain file name, checked as text: the Hugging Face cache links each shard to a
            # blob elsewhere, so where a link points is not the question; a path in the name is
            path = folder / name
            if Path(name).name != name or "\\" in name or "\0" in name or not name.endswith(".safetensors"):
                raise CheckpointError(f"{index}: shard '{name}' is not a .safetensors file inside "
                                      f"the model folder; refusing it")
            if not path.is_file():
                raise CheckpointError(f"{index}: shard '{name}' does not exist")
            files.append(path)
        return files
    found = sorted(folder.glob("*.safetensors"))
    files = [p for p in found if p.is_file()]
    if not files and found:
        raise CheckpointError(f"{found[0]}: not a regular file (a FIFO or a device?); weights must be one")
    if not files:
        pickles = [p for pat in PICKLE_PATTERNS for p in folder.glob(pat)]
        if pickles:
            raise pickle_advice(folder, pickles)
        raise CheckpointError(f"{folder}: no *.safetensors weight files")
    return files


class SafetensorsSource(WeightSource):
    """A folder with config.json and safetensors weights (single file or sharded)."""

    kind = "safetensors"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        # a Hugging Face folder: safetensors weights (or an index naming them), or only pickles,
        # which open() refuses with advice; a folder of another format is left to its source
        return path.is_dir() and (any(path.glob("*.safetensors")) or (path / INDEX).is_file()
                                  or any(p for pattern in PICKLE_PATTERNS for p in path.glob(pattern)))

    def __init__(self, path: Path):
        super().__init__(path)
        self._config: dict[str, Any] | None = None
        self._files = weight_files(path)
        self._handles: dict[str, Any] = {}
        self._maps: dict[str, tuple[mmap.mmap, dict[str, Any]] | None] = {}
        self._infos: dict[str, TensorInfo] | None = None

    def _handle(self, file: str) -> Any:
        if file not in self._handles:
            try:
                with open(file, "rb"):  # the library reports an unreadable file as a missing one
                    pass
            except OSError as exc:
                raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from None
            try:
                self._handles[file] = safe_open(file, framework="numpy")
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
        return self._handles[file]

    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = read_config_json(self.path / "config.json")
        return self._config

    def tensor_infos(self) -> dict[str, TensorInfo]:
        if self._infos is None:
            infos: dict[str, TensorInfo] = {}
            for path in self._files:
                handle = self._handle(str(path))
                try:
                    for name in handle.keys():
                        sl = handle.get_slice(name)
                        if name in infos:
                            raise CheckpointError(f"{path}: tensor '{name}' is also in {infos[name].file}")
                        infos[name] = TensorInfo(tuple(int(d) for d in sl.get_shape()),
                                                 str(sl.get_dtype()), str(path))
                except SafetensorError as exc:
                    raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
            self._infos = infos
        return self._infos

    def _mapped(self, file: str) -> tuple[mmap.mmap, dict[str, Any]] | None:
        """The file mapped read-only, with its header (tensor name -> dtype, shape, byte range);
        None where direct reading does not apply (a big-endian host, an unusual file)."""
        if file not in self._maps:
            self._maps[file] = None
            if sys.byteorder == "little":
                try:
                    with open(file, "rb") as fh:
                        n = int.from_bytes(fh.read(8), "little")
                        header = json.loads(fh.read(n))
                        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                    header.pop("__metadata__", None)
                    for entry in header.values():  # offsets from the start of the file
                        entry["data_offsets"] = [8 + n + o for o in entry["data_offsets"]]
                    self._maps[file] = (mapped, header)
                except OSError as exc:
                    if exc.errno == errno.ENOMEM:  # no address space left to map it
                        size = os.path.getsize(file)
                        raise out_of_memory(f"mapping {file} ({size:,} bytes)", MemoryError()) from None
                except (ValueError, KeyError, TypeError):
                    pass
        return self._maps[file]

    def _read_direct(self, file: str, name: str) -> np.ndarray | None:
        """float32 straight from the mapped file: float32 itself as a read-only view of the
        map (no copy: its pages are read from the file when first used, and shared with the
        page cache), bf16 by widening its bits (exact, one pass), no intermediate copy; pages
        already widened are dropped from the resident set."""
        mapped = self._mapped(file)
        if mapped is None or name not in mapped[1]:
            return None
        mm, header = mapped
        entry = header[name]
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        dtype = _DIRECT.get(entry["dtype"])
        count = int(np.prod(shape, dtype=np.int64))
        if dtype is None or end - start != count * dtype.itemsize or end > len(mm):
            return None
        if entry["dtype"] == "F32" and start % 4 == 0:
            return np.frombuffer(mm, dtype, count, start).reshape(shape)  # read-only
        out = np.empty(shape, np.float32)  # first: a failure here leaves no view of the map alive
        raw = np.frombuffer(mm, dtype, count, start).reshape(shape)
        if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32)
        else:
            out[...] = raw
        del raw
        if hasattr(mm, "madvise") and end > start:
            page = mmap.PAGESIZE
            lo = start - start % page
            mm.madvise(mmap.MADV_DONTNEED, lo, end - lo)
        return out

    def read(self, name: str) -> np.ndarray:
        info = self.tensor_infos()[name]
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{info.file}: tensor '{name}' has dtype {info.dtype}; "
                                  f"expected F32, F16 or BF16")
        direct = self._read_direct(info.file, name)
        if direct is not None:
            return direct
        import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy for this slower path only; its
        # import takes about a second, which every command would pay if it were at the top)

        try:
            array = self._handle(info.file).get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{info.file}: cannot read tensor '{name}' ({exc})") from None
        except MemoryError as exc:
            raise out_of_memory(f"reading tensor '{name}' of {info.file}", exc) from None
        except BaseException as exc:  # noqa: BLE001 - a Rust panic (short of memory, say) is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise CheckpointError(f"{info.file}: cannot read tensor '{name}' (the safetensors library "
                                  f"failed: {lines[0][:200]})") from None
        # bf16 (an ml_dtypes array) and f16 become float32 here, once, at load
        return np.ascontiguousarray(array, dtype=np.float32)

    def config_location(self) -> str:
        return str(self.path / "config.json")

    def tokenizer(self) -> Any:
        from ..text.tokenizer import Tokenizer

        return Tokenizer.from_folder(self.path)

    def generation_config(self) -> dict[str, Any]:
        # an unreadable or malformed file is an error, not ignored: it may name the EOS ids
        # that end generation
        return read_json_if_present(self.path / "generation_config.json", ConfigError)

    def release_pages(self) -> None:
        # pages read at load but not kept (weights copied into fused, laid-out or transformed
        # ones) leave the resident set; those of weights used in place (read-only views, so
        # never written) come back from the page cache on first use
        for mapped in self._maps.values():
            if mapped is not None and hasattr(mapped[0], "madvise") and len(mapped[0]):
                mapped[0].madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self._handles.clear()
        self.release_pages()
        for mapped in self._maps.values():
            if mapped is not None:
                try:
                    mapped[0].close()
                except BufferError:  # float32 weights are views of it: unmapped when the last goes
                    pass
        self._maps.clear()
