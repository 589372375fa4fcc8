"""The KV caches of a running batch side by side (modelkit.nn.kv_pool): each seated cache holds
exactly what it would hold on its own, through joins, leaves, reordering, windows that drop
positions, the pool's growth and a cache that grew in a forward of its own; and batched
attention over the pool gives each row the logits of its sequence alone, in any row order."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ATOL, load_cached, max_abs

from modelkit.nn.kv_cache import KVCache
from modelkit.nn.kv_pool import KVSlotPool

KV, HD = 2, 4


def _held(cache: KVCache) -> tuple[np.ndarray, np.ndarray]:
    n = cache.length - cache.offset
    return cache.k[:, :n].copy(), cache.v[:, :n].copy()


def _same(a: KVCache, b: KVCache) -> None:
    """The same positions, and the same keys and values at every position a query can still
    see (a windowed cache drops when its buffer is full, and a slot's size is the pool's)."""
    assert a.length == b.length
    seen = a.length if a.window is None else min(a.length, a.window)
    for x, y in zip(_held(a), _held(b)):
        np.testing.assert_array_equal(x[:, x.shape[1] - seen:], y[:, y.shape[1] - seen:])


def _step(pool: KVSlotPool, pairs: list[tuple[KVCache, KVCache]], rng: np.random.Generator) -> None:
    """One new position for every pooled cache (in the order given) and the same appended to its twin."""
    caches = [p for p, _ in pairs]
    slots = pool.seat(caches)
    k = rng.standard_normal((len(caches), KV, HD), dtype=np.float32)
    v = rng.standard_normal((len(caches), KV, HD), dtype=np.float32)
    order = np.argsort(slots)
    held = pool.append(k[order], v[order])
    for i, (_, twin) in enumerate(pairs):
        twin.append(k[i:i + 1], v[i:i + 1])
    for i, (cache, twin) in enumerate(pairs):
        assert held[slots[i]] == cache.length - cache.offset
        _same(cache, twin)


def _pair(rng: np.random.Generator, prompt: int, window: int | None = None) -> tuple[KVCache, KVCache]:
    cache, twin = KVCache(KV, HD, window), KVCache(KV, HD, window)
    k = rng.standard_normal((prompt, KV, HD), dtype=np.float32)
    v = rng.standard_normal((prompt, KV, HD), dtype=np.float32)
    cache.append(k, v)
    twin.append(k, v)
    return cache, twin


def test_seated_caches_hold_what_they_would_hold_alone() -> None:
    rng = np.random.default_rng(0)
    pool = KVSlotPool(KV, HD)
    a, b = _pair(rng, 250), _pair(rng, 3)
    w = _pair(rng, 7, window=5)  # drops what no query can see when its slot is full
    for _ in range(10):  # a passes the first 256 positions: the pool grows
        _step(pool, [a, b, w], rng)
    assert pool.kt.shape[3] > 256
    for _ in range(1200):  # the windowed cache fills its slot and drops, again and again
        _step(pool, [w, b], rng)  # a left: arrays of its own, equal to its twin's
        assert w[0].length - w[0].offset <= pool.kt.shape[3]
    assert w[0].offset > 0  # it dropped (b, with no window, grew the slots past 1200)
    _same(*a)
    assert a[0].v.base is not pool.v
    c = _pair(rng, 20)
    for _ in range(3):  # a comes back with a newcomer, in another order
        _step(pool, [c, a, w], rng)
    _same(*b)


def test_a_cache_grown_on_its_own_is_seated_again_from_its_own_arrays() -> None:
    rng = np.random.default_rng(1)
    pool = KVSlotPool(KV, HD)
    a, b = _pair(rng, 5), _pair(rng, 9)
    _step(pool, [a, b], rng)
    k = rng.standard_normal((300, KV, HD), dtype=np.float32)  # past the slot: a re-allocates
    v = rng.standard_normal((300, KV, HD), dtype=np.float32)
    for cache in a:
        cache.append(k, v)
    assert a[0].v.base is not pool.v
    for _ in range(3):
        _step(pool, [b, a], rng)


def _alone_and_read(model, prompts: list[list[int]], fed: list[list[int]]) -> tuple[list, list]:
    """Each sequence's logits decoded alone (one row per fed token), and a fresh cache per
    prompt with the prompt read, for the batch to continue."""
    alone = []
    for prompt, tokens in zip(prompts, fed):
        cache = model.make_cache()
        model.forward(prompt, cache)
        alone.append([model.forward([t], cache)[0] for t in tokens])
    caches = [model.make_cache() for _ in prompts]
    for prompt, cache in zip(prompts, caches):
        model.forward(prompt, cache)
    return alone, caches


@pytest.mark.parametrize("name", ["mistral_window", "gemma2", "gh_hybrid"])
def test_batched_attention_in_any_row_order_equals_each_sequence_alone(name: str) -> None:
    model = load_cached(name)
    rng = np.random.default_rng(2)
    prompts = [[int(t) for t in rng.integers(1, model.vocab_size, n)] for n in (2, 6, 4)]
    fed = [[int(t) for t in rng.integers(1, model.vocab_size, 9)] for _ in prompts]
    alone, caches = _alone_and_read(model, prompts, fed)
    done = [0, 0, 0]
    # rows in several orders, one sequence leaving and coming back
    for order in ([0, 1, 2], [2, 0, 1], [1, 2], [0, 2, 1], [2, 1, 0], [1, 0], [0, 1, 2], [2, 0, 1], [1, 2, 0]):
        order = [i for i in order if done[i] < len(fed[i])]
        logits = model.decode_batch([fed[i][done[i]] for i in order], [caches[i] for i in order])
        for row, i in zip(logits, order):
            assert max_abs(row, alone[i][done[i]]) < ATOL
            done[i] += 1
    model.end_batch()
    for i, cache in enumerate(caches):  # each cache goes on alone as its own
        extra = int(rng.integers(1, model.vocab_size))
        ref = model.make_cache()
        model.forward(prompts[i] + fed[i][:done[i]], ref)
        assert max_abs(model.forward([extra], cache), model.forward([extra], ref)) < ATOL


def test_a_long_cache_among_short_ones_attends_row_by_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool pads every slot to the longest cache: with one long sequence among short ones
    the step goes row by row, each cache in arrays of its own, and the results do not change."""
    from modelkit.nn import kv_pool

    monkeypatch.setattr(kv_pool, "KV_BLOCK", 1)  # the fixture's 64 positions stand for thousands
    model = load_cached("llama_gqa")
    rng = np.random.default_rng(3)
    prompts = [[int(t) for t in rng.integers(1, model.vocab_size, n)] for n in (3, 4, 5)]
    fed = [[int(t) for t in rng.integers(1, model.vocab_size, 30)] for _ in prompts]
    alone, caches = _alone_and_read(model, prompts, fed)
    done = [0, 0, 0]
    attention = [layer.blocks[name] for layer in model.layers for name, kind in layer.kinds.items()
                 if kind == "attention"]
    pooled = []
    for step in range(60):
        # sequence 0 runs ahead alone for 25 steps, then all three go together until it is done
        batch = [0] if 1 <= step <= 25 else [i for i in range(3) if done[i] < len(fed[i])]
        if not batch:
            break
        logits = model.decode_batch([fed[i][done[i]] for i in batch], [caches[i] for i in batch])
        for row, i in zip(logits, batch):
            assert max_abs(row, alone[i][done[i]]) < ATOL
            done[i] += 1
        if len(batch) > 1:
            pooled.append(all(a._pool is not None and len(a._pool.occupants) == len(batch) for a in attention))
    # pooled while even, row by row while one is far ahead, pooled again once it has left
    assert pooled[0] and not pooled[1] and pooled[-1]
    model.end_batch()


def test_the_pool_is_not_used_past_its_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelkit.nn import kv_pool

    rng = np.random.default_rng(4)
    caches = [_pair(rng, 40)[0], _pair(rng, 40)[0]]
    assert kv_pool.pools_well(caches)
    monkeypatch.setattr(kv_pool, "POOL_POSITIONS", 39)
    assert not kv_pool.pools_well(caches)
