"""``modelkit compare``: modelkit's hidden states, block by block and layer by layer, against a
reference, and the first place where they part.

modelkit's side comes from the observer of :meth:`modelkit.Model.forward`, named as in a
reference file (:mod:`.reference`). Each state is compared by its largest absolute difference
and its NMSE, ``sum((got - ref)^2) / sum(ref^2)``. A state diverges when its NMSE is above the
tolerance. The first divergence is looked for layer by layer (the layer outputs: the residual
stream), then, within the first layer that diverges, block by block, so a block whose output
means something else in the reference (a multiplier applied inside the module, say) cannot be
blamed while its layer agrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .reference import Reference

if TYPE_CHECKING:
    from ..model import Model

DEFAULT_TOLERANCE = 1e-6  # NMSE; float32 agreement is ~1e-12, a real mistake ~1e-2 and up


def observe(model: Model, ids: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
    """modelkit's states on ``ids`` (one forward pass) by reference name, and the names in the
    order they were computed."""
    parts: dict[str, list[np.ndarray]] = {}

    def observer(layer: int | None, name: str, x: np.ndarray) -> None:
        if name in ("+", "logits"):  # partial sums have no reference; the logits are returned
            return
        if layer is None:
            key = name
        else:
            key = f"layer.{layer}" if name == "output" else f"block.{layer}.{name}"
        parts.setdefault(key, []).append(np.array(x, dtype=np.float32))  # a copy: x is a live buffer

    logits = model.forward(ids, observer=observer)
    states = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}
    states["logits"] = logits
    return states, list(states)


@dataclass
class Row:
    """One compared state."""

    name: str
    max_abs: float
    nmse: float
    diverges: bool

    @property
    def layer(self) -> int | None:
        return int(self.name.split(".")[1]) if self.name.startswith(("layer.", "block.")) else None

    @property
    def label(self) -> str:
        """``layer 3 attn``, ``layer 3 output``, ``embed``, ..."""
        parts = self.name.split(".")
        if parts[0] == "block":
            return f"layer {parts[1]} {parts[2]}"
        if parts[0] == "layer":
            return f"layer {parts[1]} output"
        return self.name


@dataclass
class Comparison:
    """Every compared state in computation order, what could not be compared, and the verdict."""

    rows: list[Row]
    tolerance: float
    missing: list[str] = field(default_factory=list)  # modelkit states the reference lacks
    first: Row | None = None  # the first divergence
    verdict: str = ""


def metrics(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |got - ref|, NMSE) in float64."""
    diff = got.astype(np.float64) - ref.astype(np.float64)
    energy = float(np.sum(ref.astype(np.float64) ** 2))
    err = float(np.sum(diff ** 2))
    nmse = err / energy if energy > 0 else (0.0 if err == 0 else math.inf)
    return float(np.max(np.abs(diff))) if diff.size else 0.0, nmse


