"""Many sequences through a layer at once: the batched twins of ``Layer.forward``.

In a decoding step (:func:`layer_forward_batch`) row i of ``x [B, hidden]`` is the newest token
of sequence i, at position ``positions[i]`` with its own cache state ``states[i]`` (that
sequence's per-layer dict of block states). In a batched prefill (:func:`layer_forward_ragged`)
``x`` holds several tokens of each sequence, their rows one sequence after the other, with one
:class:`~modelkit.nn.block.ForwardContext` per sequence. Every block runs once over all rows
(:meth:`~modelkit.nn.block.Block.forward_batch`, :meth:`~modelkit.nn.block.Block.forward_ragged`),
so the weights are read once for the whole batch; the residual wiring is the layer's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import out_of_memory
from .flow import add_residual, run_step
from .nn.block import ForwardContext

if TYPE_CHECKING:
    from .model import Layer


def layer_forward_batch(layer: Layer, x: np.ndarray, states: Sequence[dict[str, Any]],
                        positions: Sequence[int]) -> np.ndarray:
    """``x [B, hidden]`` through ``layer``'s steps and residual adds, as :meth:`Layer.forward`
    does for one sequence; ``x`` is updated in place and returned."""
    def run(name: str, y: np.ndarray) -> np.ndarray:
        try:
            return layer.blocks[name].forward_batch(y, [s.get(name) for s in states], positions)
        except MemoryError as exc:
            raise _short(layer, name, f"decoding a batch of {y.shape[0]} sequences", exc) from None

    return _steps(layer, x, run)


def layer_forward_ragged(layer: Layer, x: np.ndarray, states: Sequence[dict[str, Any]],
                         ctxs: Sequence[ForwardContext]) -> np.ndarray:
    """``x [T1 + ... + TB, hidden]``, the prompt rows of B sequences one after the other
    (sequence i's ``ctxs[i].length`` rows from position ``ctxs[i].pos``), through ``layer`` as
    :meth:`Layer.forward` takes each alone; ``x`` is updated in place and returned."""
    def run(name: str, y: np.ndarray) -> np.ndarray:
        try:
            return layer.blocks[name].forward_ragged(y, [s.get(name) for s in states], ctxs)
        except MemoryError as exc:
            raise _short(layer, name, f"reading {len(ctxs)} prompts ({y.shape[0]:,} tokens)", exc) from None

    return _steps(layer, x, run)


def _steps(layer: Layer, x: np.ndarray, run: Callable[[str, np.ndarray], np.ndarray]) -> np.ndarray:
    """The layer's steps and residual adds over ``x``, ``run(name, y)`` running one block."""
    for step, after in zip(layer.steps, layer.after_add):
        add_residual(x, run_step(step, x, run), layer.residual)
        for name in after:  # post-norm blocks after the add
            x = run(name, x)
    return x


def _short(layer: Layer, name: str, doing: str, exc: MemoryError) -> Exception:
    """A shortage of memory that names the layer, the block and what the batch was doing."""
    return out_of_memory(f"in layer {layer.index}, block {name} ({layer.kinds.get(name, '?')}), {doing}", exc)
