"""Token log-probabilities: the stable log-softmax, model.score, and logprobs in generation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fixture_path, load_cached, reference

import modelkit
from modelkit.evaluation.logprobs import chosen_logprobs, log_normalizer, log_softmax, token_logprob


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def test_log_softmax_is_float32_stable_and_normalised() -> None:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((5, 1000)) * 8).astype(np.float32)
    lp = log_softmax(logits)
    assert lp.dtype == np.float32 and lp.shape == logits.shape
    np.testing.assert_allclose(lp, log_softmax64(logits), atol=2e-5)
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-5)
    # huge logits: exp would overflow without taking the maximum out first
    big = np.array([[3e38, 0.0, -3e38], [88.0, 89.0, 90.0]], dtype=np.float32)
    out = log_softmax(big)
    assert np.isfinite(out[:, :2]).all() and out[0, 0] == 0.0
    assert log_normalizer(big).dtype == np.float32


def test_non_finite_logits_are_refused() -> None:
    with pytest.raises(modelkit.GenerationError, match="NaN or infinite"):
        log_normalizer(np.array([[0.0, np.nan]], dtype=np.float32))


def test_chosen_logprobs_and_top_k() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 0.0]], dtype=np.float32)
    want = log_softmax64(logits)[0]
    assert chosen_logprobs(logits, [2])[0] == pytest.approx(want[2], abs=1e-6)
    info = token_logprob(logits[0], 2, 3)
    assert info.token == 2 and info.logprob == pytest.approx(want[2], abs=1e-6)
    assert [t for t, _ in info.top] == [1, 2, 0]
    assert token_logprob(logits[0], 0, 0).top == ()
    assert len(token_logprob(logits[0], 0, 99).top) == 4  # at most the vocabulary


@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "gh_hybrid"])
def test_score_equals_float64_log_softmax_of_the_reference_logits(name: str) -> None:
    model = load_cached(name)
    ids, ref = reference(name)
    scores = model.score(ids)
    assert scores.logprobs.dtype == np.float32 and scores.logprobs.shape == (ids.size - 1,)
    want = log_softmax64(ref)[np.arange(ids.size - 1), ids[1:]]
    np.testing.assert_allclose(scores.logprobs, want, atol=2e-4)
    assert scores.nll == pytest.approx(-want.sum(), rel=1e-4)
    assert scores.perplexity == pytest.approx(np.exp(-want.mean()), rel=1e-4)


def test_score_of_text_in_small_pieces() -> None:
    model = load_cached("llama_gqa")
    text = "The quick brown fox jumps over the lazy dog, twice."
    ids = model.tokenizer.encode(text)
    whole = model.score(text)
    assert whole.ids.tolist() == ids
    pieced = modelkit.load(fixture_path("llama_gqa"), prefill_chunk=3).score(ids)
    np.testing.assert_allclose(pieced.logprobs, whole.logprobs, atol=2e-5)


def test_score_edge_cases() -> None:
    model = load_cached("llama_gqa")
    assert model.score([5]).logprobs.size == 0 and np.isnan(model.score([5]).perplexity)
    assert model.score([]).logprobs.size == 0
    with pytest.raises(modelkit.GenerationError, match="outside the vocabulary"):
        model.score([1, 999])
    with pytest.raises(modelkit.GenerationError, match="1-D"):
        model.score([[1, 2]])
    gpt2 = load_cached("gpt2")  # 64 learned positions
    with pytest.raises(modelkit.GenerationError, match="learned positions"):
        gpt2.score(list(range(80)))


def test_generate_with_logprobs_matches_score() -> None:
    model = load_cached("llama_gqa")
    prompt = [int(t) for t in reference("llama_gqa")[0][:5]]
    plain = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    ids, scored = model.generate(prompt, max_new_tokens=6, temperature=0.0, logprobs=3)
    assert ids == plain and [s.token for s in scored] == ids
    want = model.score(prompt + ids).logprobs[len(prompt) - 1:]
    np.testing.assert_allclose([s.logprob for s in scored], want, atol=2e-5)
    for s in scored:  # greedy: the chosen token is the best alternative
        assert len(s.top) == 3 and s.top[0][0] == s.token
        assert [lp for _, lp in s.top] == sorted((lp for _, lp in s.top), reverse=True)


def test_logprobs_are_the_models_own_distribution_when_sampling() -> None:
    model = load_cached("llama_gqa")
    prompt = [1, 2, 3]
    ids, scored = model.generate(prompt, max_new_tokens=5, temperature=1.7, top_k=5, seed=3, logprobs=0)
    assert ids == model.generate(prompt, max_new_tokens=5, temperature=1.7, top_k=5, seed=3)
    want = model.score(prompt + ids).logprobs[len(prompt) - 1:]
    np.testing.assert_allclose([s.logprob for s in scored], want, atol=2e-5)
    assert all(s.top == () for s in scored)


def test_stream_pieces_carry_one_logprob_per_id() -> None:
    model = load_cached("llama_gqa")
    prompt = model.tokenizer.encode("Once upon a time")
    pieces = list(model.stream(prompt, max_new_tokens=8, temperature=0.0, logprobs=2))
    assert all(len(p.logprobs) == len(p.ids) for p in pieces)
    assert [s.token for p in pieces for s in p.logprobs] == [i for p in pieces for i in p.ids]
    assert all(p.logprobs == () for p in model.stream(prompt, max_new_tokens=3, temperature=0.0))
    ids, scored = model.generate(prompt, max_new_tokens=8, temperature=0.0, logprobs=1, stop_strings=["zz"])
    assert [s.token for s in scored] == ids


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_bad_logprobs_values(bad) -> None:
    with pytest.raises(modelkit.GenerationError, match="logprobs"):
        load_cached("llama_gqa").generate([1, 2], max_new_tokens=2, logprobs=bad)
