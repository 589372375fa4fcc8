"""The Granite 4.0-H plugin: IBM's hybrid Mamba2 / attention models (GraniteMoeHybridForCausalLM).

It adds what the core lacks and nothing else, through the same hooks as any plugin:

* the architecture ``granite`` (mappings/granite.yaml, shipped with the core's mappings);
* the block kind ``mamba2`` (:mod:`modelkit_granite.mamba2_block`, math in
  :mod:`modelkit_granite.mamba2`);
* the block kind ``moe`` (routed experts beside the shared MLP, :mod:`modelkit_granite.moe`).

Attention, the shared MLP, the norms and every weight transform are the core's. See
docs/granite.md.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

from modelkit.hookspecs import hookimpl

from .mamba2_block import Mamba2
from .moe import MoE


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    register("granite", resources.files("modelkit.mappings") / "granite.yaml")


@hookimpl
def register_block_kinds(register: Callable[..., None]) -> None:
    register("mamba2", Mamba2)
    register("moe", MoE)
