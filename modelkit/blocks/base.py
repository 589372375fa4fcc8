"""The block contract: what a block kind declares and implements.

A block kind is a class. A mapping names it in ``layers.blocks.<name>.kind`` and gives its
options; the loader asks the class which parameters it needs (with shapes), loads them, then
builds one instance per layer. At run time the model calls ``forward(x, state, ctx)`` with the
hidden states ``x [T, hidden]`` (float32) and the block's own cache state (``None`` for
stateless blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

REQUIRED = object()  # marks an option without a default


@dataclass(frozen=True)
class ParamSpec:
    """A parameter a block needs: its expected shape and whether the checkpoint must supply it."""

    shape: tuple[int, ...]
    required: bool = True


@dataclass
class ForwardContext:
    """What one ``Model.forward`` call shares with every block.

    ``pos`` is the position of the first of the ``length`` tokens in this call (the cache length
    before it). ``shared`` lets blocks memoise per-call work (rotary tables) across layers.
    """

    pos: int
    length: int
    shared: dict[str, Any] = field(default_factory=dict)


class Block:
    """Base class of every block kind.

    Subclasses set ``OPTIONS`` (option name -> default; a default may be a ``$expression`` over
    the resolved config, or :data:`REQUIRED`) and implement :meth:`params` and :meth:`forward`.
    ``self.opts`` holds the resolved options and ``self.p`` the loaded parameters (float32, or
    ``None`` for an optional parameter the checkpoint lacks).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, opts: dict[str, Any], params: dict[str, np.ndarray | None]):
        self.opts = opts
        self.p = params
        self.setup()

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        """The parameters this block needs, by local name (``q.weight``), with shapes."""
        return {}

    def setup(self) -> None:
        """Prepare fused or re-laid-out weights once, after loading."""

    def new_state(self) -> Any:
        """A fresh per-sequence cache state, or ``None`` for a stateless block."""
        return None

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        """Map ``x [T, hidden]`` to ``[T, hidden]``, reading and extending ``state``."""
        raise NotImplementedError
