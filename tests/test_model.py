"""The core's golden fixtures beyond the model contract (test_model_contract.py), and the
library API around a loaded model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (ATOL, FIXTURES, SHIPPED_FIXTURES, copy_fixture, edit_config, fixture_path,
                      load_cached, max_abs, reference)

import modelkit

NAMES = list(SHIPPED_FIXTURES)
# same-model consistency (cache vs no cache) is far tighter than the reference tolerance
SELF_ATOL = 2e-5


def test_mistral_fixture_exercises_the_window(tmp_path) -> None:
    """T=20 > sliding_window 5, and the window changes the result (so the test above tests it)."""
    cfg = json.loads((fixture_path("mistral_window") / "config.json").read_text())
    ids, ref = reference("mistral_window")
    assert cfg["sliding_window"] == 5 and ids.size == 20
    folder = copy_fixture("mistral_window", tmp_path / "nowindow")
    edit_config(folder, sliding_window=None)
    unwindowed = modelkit.load(folder).forward(ids)
    assert max_abs(unwindowed[:5], ref[:5]) < ATOL  # identical while T <= window
    assert max_abs(unwindowed, ref) > 1e-2


def test_fixtures_cover_every_shipped_architecture() -> None:
    from modelkit.builtin import SHIPPED

    shipped = set(SHIPPED)
    assert shipped <= set(modelkit.architectures())
    assert set(SHIPPED_FIXTURES.values()) == shipped
    for name in SHIPPED_FIXTURES:
        assert (FIXTURES / name / "ref.npz").is_file()


# ---- library API -----------------------------------------------------------------------------

def test_forward_without_cache_does_not_keep_state() -> None:
    model = load_cached("llama_gqa")
    ids, _ = reference("llama_gqa")
    a = model.forward(ids)
    b = model.forward(ids)
    assert max_abs(a, b) == 0.0
    cache = model.make_cache()
    assert cache.length == 0 and cache.tokens == []
    assert len(cache.layers) == len(model.layers)


def test_forward_rejects_bad_ids() -> None:
    model = load_cached("llama_gqa")
    with pytest.raises(modelkit.GenerationError, match="outside the vocabulary"):
        model.forward([1, model.vocab_size])
    with pytest.raises(modelkit.GenerationError):
        model.forward([[1, 2]])
    assert model.forward([]).shape == (0, model.vocab_size)


def test_learned_positions_bound_the_length() -> None:
    model = load_cached("gpt2")  # n_positions 64
    cache = model.make_cache()
    model.forward(list(range(1, 61)), cache)
    with pytest.raises(modelkit.GenerationError, match="learned positions"):
        model.forward(list(range(1, 6)), cache)
    with pytest.raises(modelkit.GenerationError, match="learned positions"):
        model.forward([1] * 65)


def _greedy_by_hand(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(model.forward(ids)[-1])))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "falcon_rw"])
def test_generate_is_greedy(name: str) -> None:
    model = load_cached(name)
    prompt = [int(t) for t in reference(name)[0][:6]]
    expected = _greedy_by_hand(model, prompt, 8)
    eos = 0  # every fixture: eos_token_id 0 in config.json and generation_config.json
    if eos in expected:  # generation stops at the first EOS, which it includes
        expected = expected[: expected.index(eos) + 1]
    out = model.generate(prompt, max_new_tokens=8, temperature=0.0)
    assert isinstance(out, list) and all(type(t) is int for t in out)
    assert out == expected
    assert model.generate(prompt, max_new_tokens=8) == expected  # fixtures do not set do_sample


def test_generate_stops_at_eos_and_includes_it() -> None:
    import modelkit.loading

    model = modelkit.loading.load(fixture_path("llama_gqa"))  # a private copy: we edit its settings
    prompt = [int(t) for t in reference("llama_gqa")[0][:6]]
    free = _greedy_by_hand(model, prompt, 6)
    stop_at = next(n for n in range(1, 6) if free[n] not in free[:n])
    model.generation_config["eos_token_id"] = [free[stop_at]]
    out = model.generate(prompt, max_new_tokens=10)
    assert out == free[: stop_at + 1]
    assert out[-1] == free[stop_at]
    with pytest.raises(modelkit.GenerationError):
        model.generate([], max_new_tokens=3)
    with pytest.raises(modelkit.GenerationError):
        model.generate(prompt, max_new_tokens=0)


def test_generate_with_temperature_is_seeded() -> None:
    model = load_cached("llama_gqa")
    prompt = [1, 2, 3]
    a = model.generate(prompt, max_new_tokens=6, temperature=1.0, seed=7)
    b = model.generate(prompt, max_new_tokens=6, temperature=1.0, seed=7)
    assert a == b and 1 <= len(a) <= 6


def test_config_is_resolved_by_canonical_name() -> None:
    model = load_cached("gpt2")
    cfg = model.config
    assert cfg.hidden_size == cfg["hidden_size"] == 32  # from n_embd
    assert cfg.num_heads == 4 and cfg.num_layers == 2 and cfg.vocab_size == 320
    assert cfg.raw["n_embd"] == 32 and cfg.raw["model_type"] == "gpt2"


# ---- tokenizer -------------------------------------------------------------------------------

def _tokenizer_cases() -> list[dict]:
    return json.loads((FIXTURES / "tokenizer_ref.json").read_text(encoding="utf-8"))["cases"]


def test_tokenizer_matches_reference() -> None:
    tok = load_cached("gpt2").tokenizer
    assert tok is not None
    cases = _tokenizer_cases()
    assert len(cases) > 5
    for case in cases:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
        assert tok.decode(case["ids"], skip_special_tokens=False) == case["decoded"], case["text"]


def test_tokenizer_decode_skips_special_tokens() -> None:
    tok = load_cached("gpt2").tokenizer
    ids = tok.encode("Hello<|endoftext|> world")
    assert 0 in ids
    assert "<|endoftext|>" not in tok.decode(ids)
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


def test_no_tokenizer_json_means_no_tokenizer(tmp_path) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    model = modelkit.load(folder)
    assert model.tokenizer is None
    ids, ref = reference("llama_gqa")
    assert max_abs(model.forward(ids), ref) < ATOL
