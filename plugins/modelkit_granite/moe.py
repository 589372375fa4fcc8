"""The ``moe`` block kind: top-k routed experts beside an always-on shared gated MLP.

Granite 4.0-H tiny/small layers compute ``shared_mlp(x) + experts(x)``. The router scores every
expert (``x @ router.T``), keeps the top k, and weighs their outputs by a softmax over those k
scores (the same as a softmax over all experts renormalised over the chosen k).

Parameters (local names)::

    gate.weight, up.weight [I_shared, hidden], down.weight [hidden, I_shared]   shared MLP
    router.weight          [E, hidden]
    experts.gate_up.weight [E, 2 * I, hidden]   rows: gate, then up
    experts.gate.weight, experts.up.weight [E, I, hidden]   instead, with fused_experts false
    experts.down.weight    [E, hidden, I]

Hugging Face Granite stores each layer's experts' gate and up projections as one tensor;
llama.cpp's GGUF files store them as two (``ffn_gate_exps``, ``ffn_up_exps``), which the block
joins once when it is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelkit import Block, ConfigError, ForwardContext, GatedMLP, Option, ParamSpec


def route(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The chosen experts [T, k] and their weights [T, k]: softmax over the top-k logits [T, E]."""
    idx = np.argpartition(-logits, top_k - 1, axis=-1)[:, :top_k]  # [T, k], in no particular order
    top = np.take_along_axis(logits, idx, axis=-1)
    top = np.exp(top - top.max(axis=-1, keepdims=True))
    return idx, top / top.sum(axis=-1, keepdims=True)


class MoE(Block):
    """Shared gated MLP plus ``top_k`` of ``num_experts`` routed gated MLPs.

    Options: those of the core's ``gated_mlp`` (the shared MLP), ``num_experts``, ``top_k``
    and ``expert_intermediate_size``; ``activation`` serves both MLPs.
    """

    OPTIONS = {**GatedMLP.OPTIONS,
               "num_experts": Option("int", doc="routed experts", min=1),
               "top_k": Option("int", doc="experts chosen per token", min=1),
               "expert_intermediate_size": Option("int", doc="inner width of each expert", min=1),
               "fused_experts": Option("bool", True, "experts' gate and up are one [E, 2I, hidden] tensor "
                                                      "(false: two [E, I, hidden] tensors)")}
    PARAMETERS = GatedMLP.PARAMETERS + ("router.weight", "experts.gate_up.weight", "experts.gate.weight",
                                        "experts.up.weight", "experts.down.weight")

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        e, k, i, d = opts["num_experts"], opts["top_k"], opts["expert_intermediate_size"], opts["hidden_size"]
        if k > e:
            raise ConfigError(f"moe: top_k {k} is more than the {e} experts")
        experts = ({"experts.gate_up.weight": ParamSpec((e, 2 * i, d))} if opts["fused_experts"] else
                   {"experts.gate.weight": ParamSpec((e, i, d)), "experts.up.weight": ParamSpec((e, i, d))})
        return {**GatedMLP.params(opts), "router.weight": ParamSpec((e, d)), **experts,
                "experts.down.weight": ParamSpec((e, d, i))}

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        shared_options = {name: self.options[name] for name in GatedMLP.OPTIONS}
        self.shared = GatedMLP(shared_options, {name: params.get(name) for name in GatedMLP.PARAMETERS})
        self.act = self.shared.act
        self.top_k = self.options["top_k"]
        self.ei = self.options["expert_intermediate_size"]
        self.router = params["router.weight"]  # [E, hidden]
        if self.options["fused_experts"]:
            self.gate_up = params["experts.gate_up.weight"]  # [E, 2I, hidden]
        else:  # two [E, I, hidden] -> [E, 2I, hidden], gate rows first
            self.gate_up = np.concatenate([params["experts.gate.weight"], params["experts.up.weight"]], axis=1)
        self.down = params["experts.down.weight"]  # [E, hidden, I]

    def forward(self, x: np.ndarray, state: Any, ctx: ForwardContext) -> np.ndarray:
        out = self.shared.forward(x, None, ctx)  # [T, hidden]
        idx, weights = route(x @ self.router.T, self.top_k)  # [T, k] each
        for e in np.unique(idx):
            rows, slot = np.nonzero(idx == e)  # tokens routed to expert e (each at most once)
            h = x[rows] @ self.gate_up[e].T  # [n, hidden] -> [n, 2I]
            a = self.act(h[:, :self.ei])
            a *= h[:, self.ei:]
            y = a @ self.down[e].T  # [n, I] -> [n, hidden]
            y *= weights[rows, slot][:, None]
            out[rows] += y
        return out
