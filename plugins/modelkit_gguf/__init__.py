"""The GGUF plugin: llama.cpp's GGUF files as a weight source, with their own mappings.

It registers, through the same hooks as any third-party plugin:

- the ``gguf`` weight source (:class:`modelkit_gguf.source.GGUFSource`): reads a ``.gguf``
  file's metadata as config, its tensors dequantised to float32, and its tokenizer;
- the ``llama-gguf`` architecture (``mappings/llama_gguf.yaml``), which serves GGUF files whose
  ``general.architecture`` is ``llama``; ``--arch llama`` picks it for a GGUF file too.

See docs/gguf.md.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

from modelkit.hookspecs import hookimpl

from .source import GGUFSource

# architecture name -> mapping file shipped in mappings/ (installed as modelkit.mappings)
MAPPINGS = {"llama-gguf": "llama_gguf.yaml"}


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    for name, filename in MAPPINGS.items():
        register(name, resources.files("modelkit.mappings") / filename)


@hookimpl
def register_weight_sources(register: Callable[..., None]) -> None:
    register("gguf", GGUFSource)


__all__ = ["GGUFSource", "MAPPINGS"]