def compare(got: dict[str, np.ndarray], order: list[str], ref: Reference,
            tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Compare modelkit's states with the reference's, by name, in modelkit's order."""
    rows, missing = [], []
    for name in order:
        if name not in ref.states:
            missing.append(name)
            continue
        a, b = got[name], ref.states[name]
        if a.shape != b.shape:
            missing.append(name)
            continue
        max_abs, nmse = metrics(a, b)
        rows.append(Row(name, max_abs, nmse, not nmse <= tolerance))
    result = Comparison(rows, tolerance, missing)
    result.first, result.verdict = _first_divergence(rows, tolerance)
    return result


def _stream_rows(rows: list[Row]) -> list[Row]:
    """The rows of the residual stream: embed, each layer's output, final_norm, logits."""
    return [r for r in rows if not r.name.startswith("block.")]


def _first_divergence(rows: list[Row], tolerance: float) -> tuple[Row | None, str]:
    stream = _stream_rows(rows)
    first = next((r for r in stream if r.diverges), None)
    if first is None:
        odd = [r for r in rows if r.diverges]
        if odd:
            names = sorted({r.name.split(".")[2] for r in odd})
            return None, (f"no divergence: every layer agrees (NMSE at most "
                          f"{max((r.nmse for r in stream), default=0.0):.1e}); the output of block(s) "
                          f"{', '.join(names)} is not what the reference's module returns (it adds the "
                          "residual, or a multiplier, itself), so they do not count")
        worst = max((r.nmse for r in rows), default=0.0)
        return None, f"no divergence: every compared state agrees (NMSE at most {worst:.1e} <= {tolerance:.0e})"
    before = [r for r in rows if r.layer is not None and first.layer is not None and r.layer < first.layer]
    agree = ""
    if before:
        top = max(before, key=lambda r: r.max_abs)
        agree = f"; layers 0-{first.layer - 1} agree to {top.max_abs:.1e}" if first.layer > 1 else \
            f"; layer 0 agrees to {top.max_abs:.1e}"
    if first.layer is None:
        where = {"embed": "the embeddings (before layer 0)", "final_norm": "the final norm",
                 "logits": "the head (logits)"}.get(first.name, first.name)
        return first, f"first divergence: {where}: NMSE {first.nmse:.1e}, max |diff| {first.max_abs:.1e}{agree}"
    blocks = [r for r in rows if r.name.startswith(f"block.{first.layer}.")]
    bad = next((r for r in blocks if r.diverges), None)
    if bad is not None:
        name = bad.name.split(".")[2]
        return bad, (f"first divergence: layer {first.layer}, block {name}: NMSE {bad.nmse:.1e}, "
                     f"max |diff| {bad.max_abs:.1e}{agree}")
    why = ("its blocks agree, so the way they are combined differs (flow, residual_multiplier, post-norms)"
           if blocks else "the reference has no per-block states for it")
    return first, (f"first divergence: layer {first.layer} output: NMSE {first.nmse:.1e}, max |diff| "
                   f"{first.max_abs:.1e} ({why}){agree}")


def report_lines(result: Comparison) -> list[str]:
    """The table and the verdict, as printed by ``modelkit compare``."""
    width = max([len(r.label) for r in result.rows] + [5])
    lines = [f"{'state':<{width}}  {'max |diff|':>10}  {'NMSE':>9}"]
    for r in result.rows:
        mark = ""
        if r is result.first:
            mark = "  <- first divergence"
        elif r.diverges and r.layer is not None and (result.first is None or r.layer < (result.first.layer or 0)):
            mark = "  (differs, but its layer agrees: not what the reference's module returns)"
        elif r.diverges:
            mark = "  x"
        lines.append(f"{r.label:<{width}}  {r.max_abs:>10.2e}  {r.nmse:>9.2e}{mark}")
    if result.missing:
        lines.append(f"not compared (not in the reference, or of another shape there): {_summarise(result.missing)}")
    lines.append(result.verdict)
    return lines


def _summarise(names: list[str]) -> str:
    """``block attn_norm (layers 0-3), layer.3`` from a list of state names."""
    by_block: dict[str, list[int]] = {}
    others = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "block":
            by_block.setdefault(parts[2], []).append(int(parts[1]))
        else:
            others.append(name)
    out = []
    for block, layers in by_block.items():
        span = f"layer {layers[0]}" if len(layers) == 1 else f"layers {min(layers)}-{max(layers)}"
        out.append(f"block {block} ({span})")
    return ", ".join(out + others)


def module_names(plan: Any) -> tuple[list[str], dict[str, str], str | None]:
    """Where each of modelkit's states lives in a Hugging Face model, guessed from the plan's
    checkpoint tensor names: (layer modules, block key -> module, final norm module).

    A block's module is the longest dotted prefix its tensors share (one tensor: its name without
    the last part); tensors shared by every layer are left out. A layer's module is the prefix
    its blocks share, cut back to end with the layer's index.
    """
    layers: list[str] = []
    blocks: dict[str, str] = {}
    shared = _shared_sources(plan)
    for i, planned_layer in enumerate(plan.layers):
        prefixes = []
        for name in planned_layer.blocks:
            sources = [s for s in _sources(plan, f"layers.{i}.{name}.") if s not in shared]
            module = _module_of(sources)
            if module:
                blocks[f"block.{i}.{name}"] = module
                prefixes.append(module)
        layer = _common(prefixes) if len(prefixes) > 1 else ""
        parts = layer.split(".") if layer else []
        while parts and parts[-1] != str(i):
            parts.pop()
        layers.append(".".join(parts))
    if not all(layers):
        layers = []
    blocks = {k: v for k, v in blocks.items() if not layers or v != layers[int(k.split(".")[1])]}
    final = _module_of(_sources(plan, "final_norm.")) or None
    return layers, blocks, final


def _sources(plan: Any, prefix: str) -> list[str]:
    out = []
    for canonical, planned in plan.tensors.items():
        if canonical.startswith(prefix) and planned.source is not None:
            out += list(planned.parts) or [planned.source]
    return out


def _shared_sources(plan: Any) -> set[str]:
    """Checkpoint tensors read by more than one layer (GGUF's rope_freqs)."""
    count: dict[str, set[int]] = {}
    for canonical, planned in plan.tensors.items():
        if canonical.startswith("layers.") and planned.source is not None:
            count.setdefault(planned.source, set()).add(int(canonical.split(".")[1]))
    return {s for s, used in count.items() if len(used) > 1}


def _module_of(sources: list[str]) -> str:
    if not sources:
        return ""
    if len(set(sources)) == 1:
        return sources[0].rsplit(".", 1)[0] if "." in sources[0] else ""
    return _common(sources)


def _common(names: list[str]) -> str:
    """The longest dotted prefix of every name."""
    split = [n.split(".") for n in names]
    out = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        out.append(parts[0])
    return ".".join(out)
