"""The engine under the server: its decoder gives each sequence what the library's generate gives
it alone, and the prefix cache's snapshots are independent, bounded copies."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_cached

from modelkit.serve.engine import Decoder, default_decoder
from modelkit.serve.prefix_cache import PrefixCache

PROMPTS = [[1, 2, 3, 4], [7, 8], [9, 10, 11, 12, 13, 14], [5]]


def run_all(decoder: Decoder, seqs: dict[int, int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {i: [] for i in seqs}
    while decoder.active:
        for event in decoder.step():
            out[seqs[event.seq_id]].append(event.token)
    return out


@pytest.mark.parametrize("fixture", ["llama_gqa", "gh_hybrid"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=3)])
def test_each_sequence_gets_what_it_gets_alone(fixture: str, sampling: dict) -> None:
    model = load_cached(fixture)
    decoder = default_decoder(model, max_batch=4)
    seqs = {decoder.add(p, max_new_tokens=6 + i, **sampling): i for i, p in enumerate(PROMPTS)}
    got = run_all(decoder, seqs)
    for i, prompt in enumerate(PROMPTS):
        assert got[i] == model.generate(prompt, 6 + i, **sampling)


def test_joining_between_steps_and_logprobs() -> None:
    model = load_cached("llama_gqa")
    decoder = default_decoder(model, max_batch=2)
    a = decoder.add(PROMPTS[0], max_new_tokens=5, temperature=0.0, top_logprobs=2)
    first = decoder.step()
    b = decoder.add(PROMPTS[1], max_new_tokens=3, temperature=0.0)
    with pytest.raises(Exception, match="full"):
        decoder.add(PROMPTS[2])
    events = first + [e for _ in range(6) for e in decoder.step()]
    tokens = {a: [e.token for e in events if e.seq_id == a], b: [e.token for e in events if e.seq_id == b]}
    assert tokens[a] == model.generate(PROMPTS[0], 5, temperature=0.0)
    assert tokens[b] == model.generate(PROMPTS[1], 3, temperature=0.0)
    e0 = events[0]
    logits = model.forward(PROMPTS[0])[-1].astype(np.float64)
    ref = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    assert abs(e0.logprob - ref[e0.token]) < 1e-4 and len(e0.top_logprobs) == 2 and e0.top_logprobs[0][0] == e0.token
    assert [e.finish_reason for e in events if e.finished] == ["length", "length"]
    assert decoder.active == []
    decoder.remove(a)
    with pytest.raises(KeyError):
        decoder.cache_of(a)


@pytest.mark.parametrize("fixture", ["llama_gqa", "gh_hybrid"])
def test_a_snapshot_continues_like_the_original(fixture: str) -> None:
    model = load_cached(fixture)
    cache = model.make_cache()
    model.forward([3, 1, 4, 1, 5], cache)
    copy = cache.snapshot()
    a = model.forward([9, 2], cache)
    b = model.forward([9, 2], copy)
    np.testing.assert_array_equal(a, b)
    model.forward([6], cache)  # the copy is untouched by the original's appends, and back
    np.testing.assert_allclose(model.forward([7], copy), model.forward([3, 1, 4, 1, 5, 9, 2, 7])[-1:], atol=1e-4)


def test_prefix_cache_lru_by_bytes() -> None:
    model = load_cached("gh_hybrid")

    def cache_of(ids):
        c = model.make_cache()
        model.forward(ids, c)
        return c

    one = cache_of([1, 2, 3])
    pc = PrefixCache(int(one.nbytes() * 2.5))
    pc.store(one)
    pc.store(cache_of([1, 2, 3, 4, 5]))
    hit = pc.lookup([1, 2, 3, 4, 5, 6])
    assert hit is not None and hit[0] == [1, 2, 3, 4, 5]
    assert pc.lookup([1, 2, 3]) is None  # a prefix shorter than the prompt only: one token is left to read
    pc.store(cache_of([8, 8, 8]))  # over the limit: [1, 2, 3] was used least recently
    stats = pc.stats()
    assert stats["entries"] == 2 and stats["evictions"] == 1 and stats["bytes"] <= pc.max_bytes
    assert pc.lookup([1, 2, 3, 7]) is None and pc.lookup([8, 8, 8, 1])[0] == [8, 8, 8]
    off = PrefixCache(0)
    off.store(one)
    assert off.lookup([1, 2, 3, 4]) is None and off.stats()["entries"] == 0 and off.stats()["misses"] == 0
