"""The Granite 4.0-H plugin: IBM's hybrid Mamba2 / attention models (GraniteMoeHybridForCausalLM).

It adds what the core lacks and nothing else, through the same hooks as any plugin, using only
what ``modelkit`` exports:

* the architecture ``granite`` (``mappings/granite.yaml`` beside this file), and ``mamba2``,
  ``bamba`` and ``falcon_h1``, the other families built on the mamba2 block;
* the block kind ``mamba2`` (:mod:`modelkit_granite.mamba2_block`, math in
  :mod:`modelkit_granite.mamba2`).

Attention, the shared MLP, the routed experts (the core's ``moe`` kind), the norms and every
weight transform are the core's. See docs/granite.md.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

from modelkit import hookimpl


# the architectures built on the mamba2 block kind, each a YAML file in mappings/
ARCHITECTURES = ("granite", "mamba2", "bamba", "falcon_h1")


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    for name in ARCHITECTURES:  # falcon_h1 extends bamba by name
        register(name, resources.files(__name__) / "mappings" / f"{name}.yaml")


@hookimpl
def register_block_kinds(register: Callable[..., None]) -> None:
    from .mamba2_block import Mamba2

    register("mamba2", Mamba2)
