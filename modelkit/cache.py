"""What a model remembers about one sequence: each layer's block states and the tokens seen."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Cache:
    """Everything a model remembers about one sequence: per layer, each stateful block's state
    (KV for attention, conv and SSM state for Mamba), and the number of tokens seen."""

    layers: list[dict[str, Any]]
    length: int = 0
    tokens: list[int] = field(default_factory=list)
    # (length, logits row) recorded by keep_logits: what the model predicts after the last token
    _next: tuple[int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def nbytes(self) -> int:
        """Bytes held by the cache arrays (and a kept logits row)."""
        total = 0 if self._next is None else self._next[1].nbytes
        for states in self.layers:
            for s in states.values():
                if hasattr(s, "nbytes"):
                    total += s.nbytes() if callable(s.nbytes) else int(s.nbytes)
        return total

    def keep_logits(self, row: np.ndarray) -> None:
        """Remember ``row`` [vocab], the logits after the cache's last token, so a continuation
        with no new tokens (a prompt already cached whole) can still choose the next one."""
        self._next = (self.length, row)

    def next_logits(self) -> np.ndarray | None:
        """The row given to :meth:`keep_logits`, while the cache still ends where it did."""
        return self._next[1] if self._next is not None and self._next[0] == self.length else None

    def snapshot(self) -> Cache:
        """An independent copy of the state after ``tokens``: continuing either never changes
        the other. Attention keeps only its filled positions (the window's, with a sliding
        window), recurrent layers their conv and SSM states, so ``nbytes()`` is what the
        snapshot holds. Prefix caching keeps snapshots and continues from a snapshot of one."""
        layers = [{name: state.snapshot() if hasattr(state, "snapshot") else copy.deepcopy(state)
                   for name, state in states.items()} for states in self.layers]
        snap = Cache(layers, self.length, list(self.tokens))
        row = self.next_logits()
        if row is not None:
            snap.keep_logits(row.copy())
        return snap
