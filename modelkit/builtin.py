"""The core plugin: modelkit's own blocks, transforms, safetensors source and architectures.

It is registered through the ``modelkit`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

from .blocks.attention import Attention
from .blocks.mlp import MLP, GatedMLP
from .blocks.norms import LayerNorm, RMSNorm
from .hookspecs import hookimpl
from .sources.safetensors_source import SafetensorsSource
from .transforms import CORE_TRANSFORMS

SHIPPED = ("gpt2", "llama", "mistral", "falcon", "granite3")


def mapping_file(name: str):  # -> importlib.resources Traversable
    """A mapping shipped in the ``mappings/`` folder (installed as ``modelkit.mappings``)."""
    return resources.files("modelkit.mappings") / f"{name}.yaml"


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    for name in SHIPPED:
        register(name, mapping_file(name))


@hookimpl
def register_block_kinds(register: Callable[..., None]) -> None:
    register("attention", Attention)
    register("mlp", MLP)
    register("gated_mlp", GatedMLP)
    register("layernorm", LayerNorm)
    register("rmsnorm", RMSNorm)


@hookimpl
def register_transforms(register: Callable[..., None]) -> None:
    for name, (apply, shape) in CORE_TRANSFORMS.items():
        register(name, apply, shape)


@hookimpl
def register_weight_sources(register: Callable[..., None]) -> None:
    register("safetensors", SafetensorsSource)
