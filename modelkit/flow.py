"""A layer's steps: the branches of a step, summed, with the blocks they share run once."""

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
