"""The GGUF weight source: llama.cpp's single-file format.

A GGUF file holds metadata (hyperparameters, the tokenizer, the chat template) and tensors,
many of them block-quantised. This source memory-maps the file with modelkit's own header
parser (:mod:`.reader`), translates the metadata into a config.json-style dict (:mod:`.config`),
and dequantises one tensor at a time to float32 with the ``gguf`` package's NumPy dequantisers,
so loading never holds more than the model plus one tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from modelkit import CheckpointError, TensorInfo, WeightSource

from .config import config_from_metadata
from .reader import GGUFFile, GGUFTensor, is_gguf, open_gguf

# types stored as plain arrays: converted, not dequantised
_PLAIN = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.F64}
_INTEGER = {GGMLQuantizationType.I8, GGMLQuantizationType.I16, GGMLQuantizationType.I32,
            GGMLQuantizationType.I64}


def dequantize_tensor(tensor: GGUFTensor, data: np.ndarray) -> np.ndarray:
    """One GGUF tensor (``data`` as :meth:`GGUFFile.tensor_data` returns it) as a new float32
    array in NumPy order; the file's bytes are not kept."""
    qtype = tensor.ggml_type
    if qtype in _INTEGER:
        raise CheckpointError(f"tensor '{tensor.name}' holds integers ({qtype.name}), not weights")
    if qtype in _PLAIN:
        # data is already a typed [*shape] view of the memory map: copy it out as float32
        return np.array(data, dtype=np.float32).reshape(tensor.shape)
    try:
        # data is [..., bytes per row] uint8 blocks; the result is [..., elements per row]
        values = dequantize(data, qtype)
    except NotImplementedError:
        raise CheckpointError(f"tensor '{tensor.name}' uses {qtype.name}, which the gguf package "
                              f"cannot dequantise") from None
    return np.ascontiguousarray(values, dtype=np.float32).reshape(tensor.shape)


# ggml type -> whether the installed gguf package dequantises it (asked once per type)
_SUPPORTED: dict[GGMLQuantizationType, bool] = {}


def dequantisable(qtype: GGMLQuantizationType) -> bool:
    """Whether the installed gguf package can dequantise ``qtype`` (tried on one zero block:
    each release adds types, so the package itself is asked)."""
    if qtype in _PLAIN or qtype in _INTEGER:
        return True
    if qtype not in _SUPPORTED:
        try:
            dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), np.uint8), qtype)
            _SUPPORTED[qtype] = True
        except NotImplementedError:
            _SUPPORTED[qtype] = False
    return _SUPPORTED[qtype]


def gguf_in_folder(folder: Path) -> Path | None:
    """The one .gguf file of a folder without safetensors weights, else None."""
    if any(folder.glob("*.safetensors")):
        return None
    files = sorted(p for p in folder.glob("*.gguf") if p.is_file())
    return files[0] if len(files) == 1 else None


class GGUFSource(WeightSource):
    """A ``.gguf`` file: config from metadata, tensors dequantised to float32 on read."""

    kind = "gguf"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        if path.is_dir():  # a downloaded repo folder holding one GGUF file and no safetensors
            return gguf_in_folder(path) is not None
        return path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf(path))

    @classmethod
    def open(cls, path: Path) -> "GGUFSource":
        if path.is_dir():
            found = gguf_in_folder(path)
            if found is None:
                raise CheckpointError(f"{path}: expected exactly one .gguf file in the folder")
            path = found
        return cls(path)

    def __init__(self, path: Path):
        super().__init__(path)
        self._reader: GGUFFile | None = open_gguf(path)
        self._tensors = dict(self._reader.tensors)
        self._config: dict[str, Any] | None = None
        self._infos: dict[str, TensorInfo] | None = None
        self._tokenizer: Any = None
        count = self._reader.metadata.get("split.count", 1)
        if isinstance(count, int) and count > 1:
            self.close()
            raise CheckpointError(f"{path}: one part of a GGUF split into {count} files; merge the "
                                  f"parts into one file first (llama.cpp's gguf-split --merge)")

    @property
    def reader(self) -> GGUFFile:
        """The parsed file (:class:`GGUFFile`), for metadata this class does not translate."""
        if self._reader is None:
            raise CheckpointError(f"{self.path}: the GGUF file was closed")
        return self._reader

    def metadata(self, key: str, default: Any = None) -> Any:
        """One metadata value (``general.name``, ``tokenizer.ggml.pre``, ...) or ``default``."""
        return self.reader.metadata.get(key, default)

    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = config_from_metadata(self.reader.metadata,
                                                {n: t.shape for n, t in self._tensors.items()}, self.path)
        return self._config

    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Every tensor's shape (NumPy order) and type. A type the gguf package cannot
        dequantise is refused here, before any tensor is read, naming the first tensor of it."""
        if self._infos is None:
            for name, t in self._tensors.items():
                if not dequantisable(t.ggml_type):
                    raise CheckpointError(f"{self.path}: tensor '{name}' is stored as {t.ggml_type.name}, which "
                                          f"the gguf package cannot dequantise (requantise the file, or "
                                          f"update the gguf package)")
            self._infos = {name: TensorInfo(t.shape, t.ggml_type.name, str(self.path))
                           for name, t in self._tensors.items()}
        return self._infos

    def read(self, name: str) -> np.ndarray:
        reader = self.reader  # raises once closed
        tensor = self._tensors.get(name)
        if tensor is None:
            raise CheckpointError(f"{self.path}: no tensor '{name}'")
        data = reader.tensor_data(name)
        try:
            return dequantize_tensor(tensor, data)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.path}: {exc}") from None
        except (ValueError, TypeError, IndexError) as exc:  # malformed blocks inside the package
            raise CheckpointError(f"{self.path}: cannot dequantise tensor '{name}' "
                                  f"({tensor.ggml_type.name}): {exc}") from None

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from .tokenizer import tokenizer_from_metadata

            self._tokenizer = tokenizer_from_metadata(self.reader.metadata, self.path)
        return self._tokenizer

    def generation_config(self) -> dict[str, Any]:
        """generation_config.json's content: the special token ids the metadata names."""
        cfg = self.config()
        return {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}

    def close(self) -> None:
        # unmap the file; arrays already returned by read() are independent copies
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._tensors = {}
