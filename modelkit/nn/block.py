"""The block contract: what a block kind declares and implements.

A block kind is a class. A mapping names it in ``layers.blocks.<name>.kind`` and gives its
options; the planner resolves and checks them against the kind's declared :class:`Option`
specs, asks the class which parameters it needs (with shapes) and, once every tensor is read,
builds one instance per layer. At run time the model calls ``forward(x, state, ctx)`` with the
hidden states ``x [T, hidden]`` (float32) and the block's own cache state (``None`` for
stateless blocks). A batched decoding step calls ``forward_batch(x, states, positions)`` with one
token of each of B sequences, ``x [B, hidden]``, and each sequence's own state and position; a
batched prefill calls ``forward_ragged(x, states, ctxs)`` with several tokens of each of B
sequences, their rows one sequence after the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from .options import REQUIRED, Option

__all__ = ["Block", "ParamSpec", "ForwardContext", "Option", "REQUIRED", "Observer", "row_spans"]

# a diagnostic callback: (layer index or None, block name, the block's output)
Observer = Callable[[Optional[int], str, np.ndarray], None]


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
    ``observer``, when set, sees every block's output (see :meth:`modelkit.Model.forward`).
    """

    pos: int
    length: int
    shared: dict[str, Any] = field(default_factory=dict)
    observer: Observer | None = None


def row_spans(ctxs: Sequence[ForwardContext]) -> list[tuple[int, int]]:
    """Where each sequence's rows lie in a ragged batch: ``(start, stop)`` per context, the
    sequences' ``length`` rows one after the other."""
    spans, start = [], 0
    for ctx in ctxs:
        spans.append((start, start + ctx.length))
        start += ctx.length
    return spans


class Block:
    """Base class of every block kind.

    Subclasses declare ``OPTIONS`` (option name -> :class:`Option`: type, bounds, default; a
    default may be a ``$expression`` over the resolved config) and ``PARAMETERS`` (every local
    parameter name the kind can ask for), and implement :meth:`params`, :meth:`build` and
    :meth:`forward`. Options arrive resolved and checked (``self.options``); :meth:`build`
    turns the loaded parameters (float32 arrays, ``None`` for an optional one the checkpoint
    lacks) into the block's own named fields.
    """

    OPTIONS: ClassVar[dict[str, Option]] = {}
    PARAMETERS: ClassVar[tuple[str, ...]] = ()
    # True for a stateless block whose every output row depends on its input row alone (norms,
    # MLPs, experts): a batched step then runs it once over all sequences' rows
    TOKENWISE: ClassVar[bool] = False
    # True for a kind whose long-prompt work all splits into pieces (rows, attention's query
    # blocks; see modelkit.nn.parallel): a model made only of such kinds holds BLAS to one
    # thread for a long prompt and runs the pieces on every core
    SPREADS: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any], params: Mapping[str, np.ndarray | None]):
        self.options = dict(options)
        self.build(dict(params))

    @classmethod
    def resolve_options(cls, **given: Any) -> dict[str, Any]:
        """Options for building a block by hand (tests, notebooks): the given values over the
        kind's literal defaults, each checked as the planner checks a mapping's. Options whose
        default is a ``$expression`` (or REQUIRED) must be given."""
        from ..errors import ConfigError

        unknown = sorted(set(given) - set(cls.OPTIONS))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no option(s) {', '.join(unknown)}")
        out = {}
        for name, option in cls.OPTIONS.items():
            if name in given:
                value = given[name]
            elif option.default is REQUIRED or (isinstance(option.default, str) and option.default.startswith("$")):
                raise ConfigError(f"{cls.__name__}: option '{name}' needs a value")
            else:
                value = option.default
            out[name] = option.check(value, f"{cls.__name__}.{name}")
        cls.params(out)  # options that do not work together
        return out

    @classmethod
    def params(cls, options: Mapping[str, Any]) -> dict[str, ParamSpec]:
        """The parameters this block needs with these options, by local name (``q.weight``).

        Raise :class:`modelkit.ConfigError` for options that cannot work together (heads that
        do not divide); single options are already checked against their :class:`Option`."""
        return {}

    @classmethod
    def width(cls, options: Mapping[str, Any]) -> int | None:
        """The width of the hidden states the block reads and writes (checked against the
        model's hidden_size at planning), or None when the kind does not say."""
        value = options.get("hidden_size", options.get("dim"))
        return value if isinstance(value, int) else None

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        """Keep the loaded parameters as fields (fused or re-laid-out as the kind needs)."""

    def new_state(self) -> Any:
        """A fresh per-sequence cache state, or ``None`` for a stateless block."""
        return None

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        """Map ``x [T, hidden]`` to ``[T, hidden]``, reading and extending ``state``."""
        raise NotImplementedError

    def end_batch(self) -> None:
        """The running batch has no sequence left: drop anything kept for batched steps (a kind
        that seats its rows' states side by side gives them their own memory back)."""

    def forward_batch(self, x: np.ndarray, states: Sequence[Any], positions: Sequence[int]) -> np.ndarray:
        """One decoding step of B sequences at once: ``x [B, hidden]`` holds one token of each,
        row i at position ``positions[i]`` of its sequence with its own cache state
        ``states[i]``; returns ``[B, hidden]``.

        Each row must equal ``forward(x[i:i+1], states[i], ForwardContext(positions[i], 1))``,
        which is what this default does, row by row (so any block kind is correct in a batch).
        A :attr:`TOKENWISE` block runs once over every row; kinds that can share their weight
        reads across rows while keeping per-row state (attention, Mamba) override this."""
        if self.TOKENWISE:
            return self.forward(x, None, ForwardContext(0, x.shape[0]))
        out = np.empty_like(x)
        for i, (state, pos) in enumerate(zip(states, positions)):
            out[i] = self.forward(x[i:i + 1], state, ForwardContext(int(pos), 1))[0]
        return out

    def forward_ragged(self, x: np.ndarray, states: Sequence[Any], ctxs: Sequence[ForwardContext]) -> np.ndarray:
        """Several tokens of each of B sequences at once (a batched prefill): ``x [T1 + ... +
        TB, hidden]`` holds sequence i's ``ctxs[i].length`` rows from position ``ctxs[i].pos``,
        the sequences one after the other (:func:`row_spans`), each with its own cache state
        ``states[i]``; returns the same shape.

        Each sequence's rows must equal ``forward(its rows, states[i], ctxs[i])``, which is what
        this default does, one sequence after the other; a :attr:`TOKENWISE` block runs once over
        every row. Kinds that share their weight reads across sequences (attention, Mamba2)
        override this."""
        if self.TOKENWISE:
            return self.forward(x, None, ForwardContext(0, x.shape[0]))
        out = np.empty_like(x)
        for (start, stop), state, ctx in zip(row_spans(ctxs), states, ctxs):
            out[start:stop] = self.forward(x[start:stop], state, ctx)
        return out
