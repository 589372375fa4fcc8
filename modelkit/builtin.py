"""The core plugin: modelkit's own blocks, transforms, safetensors source and architectures.

It is registered through the ``modelkit`` entry-point group like any third-party plugin, and
first. Its hooks import what they register only when called, so building the command line
(which asks every plugin for commands) stays light.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

from .plugins.hookspecs import hookimpl

SHIPPED = ("gpt2", "llama", "mistral", "falcon", "granite3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3",
           "phi3", "olmo", "olmo2", "starcoder2", "gpt_neox", "phi", "stablelm",
           "smollm3", "opt", "gptj", "cohere", "cohere2", "gpt_bigcode", "bloom", "mixtral", "qwen3_moe",
           "granitemoe")


def mapping_file(name: str):  # -> importlib.resources Traversable
    """A mapping shipped in the ``mappings/`` folder (installed as ``modelkit.mappings``)."""
    return resources.files("modelkit.mappings") / f"{name}.yaml"


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    for name in SHIPPED:
        register(name, mapping_file(name))


@hookimpl
def register_block_kinds(register: Callable[..., None]) -> None:
    from .nn.attention import Attention
    from .nn.mlp import MLP, GatedMLP
    from .nn.moe import MoE
    from .nn.norms import LayerNorm, RMSNorm

    register("attention", Attention)
    register("mlp", MLP)
    register("gated_mlp", GatedMLP)
    register("moe", MoE)
    register("layernorm", LayerNorm)
    register("rmsnorm", RMSNorm)


@hookimpl
def register_transforms(register: Callable[..., None]) -> None:
    from .loading.inverses import CORE_INVERSES
    from .loading.transforms import CORE_TRANSFORMS

    for name, (apply, shape) in CORE_TRANSFORMS.items():
        register(name, apply, shape, inverse=CORE_INVERSES.get(name))


@hookimpl
def register_weight_sources(register: Callable[..., None]) -> None:
    from .checkpoint.safetensors import SafetensorsSource

    register("safetensors", SafetensorsSource)


@hookimpl
def register_commands(register: Callable[..., None]) -> None:
    from .serve.command import configure, run

    register("serve", configure, run, help="serve the model over an OpenAI-compatible HTTP API")
