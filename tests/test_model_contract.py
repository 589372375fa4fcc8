"""The contract every architecture meets, over one table of golden fixtures.

Logits equal the transformers reference (1e-4); cached token-by-token decoding, prefill in
pieces, chunked prefill with small query blocks and ``last_only`` all equal the full forward;
every array is float32; greedy generation picks the argmax of the full forward. A new family
is one row of ``CONTRACT``. The checks against the reference are modelkit.testing's, the ones a
plugin's own test runs (``assert_matches_reference``); each runs here as its own test.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ATOL, SHIPPED_FIXTURES, fixture_path, load_cached, max_abs, reference

import modelkit
from modelkit import testing as kit

GH_HYBRID = ["mamba", "attention", "mamba", "mamba"]
LFM2 = ["conv", "conv", "attention", "conv", "attention", "conv"]
# fixture -> (architecture, each layer's variant or None when the mapping has one kind of layer)
CONTRACT: dict[str, tuple[str, list[str] | None]] = {
    **{name: (arch, None) for name, arch in SHIPPED_FIXTURES.items()},
    "gh_hybrid": ("granite", GH_HYBRID),
    "gh_hybrid_bf16": ("granite", GH_HYBRID),
    "gh_rope_untied": ("granite", GH_HYBRID),
    "gh_attention_only": ("granite", ["attention"] * 4),
    "gh_all_mamba": ("granite", ["mamba"] * 4),
    "gh_hub_config": ("granite", GH_HYBRID),
    "gh_moe": ("granite", ["mamba_moe", "attention_moe", "mamba_moe", "attention_moe"]),
    "mamba2": ("mamba2", None),
    "mamba2_tied": ("mamba2", None),
    "bamba": ("bamba", ["mamba", "attention", "mamba", "attention"]),
    "falcon_h1": ("falcon_h1", ["hybrid"] * 3),
    "falcon_h1_nonorm": ("falcon_h1", ["hybrid"] * 2),
    "mamba": ("mamba", None),
    "mamba_options": ("mamba", None),
    "lfm2": ("lfm2", LFM2),
    "lfm2_hub_config": ("lfm2", ["conv", "attention", "conv", "attention", "conv"]),
    # dense layers among the routed ones: mlp_only_layers [2]; decoder_sparse_step 2
    "qwen3_moe": ("qwen3_moe", ["sparse", "sparse", "dense", "sparse"]),
    "qwen3_moe_fused": ("qwen3_moe", ["dense", "sparse", "dense", "sparse"]),
    "qwen3_moe_sparse": ("qwen3_moe", ["sparse"] * 3),  # every layer routed (its GGUF fixture)
    "compare_llama": ("llama", None),  # built by modelkit.testing's fixture builder (build_compare_fixture.py)
}
NAMES = list(CONTRACT)
# fixtures with Mamba2 layers, whose decoding keeps steps pending: a variant named for them, or
# a family whose every layer has one (the ssm plugin's Mamba v1 has no such window)
EVERY_LAYER_MAMBA2 = {"mamba2", "falcon_h1"}
WITH_MAMBA2 = [name for name, (arch, variants) in CONTRACT.items()
               if arch in EVERY_LAYER_MAMBA2 or (variants and any("mamba" in v for v in variants))]
# same-model consistency (cache vs no cache) is far tighter than the reference tolerance ...
SELF_ATOL = kit.SELF_ATOL
# ... except where logits are large: gemma3_text's reach 10, and the float32 rounding of six
# layers of windowed attention over a different key range (a cache, pieces) reaches 6e-5
SELF_ATOL_BY_FIXTURE = {"gemma3_text": 1e-4}


def _self_atol(name: str) -> float:
    return SELF_ATOL_BY_FIXTURE.get(name, SELF_ATOL)


def _reference(name: str) -> kit.FixtureReference:
    return kit.read_reference(fixture_path(name))


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_reference(name: str) -> None:
    model = load_cached(name)
    arch, variants = CONTRACT[name]
    assert model.name == arch
    if variants is not None:
        assert [layer.variant for layer in model.layers] == variants
    kit.check_full_forward(model, _reference(name), ATOL)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prefill", kit.PREFILLS)
def test_cached_decoding_equals_full_forward(name: str, prefill: int) -> None:
    kit.check_cached_decoding(load_cached(name), _reference(name), prefill, ATOL, _self_atol(name))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cut", kit.CUTS)
def test_prefill_in_two_pieces_equals_full_forward(name: str, cut: int | str) -> None:
    """Cuts shorter than a conv kernel, on a scan-chunk boundary (4), inside one, and mid-way."""
    kit.check_prefill_in_pieces(load_cached(name), _reference(name), cut, _self_atol(name))


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
    """A prompt longer than the prefill chunk and the query block (both made small through
    load options) gives the same logits as the default run, for the reference ids and for a
    longer random prompt."""
    model = load_cached(name)
    ids, ref = reference(name)
    max_len = model.max_positions or 64
    long_ids = np.random.default_rng(0).integers(1, model.vocab_size, size=max_len)
    unchunked_long = model.forward(long_ids)

    small = modelkit.load(fixture_path(name), prefill_chunk=7, tuning={"attention.query_block": 3})
    calls: list[int] = []
    original = small._run_layers
    monkeypatch.setattr(small, "_run_layers",
                        lambda piece, cache, *rest: calls.append(piece.size) or original(piece, cache, *rest))
    chunked = small.forward(ids)
    assert calls == [7] * (ids.size // 7) + ([ids.size % 7] if ids.size % 7 else [])
    assert max_abs(chunked, ref) < ATOL
    last = small.forward(long_ids, last_only=True)
    assert max_abs(small.forward(long_ids), unchunked_long) < _self_atol(name)
    assert max_abs(last[0], unchunked_long[-1]) < _self_atol(name)
    # chunked prefill into a cache, then decoding, still agrees
    cache = small.make_cache()
    head = small.forward(long_ids[:-2], cache)
    steps = [small.forward([int(t)], cache) for t in long_ids[-2:]]
    assert max_abs(np.concatenate([head, *steps]), unchunked_long) < _self_atol(name)


@pytest.mark.parametrize("name", WITH_MAMBA2)
@pytest.mark.parametrize("window", [1, 3])
def test_decoding_folds_pending_steps_exactly(name: str, window: int) -> None:
    """With a pending window of 1 or 3 Mamba2 steps, decoding folds many times, and a prompt
    piece between decoded tokens folds whatever is pending first: still the full forward."""
    model = modelkit.load(fixture_path(name), tuning={"mamba2.pending_window": window})
    ids, ref = reference(name)
    full = model.forward(ids)
    cache = model.make_cache()
    rows = [model.forward(ids[:2], cache)]
    rows += [model.forward([int(t)], cache) for t in ids[2:7]]
    rows.append(model.forward(ids[7:10], cache))
    rows += [model.forward([int(t)], cache) for t in ids[10:]]
    stepped = np.concatenate(rows)
    assert max_abs(stepped, full) < SELF_ATOL
    assert max_abs(stepped, ref) < ATOL


def _arrays(obj: object, seen: set[int]) -> list[np.ndarray]:
    """Every array held by a block, its fields' fields included."""
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    out: list[np.ndarray] = []
    for value in vars(obj).values():
        if isinstance(value, np.ndarray):
            out.append(value)
        elif isinstance(value, modelkit.Block):
            out += _arrays(value, seen)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_weights_and_activations_are_float32(name: str) -> None:
    """No silent float64: every loaded or fused array, the cache and the logits are float32."""
    model = load_cached(name)
    arrays = [a for a in (model.embed, model.head, model.pos_embed, model.embed_proj, model.head_proj)
              if a is not None]
    seen: set[int] = set()
    for block in (model.embed_norm, model.final_norm):
        if block is not None:
            arrays += _arrays(block, seen)
    for layer in model.layers:
        for block in layer.blocks.values():
            arrays += _arrays(block, seen)
    assert arrays and all(a.dtype == np.float32 for a in arrays), {a.dtype for a in arrays}
    cache = model.make_cache()
    assert model.forward([1, 2, 3], cache).dtype == np.float32
    for states in cache.layers:
        for state in states.values():
            held = [v for v in vars(state).values() if isinstance(v, np.ndarray)]
            assert held and all(a.dtype == np.float32 for a in held)


