"""One GGUF file's metadata and tensor table as the config rules read them: gguf-py's
``{arch}`` key templates filled in, values checked, errors naming the file and the key."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from modelkit import CheckpointError


class Metadata:
    """``meta`` (key -> value) of the file at ``path``, for architecture ``arch``."""

    def __init__(self, meta: Mapping[str, Any], arch: str, path: Path):
        self.meta, self.arch, self.path = meta, arch, path

    def key(self, template: str) -> str:
        """A gguf-py key template (``"{arch}.ssm.conv_kernel"``) for this file's architecture."""
        return template.format(arch=self.arch)

    def get(self, template: str, default: Any = None) -> Any:
        """The value of ``template``'s key, or ``default`` when the file has none."""
        return self.meta.get(self.key(template), default)

    def error(self, template: str, problem: str) -> CheckpointError:
        """A one-line error naming the file and the key."""
        return CheckpointError(f"{self.path}: '{self.key(template)}' {problem}")

    def count(self, template: str, default: Any = None) -> Any:
        """A non-negative integer value (or ``default`` when absent); anything else is an error."""
        value = self.get(template)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(template, f"must be a non-negative integer, got {value!r}")
        return value

    def per_layer(self, template: str, layers: int) -> list[Any] | None:
        """A value given per layer: a list of ``layers`` values, or one value for every layer
        (None when the file has none); a list of another length is an error."""
        value = self.get(template)
        if value is None:
            return None
        if not isinstance(value, list):
            return [value] * layers
        if len(value) != layers:
            raise self.error(template, f"holds {len(value)} values for {layers} layers")
        return list(value)


class Tensors:
    """The tensors a file has: names, their shapes (NumPy order), and their kinds (the name
    without its layer: ``blk.3.attn_q.bias`` -> ``attn_q.bias``)."""

    def __init__(self, tensors: Mapping[str, tuple[int, ...]] | Collection[str]):
        self.shapes: dict[str, tuple[int, ...]] = (dict(tensors) if isinstance(tensors, Mapping)
                                                    else {name: () for name in tensors})
        self.kinds = {self.kind(name) for name in self.shapes}

    @staticmethod
    def kind(name: str) -> str:
        """``blk.3.attn_q.bias`` -> ``attn_q.bias``; a model tensor's name as it is."""
        parts = name.split(".", 2)
        return parts[2] if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() else name

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def has(self, kind: str) -> bool:
        """Whether some layer (or the model) has a tensor of this kind (``attn_q.bias``)."""
        return kind in self.kinds

    def rows(self, kind: str) -> int | None:
        """The first dimension of the first layer's tensor of this kind (None: no such tensor)."""
        return next((shape[0] for name, shape in self.shapes.items() if shape and self.kind(name) == kind), None)
