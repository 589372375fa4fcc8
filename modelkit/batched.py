"""One decoding step of many sequences through a layer: the batched twin of ``Layer.forward``.

Row i of ``x [B, hidden]`` is the newest token of sequence i, at position ``positions[i]``
with its own cache state ``states[i]`` (that sequence's per-layer dict of block states). Every
block runs once over all rows (:meth:`modelkit.nn.block.Block.forward_batch`), so the weights
are read once per step for the whole batch; the residual wiring is the layer's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import out_of_memory
from .flow import add_residual, run_step

if TYPE_CHECKING:
    from .model import Layer


def layer_forward_batch(layer: Layer, x: np.ndarray, states: Sequence[dict[str, Any]],
                        positions: Sequence[int]) -> np.ndarray:
    """``x [B, hidden]`` through ``layer``'s steps and residual adds, as :meth:`Layer.forward`
    does for one sequence; ``x`` is updated in place and returned."""
    def run(name: str, y: np.ndarray) -> np.ndarray:
        return _run(layer, name, y, states, positions)

    for step, after in zip(layer.steps, layer.after_add):
        add_residual(x, run_step(step, x, run), layer.residual)
        for name in after:  # post-norm blocks after the add
            x = _run(layer, name, x, states, positions)
    return x


def _run(layer: Layer, name: str, x: np.ndarray, states: Sequence[dict[str, Any]],
         positions: Sequence[int]) -> np.ndarray:
    """Block ``name`` over every row; a shortage of memory names the layer and block."""
    try:
        return layer.blocks[name].forward_batch(x, [s.get(name) for s in states], positions)
    except MemoryError as exc:
        raise out_of_memory(f"in layer {layer.index}, block {name} ({layer.kinds.get(name, '?')}), "
                            f"decoding a batch of {x.shape[0]} sequences", exc) from None
