"""modelkit: load language-model checkpoints of many architectures and run them in NumPy.

    import modelkit
    model = modelkit.load("path/to/folder")        # architecture detected from config.json
    logits = model.forward(ids)                    # float32 [T, vocab]

Heavy modules load on first use, so ``import modelkit`` (and ``modelkit --help``) stays fast.
"""

from __future__ import annotations

from typing import Any

from .errors import (CheckpointError, ConfigError, GenerationError, MappingError, ModelkitError,
                     PluginError, TokenizerError, UnknownArchitectureError, WeightMismatchError)
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["load", "architectures", "hookimpl", "ModelkitError", "ConfigError", "MappingError",
           "CheckpointError", "WeightMismatchError", "UnknownArchitectureError", "PluginError",
           "TokenizerError", "GenerationError", "__version__"]


def load(path: Any, arch: str | None = None, **kwargs: Any) -> Any:
    """Load a checkpoint folder (or GGUF file) into a :class:`modelkit.model.Model`.

    ``arch`` names the architecture (detected from config.json otherwise); ``mapping=FILE``
    uses a YAML mapping instead of the registered ones; ``progress=True`` shows a bar on a
    terminal. See :func:`modelkit.loader.load`.
    """
    from .loader import load as _load

    return _load(path, arch, **kwargs)


def architectures() -> list[str]:
    """Names of every registered architecture."""
    from .loader import architectures as _architectures

    return _architectures()
