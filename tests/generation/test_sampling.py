"""The sampler: each step's candidate set, the drawn distribution, seeds and option defaults."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelkit.errors import GenerationError
from modelkit.generation.sampling import (Sampler, SamplingOptions, apply_repetition_penalty, cumsum_index, draw,
                               min_p_candidates, top_k_candidates, top_p_candidates)


def logits_for(probs: list[float]) -> np.ndarray:
    """float32 logits whose softmax is ``probs``."""
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def as_dict(ids: np.ndarray, p: np.ndarray) -> dict[int, float]:
    return {int(i): float(q) for i, q in zip(ids, p)}


def empirical(sampler: Sampler, logits: np.ndarray, n: int, size: int, history=()) -> np.ndarray:
    counts = np.bincount([sampler(logits, history) for _ in range(n)], minlength=size)
    return counts / n


# ---- single steps ------------------------------------------------------------------------
def test_top_k_keeps_exactly_k_largest():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(1000).astype(np.float32)
    for k in (1, 5, 64, 999):
        ids, vals = top_k_candidates(None, z, k)
        assert ids.size == k
        assert set(ids.tolist()) == set(np.argsort(-z)[:k].tolist())
        np.testing.assert_array_equal(vals, z[ids])
    ids, vals = top_k_candidates(None, z, 0)  # off
    assert ids is None and vals is z


def test_top_p_keeps_smallest_set_reaching_p():
    z = logits_for([0.5, 0.2, 0.15, 0.1, 0.05])
    cases = {0.4: {0}, 0.5: {0}, 0.55: {0, 1}, 0.7: {0, 1}, 0.71: {0, 1, 2}, 0.9: {0, 1, 2, 3}, 0.96: {0, 1, 2, 3, 4}}
    for p, expected in cases.items():
        ids, _ = top_p_candidates(None, z, p)
        assert set(ids.tolist()) == expected, p


def test_top_p_matches_brute_force_on_random_rows():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 5000))  # both the top-64 path and the sorted path
        z = (rng.standard_normal(n) * rng.uniform(0.1, 6)).astype(np.float32)
        p = float(rng.uniform(0.05, 0.999))
        ids, vals = top_p_candidates(None, z, p)
        prob = np.exp(z.astype(np.float64) - z.max())
        prob /= prob.sum()
        order = np.argsort(-prob, kind="stable")
        count = int(np.searchsorted(np.cumsum(prob[order]), p * (1 - 1e-7))) + 1
        assert set(ids.tolist()) == set(order[:count].tolist())
        np.testing.assert_array_equal(vals, z[ids])


def test_min_p_is_relative_to_the_top_token():
    z = logits_for([0.5, 0.2, 0.15, 0.1, 0.05])
    ids, _ = min_p_candidates(None, z, 0.3)  # keep p >= 0.15
    assert set(ids.tolist()) == {0, 1, 2}
    ids, _ = min_p_candidates(None, z, 0.0)
    assert ids is None


def test_repetition_penalty_follows_transformers_rule():
    z = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = apply_repetition_penalty(z, [0, 1, 1], 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, 0.5])
    assert z[0] == 2.0  # the input is untouched


def test_steps_narrow_ids_of_an_existing_candidate_set():
    z = logits_for([0.4, 0.3, 0.2, 0.1])
    ids, vals = top_k_candidates(None, z, 3)
    ids2, _ = min_p_candidates(ids, vals, 0.6)  # keep p >= 0.24 among the top 3
    assert set(ids2.tolist()) == {0, 1}


# ---- the drawn distribution --------------------------------------------------------------
def test_distribution_composes_temperature_top_k_top_p_min_p():
    probs = [0.4, 0.25, 0.15, 0.1, 0.06, 0.04]
    z = logits_for(probs)
    s = Sampler(temperature=1.0, top_k=4)
    got = as_dict(*s.distribution(z))
    total = sum(probs[:4])
    assert got == pytest.approx({i: probs[i] / total for i in range(4)})

    s = Sampler(temperature=1.0, top_p=0.8)
    got = as_dict(*s.distribution(z))
    assert set(got) == {0, 1, 2}  # 0.4 + 0.25 < 0.8 <= 0.8

    s = Sampler(temperature=2.0)
    got = as_dict(*s.distribution(z))
    tempered = np.sqrt(probs) / np.sqrt(probs).sum()
    assert got == pytest.approx(dict(enumerate(tempered)))

    s = Sampler(temperature=1.0, top_k=5, top_p=0.9, min_p=0.3)
    got = as_dict(*s.distribution(z))
    assert set(got) == {0, 1, 2}


def test_sampling_frequencies_follow_the_distribution():
    z = logits_for([0.5, 0.3, 0.15, 0.05])
    s = Sampler(temperature=1.0, top_p=0.9, seed=0)  # keeps 0, 1, 2
    freq = empirical(s, z, 20000, 4)
    expected = np.array([0.5, 0.3, 0.15, 0.0]) / 0.95
    np.testing.assert_allclose(freq, expected, atol=0.015)
    assert freq[3] == 0.0


def test_sampling_frequencies_on_a_large_vocabulary():
    # rows longer than 1024 use the two-level cumulative search
    rng = np.random.default_rng(2)
    z = np.full(5000, -30.0, dtype=np.float32)
    hot = rng.choice(5000, size=4, replace=False)
    z[hot] = np.log([0.1, 0.2, 0.3, 0.4]).astype(np.float32)
    s = Sampler(temperature=1.0, seed=3)
    picks = np.array([s(z) for _ in range(20000)])
    assert set(np.unique(picks).tolist()) <= set(hot.tolist())
    freq = np.array([(picks == h).mean() for h in hot])
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_draw_never_picks_zero_weight():
    w = np.zeros(3000, dtype=np.float32)
    w[[5, 700, 2999]] = [1, 2, 1]
    assert draw(w, 0.0) == 5
    assert draw(w, 1.0 - 1e-12) == 2999
    w2 = np.array([0, 1, 0, 3, 0], dtype=np.float32)
    assert {draw(w2, u) for u in np.linspace(0, 0.999999, 101)} == {1, 3}
    assert cumsum_index(np.ones(2000, np.float32), 1000.0, side="left") == 999
    assert cumsum_index(np.ones(2000, np.float32), 1000.0, side="right") == 1000


def test_repetition_penalty_shifts_the_distribution():
    z = logits_for([0.5, 0.5])
    s = Sampler(temperature=1.0, repetition_penalty=2.0)
    got = as_dict(*s.distribution(z, history=[0]))
    # log 0.5 < 0 is multiplied by 2: weights 0.25 : 0.5
    assert got == pytest.approx({0: 1 / 3, 1: 2 / 3})


# ---- greedy and seeds --------------------------------------------------------------------
def test_temperature_zero_is_argmax():
    rng = np.random.default_rng(4)
    for _ in range(20):
        z = rng.standard_normal(300).astype(np.float32)
        assert Sampler(temperature=0.0, top_k=3, seed=1)(z) == int(np.argmax(z))
    z = np.array([1.0, 3.0, 2.0], dtype=np.float32)
    assert Sampler(temperature=0.0, repetition_penalty=2.0)(z, [1]) == 2  # 3/2 < 2


def test_same_seed_same_tokens_different_seed_different_tokens():
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((50, 320)).astype(np.float32)
    opts = SamplingOptions(temperature=1.0, top_k=50, top_p=0.95, seed=1234)
    s1, s2 = Sampler(opts), Sampler(opts)
    a = [s1(r) for r in rows]
    assert a == [s2(r) for r in rows]
    other = Sampler(opts.with_(seed=99))
    assert [other(r) for r in rows] != a


def test_the_callers_logits_are_not_modified():
    z = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    before = z.copy()
    Sampler(temperature=0.7, top_k=2, top_p=0.9, min_p=0.1, repetition_penalty=1.3, seed=0)(z, [2])
    np.testing.assert_array_equal(z, before)


# ---- options -----------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("temperature", -0.1), ("temperature", math.inf), ("top_k", -1),
                                         ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("min_p", 2.0),
                                         ("repetition_penalty", 0.0)])
def test_bad_options_are_user_errors(field, value):
    with pytest.raises(GenerationError, match=field):
        SamplingOptions(**{field: value})


def test_generation_config_defaults_apply_unless_overridden():
    gc = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05}
    o = SamplingOptions.resolve(gc)
    assert (o.temperature, o.top_p, o.top_k, o.repetition_penalty) == (0.6, 0.9, 20, 1.05)
    o = SamplingOptions.resolve(gc, temperature=0.0, top_k=5, seed=7)
    assert (o.temperature, o.top_p, o.top_k, o.seed) == (0.0, 0.9, 5, 7)
    assert o.greedy


def test_generation_config_without_do_sample_is_greedy():
    gc = {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2}
    o = SamplingOptions.resolve(gc)
    assert o.greedy and o.top_p == 1.0 and o.repetition_penalty == 1.2
    # a user temperature turns sampling on, with the file's other sampling values
    o = SamplingOptions.resolve(gc, temperature=0.8)
    assert (o.temperature, o.top_p) == (0.8, 0.9)
    assert SamplingOptions.resolve({}).greedy
    assert SamplingOptions.resolve({"do_sample": True}).temperature == 1.0


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-39, 1e-38])
def test_a_temperature_float32_cannot_divide_by_is_greedy(temperature: float) -> None:
    """1e-300 is 0 in float32 and would divide by zero: its limit, greedy, is the answer."""
    z = np.random.default_rng(5).normal(size=500).astype(np.float32)
    for options in ({}, {"top_p": 0.5}, {"top_k": 3}, {"min_p": 0.2}, {"repetition_penalty": 1.3}):
        s = Sampler(temperature=temperature, seed=1, **options)
        assert s.options.greedy
        assert s(z, history=[0]) == Sampler(temperature=0.0, **options)(z, history=[0])


@pytest.mark.parametrize("options, needle", [
    ({"temperature": 1e300}, "temperature must be >= 0 and at most"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty must be > 0"),
    ({"repetition_penalty": 1e39}, "repetition_penalty must be > 0"),
])
def test_values_float32_cannot_hold_are_refused(options: dict, needle: str) -> None:
    with pytest.raises(GenerationError, match=needle):
        Sampler(**options)
