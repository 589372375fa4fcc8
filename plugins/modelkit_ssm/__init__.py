"""The ssm plugin: recurrent token mixers beside the core's attention, with their families.

It adds what the core lacks and nothing else, through the same hooks as any plugin, using only
what ``modelkit`` exports:

* the architecture ``mamba`` (Mamba v1, MambaForCausalLM: ``mappings/mamba.yaml``) and the
  block kind ``mamba`` (:mod:`modelkit_ssm.mamba_block`, math in :mod:`modelkit_ssm.selective_scan`);
* the architecture ``lfm2`` (LiquidAI LFM2, Lfm2ForCausalLM: ``mappings/lfm2.yaml``) and the
  block kind ``short_conv`` (:mod:`modelkit_ssm.short_conv`), beside the core's attention.

Both mixers convolve over time with the core's :func:`modelkit.causal_conv`. Norms, attention,
the MLP and every weight transform are the core's. See docs/ssm.md.
"""

from __future__ import annotations

from importlib import resources
from typing import Callable

from modelkit import hookimpl


@hookimpl
def register_architectures(register: Callable[..., None]) -> None:
    register("mamba", resources.files(__name__) / "mappings" / "mamba.yaml")
    register("lfm2", resources.files(__name__) / "mappings" / "lfm2.yaml")


@hookimpl
def register_block_kinds(register: Callable[..., None]) -> None:
    from .mamba_block import Mamba
    from .short_conv import ShortConv

    register("mamba", Mamba)
    register("short_conv", ShortConv)