@pytest.mark.parametrize("name", NAMES)
def test_decoding_a_token_allocates_nothing_model_sized(name: str) -> None:
    """Each one-token step allocates less than half the largest weight matrix of a layer (plus its
    logits row): no weight is copied, fused or re-laid out per token (caches are preallocated)."""
    import tracemalloc

    model = load_cached(name)
    seen: set[int] = set()
    matrices = [a.nbytes for layer in model.layers for block in layer.blocks.values()
                for a in _arrays(block, seen) if a.ndim >= 2]
    ids = [int(t) for t in reference(name)[0][:8]]
    cache = model.make_cache()
    model.forward(ids[:4], cache)
    model.forward(ids[4:5], cache)  # the first step may set up what later steps reuse
    tracemalloc.start()
    try:
        peaks = []
        for token in ids[5:8]:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            model.forward([token], cache, last_only=True)
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    # the logits row and a few activations of one token stay far below one weight matrix
    assert max(peaks) < max(matrices) / 2 + 4 * model.vocab_size * 4, (peaks, max(matrices))


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_follow_the_full_forward(name: str) -> None:
    kit.check_greedy_tokens(load_cached(name), reference(name)[0][:6], kit.GREEDY_TOKENS)


def test_every_registered_architecture_has_a_fixture() -> None:
    from gguf_plugin.test_families import CONVERTED

    covered = {arch for arch, _ in CONTRACT.values()}
    # the GGUF mappings are tested on files llama.cpp's converter wrote from these fixtures
    # (tests/gguf_plugin/test_families.py), and on the real SmolLM2 and Gemma 3 270M files
    gguf = set(CONVERTED.values())
    assert set(modelkit.architectures()) - gguf == covered
