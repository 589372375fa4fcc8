"""The ``moe`` block kind: top-k routed experts, optionally beside an always-on gated MLP.

A router scores every expert (``x @ router.T``), each token keeps ``top_k`` of them, and the
block returns the weighted sum of those experts' gated MLPs (plus the shared MLP's output when
there is one: Granite 4.0-H). Two routings, as the references compute them:

* ``softmax_topk`` (Mixtral, Qwen3-MoE): a softmax over all experts, then the k largest
  probabilities; ``renormalize`` divides them by their sum (Mixtral always, Qwen3-MoE with
  ``norm_topk_prob``), else they are used as they are (they sum to less than 1).
* ``topk_softmax`` (GraniteMoe, Granite 4.0-H): the k largest logits, then a softmax over them.

Both equal the same weights up to rounding when renormalising; each follows its reference's
order of operations (float32 throughout, as transformers routes in float32). Ties pick the
lower expert index.

Parameters (local names; ``E`` experts, ``I`` each expert's inner width, ``D`` hidden)::

    router.weight          [E, D]
    experts.gate.weight    [E, I, D]    fused with up into one [E, 2I, D] at load
    experts.up.weight      [E, I, D]
    experts.down.weight    [E, D, I]
    gate.weight, up.weight, down.weight (+ optional biases)   the shared MLP, with shared_intermediate_size
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .activations import ACTIVATIONS
from .block import Block, ForwardContext, ParamSpec
from .linear import linear
from .mlp import ACTIVATION, HIDDEN, GatedMLP
from .options import Option

ROUTINGS = ("softmax_topk", "topk_softmax")


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices [T, k] of each row's k largest scores [T, E], largest first, ties to the lower index."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable (the row maximum subtracted first)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def route(logits: np.ndarray, top_k: int, routing: str, renormalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The chosen experts [T, k] and their weights [T, k] (float32) for router logits [T, E]."""
    logits = logits.astype(np.float32, copy=False)
    if routing == "topk_softmax":
        idx = _top_k(logits, top_k)
        return idx, _softmax(np.take_along_axis(logits, idx, axis=-1))
    if routing != "softmax_topk":
        raise ConfigError(f"moe: unknown routing {routing!r}; expected one of {', '.join(ROUTINGS)}")
    probs = _softmax(logits)  # [T, E]
    idx = _top_k(probs, top_k)  # selected on the probabilities, as the references do
    weights = np.take_along_axis(probs, idx, axis=-1)
    if renormalize:
        weights /= weights.sum(axis=-1, keepdims=True)
    return idx, weights


class MoE(Block):
    """``top_k`` of ``num_experts`` routed gated MLPs, plus an optional always-on gated MLP."""

    TOKENWISE = True  # each row on its own (see Block.forward_batch)

    OPTIONS = {
        "hidden_size": HIDDEN,
        "num_experts": Option("int", doc="routed experts E", min=1),
        "top_k": Option("int", doc="experts each token is routed to", min=1),
        "intermediate_size": Option("int", doc="inner width of each expert I", min=1),
        "routing": Option("str", doc="how router logits become expert weights", choices=ROUTINGS),
        "renormalize": Option("bool", False, "softmax_topk: divide the k weights by their sum"),
        "shared_intermediate_size": Option("int", None, "inner width of an always-on gated MLP beside "
                                                        "the experts; null: none", min=1, nullable=True),
        "activation": ACTIVATION,
    }
    PARAMETERS = ("router.weight", "experts.gate.weight", "experts.up.weight", "experts.down.weight",
                  *GatedMLP.PARAMETERS)

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        e, k, i, d = opts["num_experts"], opts["top_k"], opts["intermediate_size"], opts["hidden_size"]
        if k > e:
            raise ConfigError(f"moe: top_k {k} is more than the {e} experts")
        if opts["renormalize"] and opts["routing"] != "softmax_topk":
            raise ConfigError("moe: renormalize applies to softmax_topk routing (topk_softmax weights "
                              "already sum to 1)")
        out = {"router.weight": ParamSpec((e, d)), "experts.gate.weight": ParamSpec((e, i, d)),
               "experts.up.weight": ParamSpec((e, i, d)), "experts.down.weight": ParamSpec((e, d, i))}
        if opts["shared_intermediate_size"] is not None:
            out.update(GatedMLP.params(cls._shared_options(opts)))
        return out

    @staticmethod
    def _shared_options(opts: dict[str, Any]) -> dict[str, Any]:
        return {"hidden_size": opts["hidden_size"], "intermediate_size": opts["shared_intermediate_size"],
                "activation": opts["activation"]}

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        opts = self.options
        self.top_k, self.routing, self.renormalize = opts["top_k"], opts["routing"], opts["renormalize"]
        self.i = opts["intermediate_size"]
        self.act = ACTIVATIONS[opts["activation"]]
        self.shared = None
        if opts["shared_intermediate_size"] is not None:
            self.shared = GatedMLP(self._shared_options(opts),
                                   {name: params.get(name) for name in GatedMLP.PARAMETERS})
        self.router = params["router.weight"]  # [E, D]
        # gate and up fused per expert, as the references hold them: one product per expert
        self.gate_up = np.concatenate([params["experts.gate.weight"], params["experts.up.weight"]], axis=1)  # [E, 2I, D]
        self.down = params["experts.down.weight"]  # [E, D, I]

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        out = self.shared.forward(x, None, ctx) if self.shared is not None else np.zeros_like(x)  # [T, D]
        idx, weights = route(linear(x, self.router), self.top_k, self.routing, self.renormalize)  # [T, k] each
        if x.shape[0] == 1:
            self._one_token(x[0], idx[0], weights[0], out[0])
        else:
            self._grouped(x, idx, weights, out)
        return out

    def _one_token(self, x: np.ndarray, idx: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
        """Decoding: the k chosen experts' matrix-vector products, nothing sized by E."""
        for e, w in zip(idx.tolist(), weights.tolist()):
            gu = self.gate_up[e] @ x  # [2I, D] @ [D] -> [2I]
            h = self.act(gu[: self.i])
            h *= gu[self.i:]
            y = self.down[e] @ h  # [D, I] @ [I] -> [D]
            y *= np.float32(w)
            out += y

    def _grouped(self, x: np.ndarray, idx: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
        """A prompt: tokens grouped by expert (one sort), one product per expert that was chosen."""
        k = idx.shape[1]
        flat = idx.ravel()  # [T*k] expert of each (token, slot)
        order = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=self.gate_up.shape[0])  # [E]
        starts = np.cumsum(counts) - counts
        rows, w = order // k, weights.ravel()[order]  # token and weight of each assignment, by expert
        for e in np.flatnonzero(counts).tolist():
            chosen = slice(starts[e], starts[e] + counts[e])
            r = rows[chosen]  # tokens routed to expert e (each at most once)
            gu = linear(x[r], self.gate_up[e])  # [n, D] -> [n, 2I]
            h = self.act(gu[:, : self.i])
            h *= gu[:, self.i:]
            y = linear(h, self.down[e])  # [n, I] -> [n, D]
            y *= w[chosen, None]
            out[r] += y
