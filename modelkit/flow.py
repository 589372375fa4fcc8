"""A layer's steps: the branches of a step, summed, with the blocks they share run once, and
the residual add. Shared by the single-sequence and the batched layer paths."""

from __future__ import annotations

from typing import Callable

import numpy as np


def sum_of_branches(step: list[list[str]], x: np.ndarray,
                    run: Callable[[str, np.ndarray], np.ndarray]) -> np.ndarray:
    """The sum of a step's branches that all read ``x`` (a new array), ``run(name, y)`` running
    one block; branches that start with the same blocks compute them once."""
    memo: dict[tuple[str, ...], np.ndarray] = {}
    total = None
    for branch in step:
        y = x
        for j, name in enumerate(branch):
            key = tuple(branch[: j + 1])
            if key not in memo:
                memo[key] = run(name, y)
            y = memo[key]
        if total is None:
            total = y.copy()
        else:
            total += y
    return total


def run_step(step: list[list[str]], x: np.ndarray, run: Callable[[str, np.ndarray], np.ndarray]) -> np.ndarray:
    """What one step adds to the residual stream ``x``: its one branch's blocks in order, or the
    sum of its parallel branches."""
    if len(step) > 1:
        return sum_of_branches(step, x, run)
    y = x
    for name in step[0]:
        y = run(name, y)
    return y


def add_residual(x: np.ndarray, y: np.ndarray, multiplier: np.float32) -> None:
    """``x += multiplier * y`` in place (``y`` scaled in place unless it is a view of ``x``)."""
    if multiplier != 1.0:
        if np.may_share_memory(y, x):  # a block handed back (a view of) its input
            y = y * multiplier
        else:
            y *= multiplier
    x += y
