"""The weight-source contract: what the loader needs from a checkpoint format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as stored: its shape, its dtype name, and the file that holds it."""

    shape: tuple[int, ...]
    dtype: str
    file: str


class WeightSource:
    """An opened checkpoint. Subclasses implement every method below.

    ``kind`` is matched against a mapping's ``match.source`` (``safetensors`` by default), so a
    format whose tensor names differ (GGUF) gets mappings of its own.
    """

    kind: str = "safetensors"

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def can_open(cls, path: Path) -> bool:
        """True when this source reads ``path`` (a folder or a file)."""
        raise NotImplementedError

    @classmethod
    def open(cls, path: Path) -> "WeightSource":
        """Open ``path``; raise :class:`modelkit.errors.CheckpointError` when it is unusable."""
        return cls(path)

    def config(self) -> dict[str, Any]:
        """The model's config as a config.json-style dict (model_type, sizes, ...)."""
        raise NotImplementedError

    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Every stored tensor by its checkpoint name, without reading data."""
        raise NotImplementedError

    def read(self, name: str) -> np.ndarray:
        """One tensor as a float32 array (converted from bf16/f16, dequantised, ...)."""
        raise NotImplementedError

    def folder(self) -> Path | None:
        """The folder holding tokenizer.json and friends, if any."""
        return None

    def tokenizer(self) -> Any:
        """A :class:`modelkit.tokenizer.Tokenizer` built from the source itself, or ``None``."""
        return None

    def close(self) -> None:
        """Release file handles and mappings."""
