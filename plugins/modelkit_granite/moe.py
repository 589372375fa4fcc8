"""The ``moe`` block kind: top-k routed experts beside an always-on shared gated MLP.

Granite 4.0-H tiny/small layers compute ``shared_mlp(x) + experts(x)``. The router scores every
expert (``x @ router.T``), keeps the top k, and weighs their outputs by a softmax over those k
scores (the same as a softmax over all experts renormalised over the chosen k).

Parameters (local names)::

    gate.weight, up.weight [I_shared, hidden], down.weight [hidden, I_shared]   shared MLP
    router.weight          [E, hidden]
    experts.gate_up.weight [E, 2 * I, hidden]   rows: gate, then up
    experts.down.weight    [E, hidden, I]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelkit.blocks.base import REQUIRED, ForwardContext, ParamSpec
from modelkit.blocks.mlp import GatedMLP
from modelkit.errors import ConfigError


def route(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The chosen experts [T, k] and their weights [T, k]: softmax over the top-k logits [T, E]."""
    idx = np.argpartition(-logits, top_k - 1, axis=-1)[:, :top_k]  # [T, k], in no particular order
    top = np.take_along_axis(logits, idx, axis=-1)
    top = np.exp(top - top.max(axis=-1, keepdims=True))
    return idx, top / top.sum(axis=-1, keepdims=True)


class MoE(GatedMLP):
    """Shared gated MLP plus ``top_k`` of ``num_experts`` routed gated MLPs.

    Options: ``hidden_size``; ``intermediate_size`` (the shared MLP); ``num_experts``,
    ``top_k``, ``expert_intermediate_size``; ``activation`` (both MLPs).
    """

    OPTIONS = {**GatedMLP.OPTIONS, "num_experts": REQUIRED, "top_k": REQUIRED,
               "expert_intermediate_size": REQUIRED}

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        e, k, i, d = opts["num_experts"], opts["top_k"], opts["expert_intermediate_size"], opts["hidden_size"]
        for name, v in (("num_experts", e), ("top_k", k), ("expert_intermediate_size", i)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"moe: {name} must be a positive integer, got {v!r}")
        if k > e:
            raise ConfigError(f"moe: top_k {k} is more than the {e} experts")
        return {**super().params(opts),
                "router.weight": ParamSpec((e, d)),
                "experts.gate_up.weight": ParamSpec((e, 2 * i, d)),
                "experts.down.weight": ParamSpec((e, d, i))}

    def setup(self) -> None:
        super().setup()
        self.top_k = self.opts["top_k"]
        self.ei = self.opts["expert_intermediate_size"]

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        out = super().forward(x, state, ctx)  # the shared MLP, [T, hidden]
        p = self.p
        idx, weights = route(x @ p["router.weight"].T, self.top_k)  # [T, k] each
        for e in np.unique(idx):
            rows, slot = np.nonzero(idx == e)  # tokens routed to expert e (each at most once)
            h = x[rows] @ p["experts.gate_up.weight"][e].T  # [n, hidden] -> [n, 2I]
            a = self.act(h[:, :self.ei])
            a *= h[:, self.ei:]
            y = a @ p["experts.down.weight"][e].T  # [n, I] -> [n, hidden]
            y *= weights[rows, slot][:, None]
            out[rows] += y
        return out
