"""Hugging Face folders: config.json with one or many *.safetensors files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from ..config import read_config_json
from ..errors import CheckpointError
from .base import TensorInfo, WeightSource

INDEX = "model.safetensors.index.json"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


def _pickle_advice(folder: Path, files: list[Path]) -> CheckpointError:
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
    root = folder.resolve()
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index}: not a valid shard index (needs a 'weight_map' object)") from None
        files: list[Path] = []
        for name in sorted(set(map(str, weight_map.values()))):
            path = (folder / name).resolve()
            if path.parent != root or not name.endswith(".safetensors"):
                raise CheckpointError(f"{index}: shard '{name}' is not a .safetensors file inside "
                                      f"the model folder; refusing it")
            if not path.is_file():
                raise CheckpointError(f"{index}: shard '{name}' does not exist")
            files.append(path)
        return files
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        pickles = [p for pat in PICKLE_PATTERNS for p in folder.glob(pat)]
        if pickles:
            raise _pickle_advice(folder, pickles)
        raise CheckpointError(f"{folder}: no *.safetensors weight files")
    return files


class SafetensorsSource(WeightSource):
    """A folder with config.json and safetensors weights (single file or sharded)."""

    kind = "safetensors"

    @classmethod
    def can_open(cls, path: Path) -> bool:
        return path.is_dir()

    def __init__(self, path: Path):
        super().__init__(path)
        self._config: dict[str, Any] | None = None
        self._files = weight_files(path)
        self._handles: dict[str, Any] = {}
        self._infos: dict[str, TensorInfo] | None = None

    def _handle(self, file: str) -> Any:
        if file not in self._handles:
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

    def read(self, name: str) -> np.ndarray:
        info = self.tensor_infos()[name]
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{info.file}: tensor '{name}' has dtype {info.dtype}; "
                                  f"expected F32, F16 or BF16")
        try:
            array = self._handle(info.file).get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{info.file}: cannot read tensor '{name}' ({exc})") from None
        # bf16 (an ml_dtypes array) and f16 become float32 here, once, at load
        return np.ascontiguousarray(array, dtype=np.float32)

    def folder(self) -> Path | None:
        return self.path

    def close(self) -> None:
        self._handles.clear()
