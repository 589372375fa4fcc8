"""The weight-source contract: everything the loader asks of a checkpoint format."""

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
    """An opened checkpoint. Subclasses implement :meth:`can_open`, :meth:`config`,
    :meth:`tensor_infos` and :meth:`read`; the other methods have working defaults.

    ``kind`` is matched against a mapping's ``match.source`` (``safetensors`` by default), so a
    format whose tensor names differ (GGUF) gets mappings of its own. A source is used as a
    context manager or closed with :meth:`close`.
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
        """Open ``path``; raise :class:`modelkit.CheckpointError` when it is unusable."""
        return cls(path)

    def config(self) -> dict[str, Any]:
        """The model's config as a config.json-style dict (model_type, sizes, ...)."""
        raise NotImplementedError

    def config_location(self) -> str:
        """Where the config comes from, for error messages (config.json, or the file itself)."""
        return str(self.path)

    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Every stored tensor by its checkpoint name, without reading data."""
        raise NotImplementedError

    def read(self, name: str) -> np.ndarray:
        """One tensor as a float32 array (converted from bf16/f16, dequantised, ...)."""
        raise NotImplementedError

    def tokenizer(self) -> Any:
        """The checkpoint's :class:`modelkit.Tokenizer`, or ``None`` when it has none."""
        return None

    def generation_config(self) -> dict[str, Any]:
        """generation_config.json's content (sampling defaults, eos ids), ``{}`` when absent."""
        return {}

    def release_pages(self) -> None:
        """A hint, between layers of a load: pages of mapped files read so far may leave the
        resident set (arrays still viewing them read them back from the page cache)."""

    def close(self) -> None:
        """Release file handles and mappings."""

    def __enter__(self) -> "WeightSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
