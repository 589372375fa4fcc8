"""The GGUF plugin: llama.cpp's GGUF files as a weight source, with their own mappings.

It registers, through the same hooks as any third-party plugin, using only what ``modelkit``
exports:

- the ``gguf`` weight source (:class:`modelkit_gguf.source.GGUFSource`): reads a ``.gguf``
  file's metadata as config, its tensors dequantised to float32, and its tokenizer;
- the ``llama-gguf`` architecture (``mappings/llama.yaml`` beside this file), which serves
  GGUF files whose ``general.architecture`` is ``llama``; ``--arch llama`` picks it for a GGUF
  file too;
- the ``gemma3-gguf`` architecture (``mappings/gemma3.yaml``): GGUF files whose
  ``general.architecture`` is ``gemma3`` (Gemma 3 text models);
- the ``unpermute_rope`` transform, which undoes llama.cpp's row order of Q and K;
- the ``convert`` command (:mod:`modelkit_gguf.convert`): a GGUF file as a Hugging Face folder,
  and (:mod:`modelkit_gguf.export`) a Hugging Face folder as a GGUF file.

See docs/gguf.md.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

from modelkit import hookimpl

@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    from .families import ROWS

    # one mapping per family, written by derive.py into mappings/ beside this file
    for family in ROWS:
        register(family.name, resources.files(__name__) / "mappings" / f"{family.mapping}.yaml")


@hookimpl
def register_weight_sources(register: Callable[..., None]) -> None:
    from .source import GGUFSource

    register("gguf", GGUFSource)


@hookimpl
def register_transforms(register: Callable[..., None]) -> None:
    from modelkit import Inverse

    from .transforms import neg_exp, permute_rope, undo_neg_exp, unpermute_rope, unpermute_rope_shape

    register("unpermute_rope", unpermute_rope, unpermute_rope_shape, inverse=Inverse(apply=permute_rope))
    register("undo_neg_exp", undo_neg_exp, inverse=Inverse(apply=neg_exp))


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    from .commands import configure_convert, run_convert

    register("convert", configure_convert, run_convert,
             help="write a GGUF file as a Hugging Face folder (safetensors), or a folder as a GGUF file")
