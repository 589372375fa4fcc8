"""Golden fixtures of the shipped architectures, and the library API around a loaded model.

The contract every architecture meets: logits equal the transformers reference (1e-4), and
cached decoding, prefill in pieces, chunked prefill and ``last_only`` all equal the full forward.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (ATOL, FIXTURES, SHIPPED_FIXTURES, copy_fixture, edit_config, fixture_path,
                      load_cached, max_abs, reference)

import modelkit
import modelkit.blocks.attention as attention
import modelkit.model as model_mod

NAMES = list(SHIPPED_FIXTURES)
# same-model consistency (cache vs no cache) is far tighter than the reference tolerance
SELF_ATOL = 2e-5


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_reference(name: str) -> None:
    model = load_cached(name)
    ids, ref = reference(name)
    logits = model.forward(ids)
    assert model.name == SHIPPED_FIXTURES[name]
    assert logits.dtype == np.float32 and logits.shape == ref.shape == (ids.size, model.vocab_size)
    assert max_abs(logits, ref) < ATOL


@pytest.mark.parametrize("name", NAMES)
def test_cached_decoding_equals_full_forward(name: str) -> None:
    model = load_cached(name)
    ids, ref = reference(name)
    full = model.forward(ids)
    cache = model.make_cache()
    prefill = 5
    rows = [model.forward(ids[:prefill], cache)]
    for token in ids[prefill:]:
        rows.append(model.forward([int(token)], cache))
    stepped = np.concatenate(rows)
    assert cache.length == ids.size and cache.tokens == [int(t) for t in ids]
    assert max_abs(stepped, full) < SELF_ATOL
    assert max_abs(stepped, ref) < ATOL


@pytest.mark.parametrize("name", NAMES)
def test_prefill_in_two_pieces_equals_full_forward(name: str) -> None:
    model = load_cached(name)
    ids, _ = reference(name)
    full = model.forward(ids)
    cut = ids.size // 2 + 1
    cache = model.make_cache()
    first = model.forward(ids[:cut], cache)
    second = model.forward(ids[cut:], cache)
    assert max_abs(np.concatenate([first, second]), full) < SELF_ATOL


@pytest.mark.parametrize("name", NAMES)
def test_last_only_returns_the_last_row(name: str) -> None:
    model = load_cached(name)
    ids, _ = reference(name)
    full = model.forward(ids)
    last = model.forward(ids, last_only=True)
    assert last.shape == (1, model.vocab_size) and last.dtype == np.float32
    assert max_abs(last[0], full[-1]) < SELF_ATOL
    # with a cache too, where the previous tokens come from the cache
    cache = model.make_cache()
    model.forward(ids[:-3], cache)
    tail = model.forward(ids[-3:], cache, last_only=True)
    assert tail.shape == (1, model.vocab_size)
    assert max_abs(tail[0], full[-1]) < SELF_ATOL


@pytest.mark.parametrize("name", NAMES)
def test_chunked_prefill_and_query_blocks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt longer than PREFILL_CHUNK and QUERY_BLOCK (both made small) gives the same
    logits as the unchunked run, for the reference ids and for a longer random prompt."""
    model = load_cached(name)
    ids, ref = reference(name)
    max_len = model.pos_embed.shape[0] if model.pos_embed is not None else 64
    rng = np.random.default_rng(0)
    long_ids = rng.integers(1, model.vocab_size, size=max_len)
    unchunked_long = model.forward(long_ids)

    monkeypatch.setattr(model_mod, "PREFILL_CHUNK", 7)
    monkeypatch.setattr(attention, "QUERY_BLOCK", 3)
    calls = []
    original = model_mod.Model._run_layers
    monkeypatch.setattr(model_mod.Model, "_run_layers",
                        lambda self, piece, cache: calls.append(piece.size) or original(self, piece, cache))

    chunked = model.forward(ids)
    assert calls == [7] * (ids.size // 7) + ([ids.size % 7] if ids.size % 7 else [])
    assert max_abs(chunked, ref) < ATOL
    assert max_abs(chunked, model.forward(ids, last_only=False)) == 0.0
    last = model.forward(long_ids, last_only=True)
    chunked_long = model.forward(long_ids)
    assert max_abs(chunked_long, unchunked_long) < SELF_ATOL
    assert max_abs(last[0], unchunked_long[-1]) < SELF_ATOL
    # chunked prefill into a cache, then decoding, still agrees
    cache = model.make_cache()
    head = model.forward(long_ids[:-2], cache)
    steps = [model.forward([int(t)], cache) for t in long_ids[-2:]]
    assert max_abs(np.concatenate([head, *steps]), unchunked_long) < SELF_ATOL


@pytest.mark.parametrize("name", NAMES)
def test_weights_and_activations_are_float32(name: str) -> None:
    """No silent float64: every loaded or fused array, the cache and the logits are float32."""
    model = load_cached(name)
    arrays = [model.embed, model.head] + ([model.pos_embed] if model.pos_embed is not None else [])
    for layer in model.layers:
        for block in layer.blocks.values():
            arrays += [v for v in block.p.values() if isinstance(v, np.ndarray)]
            arrays += [v for v in vars(block).values() if isinstance(v, np.ndarray)]
    assert arrays and all(a.dtype == np.float32 for a in arrays), {a.dtype for a in arrays}
    cache = model.make_cache()
    model.forward([1, 2, 3], cache)
    for states in cache.layers:
        for state in states.values():
            assert state.k.dtype == np.float32 and state.v.dtype == np.float32


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
    shipped = {"gpt2", "llama", "mistral", "falcon", "granite3"}
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
    import modelkit.loader

    model = modelkit.loader.load(fixture_path("llama_gqa"))  # a private copy: we edit its settings
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
