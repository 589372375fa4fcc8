"""The observer hook of Model.forward: what it sees, in which order, and that it changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture_path, load_cached, reference

import modelkit


def _record(model, ids, **kw):
    seen: list[tuple] = []

    def observer(layer, name, x):
        seen.append((layer, name, np.array(x)))

    logits = model.forward(ids, observer=observer, **kw)
    return logits, seen


def test_observer_sees_every_block_then_each_layer_in_order() -> None:
    model = load_cached("llama_gqa")
    ids, _ = reference("llama_gqa")
    logits, seen = _record(model, ids)
    assert np.array_equal(logits, model.forward(ids))  # observing changes nothing
    names = [(layer, name) for layer, name, _ in seen]
    per_layer = ["attn_norm", "attn", "+", "mlp_norm", "mlp", "+", "output"]
    assert names == [(None, "embed"), *[(i, n) for i in range(2) for n in per_layer], (None, "final_norm"),
                     (None, "logits")]
    assert all(x.dtype == np.float32 and x.shape == (ids.size, 32) for _, n, x in seen if n != "logits")
    # the layer's output is its input plus both residual branches
    x = {(layer, name): a for layer, name, a in seen}
    np.testing.assert_allclose(x[0, "output"], x[None, "embed"] + x[0, "attn"] + x[0, "mlp"], atol=1e-6)


def test_observer_with_parallel_branches_sees_a_shared_block_once() -> None:
    model = load_cached("falcon_7b")  # one input norm read by both branches
    _, seen = _record(model, reference("falcon_7b")[0])
    layer0 = [name for layer, name, _ in seen if layer == 0]
    assert layer0.count("attn_norm") == 1 and layer0[-1] == "output" and {"attn", "mlp"} <= set(layer0)


def test_observer_on_chunked_prefill_and_last_only() -> None:
    model = modelkit.load(fixture_path("llama_gqa"), prefill_chunk=7)
    ids, _ = reference("llama_gqa")  # 17 tokens: pieces of 7, 7, 3
    logits, seen = _record(model, ids, last_only=True)
    embeds = [x.shape[0] for layer, name, x in seen if name == "embed"]
    assert embeds == [7, 7, 3]
    finals = [x.shape[0] for layer, name, x in seen if name == "final_norm"]
    assert finals == [1] and logits.shape == (1, model.vocab_size)


@pytest.mark.parametrize("name", ["gh_hybrid", "opt_350m_like", "bloom"])
def test_observer_names_follow_the_flow(name: str) -> None:
    model = load_cached(name)
    _, seen = _record(model, reference(name)[0])
    for i, layer in enumerate(model.layers):
        names = [n for lay, n, _ in seen if lay == i]
        assert names[-1] == "output" and set(names[:-1]) - {"+"} == set(layer.blocks)
