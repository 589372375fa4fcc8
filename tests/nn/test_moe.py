"""The core's moe block: both routings against float64 loops, the decode and prompt paths, and
options that cannot work together."""

from __future__ import annotations

import numpy as np
import pytest

import modelkit
from modelkit.nn.block import ForwardContext
from modelkit.nn.moe import MoE, route


def _reference_route(logits: np.ndarray, k: int, routing: str, renormalize: bool) -> list[dict[int, float]]:
    """Per token, expert -> weight, in float64, one token and one expert at a time."""
    out = []
    for row in logits.astype(np.float64):
        order = sorted(range(len(row)), key=lambda e: (-row[e], e))[:k]
        if routing == "topk_softmax":
            z = np.exp(row[order] - row[order].max())
            weights = z / z.sum()
        else:
            p = np.exp(row - row.max())
            p /= p.sum()
            weights = p[order] / (p[order].sum() if renormalize else 1.0)
        out.append(dict(zip(order, weights.tolist())))
    return out


@pytest.mark.parametrize("routing,renormalize", [("softmax_topk", True), ("softmax_topk", False),
                                                 ("topk_softmax", False)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_route_matches_a_float64_loop(routing: str, renormalize: bool, k: int) -> None:
    logits = (2 * np.random.default_rng(k).standard_normal((9, 6))).astype(np.float32)
    idx, w = route(logits, k, routing, renormalize)
    assert idx.shape == w.shape == (9, k) and w.dtype == np.float32
    for t, expected in enumerate(_reference_route(logits, k, routing, renormalize)):
        assert idx[t].tolist() == list(expected)  # largest first
        np.testing.assert_allclose(w[t], list(expected.values()), rtol=2e-6)
        if routing == "topk_softmax" or renormalize:
            assert abs(float(w[t].sum()) - 1) < 1e-6
    if routing == "softmax_topk" and not renormalize and k < 6:
        assert (w.sum(1) < 1).all()  # Qwen3-MoE without norm_topk_prob: the k probabilities as they are


def test_routings_agree_when_renormalised_and_ties_pick_the_lower_index() -> None:
    logits = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    a = route(logits, 3, "softmax_topk", True)
    b = route(logits, 3, "topk_softmax")
    assert (a[0] == b[0]).all()
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)
    tied = np.array([[0.5, 2.0, 2.0, 2.0, -1.0]], np.float32)
    assert route(tied, 2, "topk_softmax")[0].tolist() == [[1, 2]]
    assert route(tied, 2, "softmax_topk")[0].tolist() == [[1, 2]]


def _block(shared: int | None, routing: str = "softmax_topk", renormalize: bool = True, e: int = 6,
           k: int = 2, seed: int = 0) -> tuple[MoE, dict[str, np.ndarray]]:
    d, i = 8, 5
    rng = np.random.default_rng(seed)
    opts = MoE.resolve_options(hidden_size=d, num_experts=e, top_k=k, intermediate_size=i, routing=routing,
                               renormalize=renormalize, shared_intermediate_size=shared)
    params = {name: (0.4 * rng.standard_normal(spec.shape)).astype(np.float32)
              for name, spec in MoE.params(opts).items() if spec.required}
    return MoE(opts, params), params


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _reference_moe(x: np.ndarray, p: dict[str, np.ndarray], k: int, routing: str, renormalize: bool) -> np.ndarray:
    """The block in float64, token by token, expert by expert."""
    p = {n: a.astype(np.float64) for n, a in p.items()}
    out = np.zeros(x.shape, np.float64)
    logits = x.astype(np.float64) @ p["router.weight"].T
    for t, chosen in enumerate(_reference_route(logits, k, routing, renormalize)):
        xt = x[t].astype(np.float64)
        if "gate.weight" in p:
            out[t] += p["down.weight"] @ (_silu(p["gate.weight"] @ xt) * (p["up.weight"] @ xt))
        for e, w in chosen.items():
            h = _silu(p["experts.gate.weight"][e] @ xt) * (p["experts.up.weight"][e] @ xt)
            out[t] += w * (p["experts.down.weight"][e] @ h)
    return out


@pytest.mark.parametrize("shared", [None, 7])
@pytest.mark.parametrize("routing,renormalize", [("softmax_topk", True), ("softmax_topk", False),
                                                 ("topk_softmax", False)])
def test_block_matches_a_float64_loop(shared: int | None, routing: str, renormalize: bool) -> None:
    block, params = _block(shared, routing, renormalize)
    x = np.random.default_rng(5).standard_normal((11, 8)).astype(np.float32)
    expected = _reference_moe(x, params, 2, routing, renormalize)
    prompt = block.forward(x, None, ForwardContext(0, 11))
    assert prompt.dtype == np.float32 and prompt.shape == x.shape
    np.testing.assert_allclose(prompt, expected, atol=2e-6)
    one = np.concatenate([block.forward(x[t:t + 1], None, ForwardContext(t, 1)) for t in range(11)])
    np.testing.assert_allclose(one, prompt, atol=1e-6)


class _Counting:
    """Stands in for an [E, ...] weight array and records which experts are read."""

    def __init__(self, array: np.ndarray):
        self.array, self.seen = array, []
        self.shape = array.shape

    def __getitem__(self, e: int) -> np.ndarray:
        self.seen.append(e)
        return self.array[e]


def test_decoding_a_token_reads_only_its_experts() -> None:
    block, _ = _block(None, e=16, k=2)
    x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)
    expected = block.forward(x, None, ForwardContext(0, 1))
    block.gate_up, block.down = _Counting(block.gate_up), _Counting(block.down)
    got = block.forward(x, None, ForwardContext(0, 1))
    np.testing.assert_array_equal(got, expected)
    chosen = route(x @ block.router.T, 2, "softmax_topk", True)[0][0].tolist()
    assert block.gate_up.seen == chosen and block.down.seen == chosen


def test_a_prompt_runs_each_chosen_expert_once() -> None:
    block, _ = _block(None, e=16, k=2)
    x = np.random.default_rng(3).standard_normal((40, 8)).astype(np.float32)
    block.gate_up = _Counting(block.gate_up)
    block.forward(x, None, ForwardContext(0, 40))
    chosen = np.unique(route(x @ block.router.T, 2, "softmax_topk", True)[0])
    assert block.gate_up.seen == chosen.tolist()


def test_options_that_do_not_work_together() -> None:
    with pytest.raises(modelkit.ConfigError, match="top_k 5 is more than the 4 experts"):
        MoE.resolve_options(hidden_size=8, num_experts=4, top_k=5, intermediate_size=4, routing="topk_softmax")
    with pytest.raises(modelkit.ConfigError, match="renormalize applies to softmax_topk"):
        MoE.resolve_options(hidden_size=8, num_experts=4, top_k=2, intermediate_size=4, routing="topk_softmax",
                            renormalize=True)
    with pytest.raises(modelkit.ConfigError, match="routing must be one of"):
        MoE.resolve_options(hidden_size=8, num_experts=4, top_k=2, intermediate_size=4, routing="sigmoid")


def test_shared_mlp_parameters_only_with_its_width() -> None:
    base = dict(hidden_size=8, num_experts=4, top_k=2, intermediate_size=4, routing="softmax_topk")
    assert "gate.weight" not in MoE.params(MoE.resolve_options(**base))
    shared = MoE.params(MoE.resolve_options(**base, shared_intermediate_size=6))
    assert shared["gate.weight"].shape == (6, 8) and shared["experts.gate.weight"].shape == (4, 4, 8)
    assert not shared["gate.bias"].required
