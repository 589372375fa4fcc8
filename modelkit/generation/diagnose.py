"""Saying where a forward pass went non-finite, after the fact.

Generation checks only the logits it picks from (one value, or one maximum per row). When one is
NaN or infinite, :func:`explain_non_finite` re-runs the sequence with an observer on every block's
output and names the first that is not finite, and why: its weights hold NaN or inf (what
``modelkit validate --values`` lists), or its inputs and weights are finite and the arithmetic
overflowed float32 (weights near 3.4e38, a multiplier of 1e30, activations that grow layer
after layer). The re-run costs one forward pass, paid only when generation has already failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..model import Model

LEAD = "the model produced logits that are NaN or infinite, so no token can be chosen"


class _Found(Exception):
    """The first non-finite output: where it appeared."""

    def __init__(self, layer: int | None, name: str):
        super().__init__(name)
        self.layer, self.name = layer, name


def _check_finite(layer: int | None, name: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise _Found(layer, name)


def _non_finite(arrays: Sequence[Any]) -> bool:
    return any(isinstance(a, np.ndarray) and a.dtype.kind == "f" and not np.isfinite(a).all() for a in arrays)


def _weights(obj: Any, depth: int = 0) -> list[np.ndarray]:
    """Every array a block holds (its weights), looking one level into blocks it contains
    (a MoE block's shared MLP)."""
    out: list[np.ndarray] = []
    for value in vars(obj).values():
        if isinstance(value, np.ndarray):
            out.append(value)
        elif depth == 0 and hasattr(value, "__dict__") and hasattr(value, "forward"):
            out.extend(_weights(value, 1))
    return out


def _model_part(model: Model, name: str, ids: np.ndarray) -> tuple[str, list[Any]]:
    """How to name a model-level stage, and the weights it reads."""
    if name == "embed":
        rows = model.embed[np.unique(ids)]
        norm = _weights(model.embed_norm) if model.embed_norm is not None else []
        return ("the token embedding" + (" and its norm" if norm else ""),
                [rows, model.embed_proj, None if model.pos_embed is None else model.pos_embed[:ids.size], *norm])
    if name == "logits":
        return "the output head", [model.head, model.head_bias, model.head_proj]
    block = model.final_norm
    return f"the {name.replace('_', ' ')}", _weights(block) if block is not None else []


def explain_non_finite(model: Model, ids: Sequence[int]) -> str:
    """One line on why the logits after ``ids`` (every token the cache has seen) are not
    finite: the first stage whose output is NaN or infinite when the sequence is re-run from an
    empty cache, and whether its weights or its arithmetic made it so."""
    arr = np.asarray(list(ids), dtype=np.int64)
    try:
        model.forward(arr, model.make_cache(), observer=_check_finite)
    except _Found as found:
        if found.layer is None:
            what, arrays = _model_part(model, found.name, arr)
        elif found.name in ("+", "output"):
            return (f"{LEAD}: the residual stream overflowed float32 in layer {found.layer} (each block's "
                    f"output is finite, their sum is not: activations too large)")
        else:
            layer = model.layers[found.layer]
            kind = layer.kinds.get(found.name, type(layer.blocks[found.name]).__name__)
            what, arrays = f"layer {found.layer}, block {found.name} ({kind})", _weights(layer.blocks[found.name])
        if _non_finite(arrays):
            return (f"{LEAD}: {what} has NaN or infinite weights (`modelkit validate --values` lists the "
                    f"tensors)")
        return (f"{LEAD}: the arithmetic overflowed float32 in {what}: its inputs and weights are finite, "
                f"its output is not (values too large for float32, such as weights near 3.4e38 or a huge "
                f"multiplier)")
    return (f"{LEAD}; re-run from the start, the sequence stays finite, so float32 rounding sits at the edge "
            f"of its range here (weights or multipliers near 3.4e38?)")
