"""A parsed mapping file as data: what it matches, the config it reads, its layers and weights.

Values that depend on the config (``$expressions``) are kept as written here; the planner
resolves them (:mod:`modelkit.schema.resolve`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PLACEHOLDER = "{i}"  # the layer index in canonical and checkpoint tensor names


@dataclass
class FieldSpec:
    """How one config value is read: checkpoint names, type, default or derivation."""

    name: str
    sources: list[str]
    type: str = "any"
    default: Any = None
    has_default: bool = False
    derive: str | None = None
    min: float | None = None
    values: dict[str, Any] | None = None


@dataclass
class BlockSpec:
    """One block of a layer: its kind and raw options (``$expr`` strings not yet resolved)."""

    name: str
    kind: str
    options: dict[str, Any]


@dataclass
class LayerSpec:
    """One kind of layer: how its blocks are wired into residual branches.

    ``steps`` is the flow as it runs: each step is one or more branches (lists of block names)
    that read the same hidden states, and their sum is added to them before the next step. A
    ``sequential`` layout makes each branch a step of its own, a ``parallel`` one makes all
    branches one step, and a sequential flow may hold ``{parallel: [...]}`` steps.
    """

    layout: str
    residual_multiplier: Any
    blocks: dict[str, BlockSpec]
    steps: list[list[list[str]]]


@dataclass
class WeightSpec:
    """Where one canonical parameter comes from: a checkpoint name and transforms."""

    target: str
    sources: list[str]  # alternatives: the first one the checkpoint has is used
    transforms: list[tuple[str, dict[str, Any]]]
    optional: bool = False


@dataclass
class ModelSpec:
    """The parts around the layer stack: embedding, positions, final norm, head, scalars."""

    embedding_multiplier: Any = 1.0
    positions: str = "none"  # "none" or "learned"
    max_positions: Any = None
    final_norm: BlockSpec | None = None
    logits_divisor: Any = 1.0
    logits_softcap: Any = None  # logits become cap * tanh(logits / cap) (Gemma 2); null: off
    tie_head: Any = False


@dataclass
class Mapping:
    """A parsed, validated mapping file."""

    name: str
    path: str
    description: str
    match: dict[str, list[str]]
    fields: list[FieldSpec]
    checks: list[tuple[str, str]]
    model: ModelSpec
    layer_count: Any
    variant: str | None  # expression choosing each layer's variant; None for one kind of layer
    variants: dict[str, LayerSpec]
    weights: list[WeightSpec]
    ignore: list[re.Pattern]
    ignore_text: list[str] = field(default_factory=list)
    extends: list[str] = field(default_factory=list)  # the files this one builds on, nearest first
    # every checkpoint name may carry one of these prefixes (tried in order): one list of names
    # serves checkpoints saved with and without a wrapper module's prefix
    tensor_prefixes: list[str] = field(default_factory=lambda: [""])

    def checkpoint_names(self, sources: list[str], layer: str = "") -> list[str]:
        """The checkpoint names a weights entry may have, in the order they are tried."""
        return [prefix + s.replace(PLACEHOLDER, layer) for s in sources for prefix in self.tensor_prefixes]

    def serves_source(self, kind: str) -> bool:
        """True when this mapping reads checkpoints of this weight-source kind."""
        return kind in self.match["source"] if "source" in self.match else kind == "safetensors"

    def matches(self, raw: dict[str, Any], source: str) -> bool:
        """True when this mapping serves a checkpoint with this config.json and source kind."""
        if not self.serves_source(source):
            return False
        hit = False
        if "model_type" in self.match:
            if raw.get("model_type") not in self.match["model_type"]:
                return False
            hit = True
        if "architectures" in self.match:
            archs = raw.get("architectures") or []
            if isinstance(archs, list) and any(a in self.match["architectures"] for a in archs):
                hit = True
            elif "model_type" not in self.match:
                return False
        return hit

    def resolve_config(self, raw: dict[str, Any], where: str = "config.json") -> Any:
        """The :class:`~modelkit.schema.resolve.Config` this mapping reads from ``raw``."""
        from .resolve import resolve_config

        return resolve_config(self, raw, where)

    def layer_key(self, variant: str) -> str:
        """The YAML key of a variant's layer section (for error messages)."""
        return "layers" + (f".variants.{variant}" if self.variant is not None else "")
