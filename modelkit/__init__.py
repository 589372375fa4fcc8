"""modelkit: load language-model checkpoints of many architectures and run them in NumPy.

    import modelkit
    model = modelkit.load("path/to/folder")        # architecture detected from config.json
    logits = model.forward(ids)                    # float32 [T, vocab]

This module is also the plugin API: a plugin needs nothing but the names exported here
(``hookimpl``, ``Block``, ``Option``, ``ParamSpec``, ``WeightSource``, the errors, ...; see
docs/hooks.md). Heavy modules load on first use, so ``import modelkit`` (and
``modelkit --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (CheckpointError, ConfigError, EvaluationError, GenerationError, MappingError,
                     ModelkitError, OutOfMemoryError, PluginError, TokenizerError, UnknownArchitectureError,
                     WeightMismatchError)

__version__ = "0.2.0"

# public name -> the module that defines it, imported on first use
_LAZY = {
    # the marker of hook implementations (imported on use, so `import modelkit` needs only NumPy-free
    # modules: modelkit.testing's fixture builder runs where torch is and pluggy may not be)
    "hookimpl": "plugins.hookspecs",
    # building blocks for plugins (modelkit.nn)
    "Block": "nn.block", "ForwardContext": "nn.block", "ParamSpec": "nn.block", "row_spans": "nn.block",
    "Option": "nn.options", "REQUIRED": "nn.options",
    "linear": "nn.linear", "product_layout": "nn.linear", "widen": "nn.linear",
    "ACTIVATIONS": "nn.activations", "silu": "nn.activations", "softplus": "nn.activations",
    "rms_norm": "nn.norms", "layer_norm": "nn.norms",
    "GatedMLP": "nn.mlp", "MLP": "nn.mlp", "causal_conv": "nn.conv",
    # checkpoints and weight sources
    "WeightSource": "checkpoint.source", "TensorInfo": "checkpoint.source",
    "Tokenizer": "text.tokenizer",
    # loading
    "inspect": "loading", "find_mapping": "loading", "resolve_path": "loading", "TensorReader": "loading.build",
    "Plan": "loading.plan", "Inverse": "plugins.registry",
    "stored_layout": "loading.writeback", "StoredTensor": "loading.writeback",
    "CannotWriteBack": "loading.writeback", "Model": "model", "Cache": "model", "PLACEHOLDER": "schema.spec",
    # generation
    "SamplingOptions": "generation.options", "Sampler": "generation.sampling",
    "GenerationStats": "generation.loop", "Piece": "generation.loop",
    "ChatSession": "generation.chat",
    # measuring
    "Scores": "evaluation.logprobs", "TokenLogprob": "evaluation.logprobs",
}

__all__ = ["load", "architectures", "ModelkitError", "ConfigError", "MappingError",
           "CheckpointError", "WeightMismatchError", "UnknownArchitectureError", "PluginError",
           "TokenizerError", "GenerationError", "EvaluationError", "OutOfMemoryError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def load(path: Any, arch: str | None = None, **kwargs: Any) -> Any:
    """Load a checkpoint folder, GGUF file or hub repo id into a :class:`modelkit.Model`.

    ``arch`` names the architecture (detected from config.json otherwise); ``mapping=FILE``
    uses a YAML mapping instead of the registered ones; ``progress=True`` shows a bar on a
    terminal. See :func:`modelkit.loading.load` for every option.
    """
    from .loading import load as _load

    return _load(path, arch, **kwargs)


def architectures() -> list[str]:
    """Names of every architecture in use (registered ones and user mappings)."""
    from .loading import architectures as _architectures

    return _architectures()
