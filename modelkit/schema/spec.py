"""A parsed mapping file as data: what it matches, the config it reads, its layers and weights.

Values that depend on the config (``$expressions``) are kept as written here; the planner
resolves them (:mod:`modelkit.schema.resolve`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PLACEHOLDER = "{i}"  # the layer index in canonical and checkpoint tensor names
STACK_PLACEHOLDER = "{j}"  # the piece index in the checkpoint names of a stacked weights entry


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
    when: Any = True  # model-level blocks only: the block exists when this (bool or $expr) is true


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
    # each step: the branches that read the same input (one for a plain residual branch, the
    # blocks before a "+" in the YAML); their sum is added once
    steps: list[list[list[str]]]
    # per step, the blocks applied to the residual stream after the add (the part after "+":
    # post-norm layers, OPT-350m); empty lists when none
    after_add: list[list[str]] = field(default_factory=list)


@dataclass
class WeightSpec:
    """Where one canonical parameter comes from: a checkpoint name and transforms."""

    target: str
    sources: list[str]  # alternatives: the first one the checkpoint has is used
    transforms: list[tuple[str, dict[str, Any]]]
    optional: bool = False
    # a count (or $expr): the parameter is that many checkpoint tensors, {j} = 0..count-1 in
    # their names, each transformed, stacked along a new first axis (StableLM's per-head norms)
    stack: Any = None
    # other forms the checkpoint may store the parameter in, each with its own names, transforms
    # and stack, tried in order when none of this one's tensors is stored (a YAML list of
    # objects: Mixtral's experts one tensor per expert, or fused as transformers 5 holds them)
    fallbacks: list["WeightSpec"] = field(default_factory=list)
    # a form of a list of forms: a $expression, the config in which the checkpoint stores this
    # form (None: any); a form whose expression is false is not tried, nor written by convert
    when: Any = None


@dataclass
class ModelSpec:
    """The parts around the layer stack: embedding, positions, final norm, head, scalars."""

    embedding_multiplier: Any = 1.0
    embed_dim: Any = None  # width of the token embedding and the head; None: hidden_size
    positions: str = "none"  # "none" or "learned"
    max_positions: Any = None
    embed_norm: BlockSpec | None = None  # a norm of the embedded tokens before the first layer
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
    # config.json keys that do not change this mapping's forward pass -> why
    inert_config: dict[str, str] = field(default_factory=dict)

    def unread_config_keys(self, raw: dict[str, Any]) -> list[str]:
        """Top-level keys of ``raw`` (config.json) that no field reads and that neither this
        mapping nor the vocabulary declares inert: settings the mapping may be ignoring."""
        from .vocabulary import INERT_CONFIG_KEYS

        read = {source.split(".")[0] for f in self.fields for source in f.sources}
        return sorted(key for key in raw
                      if key not in read and key not in INERT_CONFIG_KEYS and key not in self.inert_config)

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
