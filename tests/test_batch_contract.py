"""The batching contract, over the same table of fixtures as tests/test_model_contract.py.

Batching never changes a sequence's result: each sequence decoded in a batch (sequences of
different prompt lengths, joining and leaving at different steps) has the logits of the same
sequence run alone (1e-4) and the same greedy tokens; prompts read together in one batched
prefill (different lengths, one continuing a cache, one longer than a forward's rows) give each
the logits of its prompt read alone and leave caches that decode as theirs; and a cache snapshot
continues exactly as the cache it was taken from (the full forward), on attention and recurrent
layers alike.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ATOL, load_cached, max_abs, reference
from test_model_contract import NAMES, SELF_ATOL_BY_FIXTURE

import modelkit
from modelkit.generation.batch import BatchDecoder

SELF_ATOL = 2e-5  # as the model contract's (a cache against no cache)
# three sequences: (prompt, the step it joins at, how many tokens it is fed before it leaves)
JOIN_AT = (0, 1, 2)
FED = (6, 3, 4)


def _prompts(name: str, model: modelkit.Model) -> tuple[list[list[int]], list[list[int]]]:
    """Three prompts of different lengths and a fixed continuation for each (random ids, so
    each sequence's tokens are its own)."""
    ids = [int(t) for t in reference(name)[0]]
    rng = np.random.default_rng(0)
    prompts = [ids[:3], ids[2:7], [int(t) for t in rng.integers(1, model.vocab_size, 2)]]
    fed = [[int(t) for t in rng.integers(1, model.vocab_size, n)] for n in FED]
    return prompts, fed


@pytest.mark.parametrize("name", NAMES)
def test_batched_decoding_equals_each_sequence_alone(name: str) -> None:
    model = load_cached(name)
    prompts, fed = _prompts(name, model)
    alone = []
    for prompt, tokens in zip(prompts, fed):
        cache = model.make_cache()
        model.forward(prompt, cache)
        alone.append(np.concatenate([model.forward([t], cache) for t in tokens]))
    caches = [model.make_cache() for _ in prompts]
    rows: list[list[np.ndarray]] = [[] for _ in prompts]
    for step in range(max(j + n for j, n in zip(JOIN_AT, FED))):
        for i, join in enumerate(JOIN_AT):
            if join == step:
                model.forward(prompts[i], caches[i])
        batch = [i for i, join in enumerate(JOIN_AT) if join <= step and len(rows[i]) < FED[i]]
        logits = model.decode_batch([fed[i][len(rows[i])] for i in batch], [caches[i] for i in batch])
        assert logits.dtype == np.float32 and logits.shape == (len(batch), model.vocab_size)
        for row, i in zip(logits, batch):
            rows[i].append(row)
    for i, tokens in enumerate(fed):
        batched = np.stack(rows[i])
        assert max_abs(batched, alone[i]) < ATOL
        assert (batched.argmax(axis=1) == alone[i].argmax(axis=1)).all()
        assert caches[i].tokens == prompts[i] + tokens and caches[i].length == len(prompts[i]) + len(tokens)


@pytest.mark.parametrize("name", NAMES)
def test_batch_decoder_gives_the_greedy_tokens_of_generate(name: str) -> None:
    """Three prompts through a batch of two: the third joins when the first leaves."""
    model = load_cached(name)
    prompts, _ = _prompts(name, model)
    lengths = (3, 5, 4)
    want = [model.generate(p, max_new_tokens=n, temperature=0.0) for p, n in zip(prompts, lengths)]
    decoder = BatchDecoder(model, max_batch=2)
    first = decoder.add_many(prompts[:2], options=[{"max_new_tokens": n, "temperature": 0.0} for n in lengths[:2]])
    owner = dict(zip(first, (0, 1)))  # the first two read in one batched prefill
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    while decoder.active:
        for event in decoder.step():
            got[owner[event.seq_id]].append(event.token)
        if not decoder.full and 2 not in owner.values():
            owner[decoder.add(prompts[2], max_new_tokens=lengths[2], temperature=0.0)] = 2
    assert [got[i] for i in range(3)] == want


@pytest.mark.parametrize("name", NAMES)
def test_batched_prefill_equals_each_prompt_alone(name: str) -> None:
    """Four prompts in one prefill_batch with forwards of at most 5 rows: a long one read over
    several forwards, short ones beside its pieces, one continuing a cache that already holds a
    prefix (a prefix-cache hit). Each gets its alone logits; the caches then decode as theirs."""
    model = load_cached(name)
    ids = [int(t) for t in reference(name)[0]]
    prompts, fed = _prompts(name, model)
    prompts.append(ids)  # longer than a forward's 5 rows
    prefix, rest = ids[:3], ids[3:8]
    alone, alone_caches = [], []
    for prompt in prompts + [prefix + rest]:
        cache = model.make_cache()
        alone.append(model.forward(prompt, cache, last_only=True)[0])
        alone_caches.append(cache)
    caches = [model.make_cache() for _ in prompts] + [model.make_cache()]
    model.forward(prefix, caches[-1])
    chunk, model.prefill_chunk = model.prefill_chunk, 5
    try:
        logits = model.prefill_batch(prompts + [rest], caches)
    finally:
        model.prefill_chunk = chunk
    assert logits.dtype == np.float32 and logits.shape == (len(caches), model.vocab_size)
    assert max_abs(logits, np.stack(alone)) < ATOL
    assert (logits.argmax(axis=1) == np.stack(alone).argmax(axis=1)).all()
    assert [c.tokens for c in caches] == [c.tokens for c in alone_caches]
    tokens = [f[0] for f in fed] + [fed[0][1], fed[1][1]]
    want = np.concatenate([model.forward([t], c) for t, c in zip(tokens, alone_caches)])
    assert max_abs(model.decode_batch(tokens, caches), want) < ATOL


@pytest.mark.parametrize("name", NAMES)
def test_a_snapshot_continues_as_the_full_forward(name: str) -> None:
    """Snapshots after a prompt and after decoded tokens (Mamba2's pending steps) continue,
    by pieces and by tokens, with the full forward's logits; the original continues too."""
    model = load_cached(name)
    ids, _ = reference(name)
    full = model.forward(ids)
    atol = SELF_ATOL_BY_FIXTURE.get(name, SELF_ATOL)
    cache = model.make_cache()
    model.forward(ids[:4], cache)
    first = cache.snapshot()
    model.forward([int(ids[4])], cache)
    model.forward([int(ids[5])], cache)
    second = cache.snapshot()
    assert second.tokens == [int(t) for t in ids[:6]] and second.length == 6
    assert first.nbytes() <= cache.nbytes() and second.nbytes() <= cache.nbytes()
    again = second.snapshot()  # a snapshot of a snapshot: how a kept one is continued
    tail = model.forward(ids[6:], cache)  # the original goes on; the snapshots do not see it
    assert max_abs(tail, full[6:]) < atol
    rows = [model.forward(ids[4:7], first)] + [model.forward([int(t)], first) for t in ids[7:]]
    assert max_abs(np.concatenate(rows), full[4:]) < atol
    assert max_abs(model.forward(ids[6:], second), full[6:]) < atol
    stepped = np.concatenate([model.forward([int(t)], again) for t in ids[6:]])
    assert max_abs(stepped, full[6:]) < atol


def test_the_default_forward_batch_of_a_block_runs_row_by_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block kind without its own batched path (any third-party kind) is still exact in a
    batch: the base class runs its one-token forward per row."""
    from modelkit.nn.attention import Attention
    from modelkit.nn.block import Block

    model = load_cached("mistral_window")
    prompts, fed = _prompts("mistral_window", model)
    caches = [model.make_cache() for _ in prompts]
    for p, c in zip(prompts, caches):
        model.forward(p, c)
    snaps = [c.snapshot() for c in caches]
    own = model.decode_batch([f[0] for f in fed], caches)
    monkeypatch.setattr(Attention, "forward_batch", Block.forward_batch)
    assert max_abs(model.decode_batch([f[0] for f in fed], snaps), own) < SELF_ATOL


def test_the_default_forward_ragged_of_a_block_runs_sequence_by_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block kind without its own batched prefill is still exact in one: the base class runs
    its forward on each sequence's rows."""
    from modelkit.nn.attention import Attention
    from modelkit.nn.block import Block

    for name in ("mistral_window", "gh_hybrid"):
        model = load_cached(name)
        prompts, _ = _prompts(name, model)
        own = model.prefill_batch(prompts, [model.make_cache() for _ in prompts])
        with monkeypatch.context() as patch:
            patch.setattr(Attention, "forward_ragged", Block.forward_ragged)
            for layer in model.layers:  # Mamba2 is the granite plugin's
                for block in layer.blocks.values():
                    patch.setattr(type(block), "forward_ragged", Block.forward_ragged)
            assert max_abs(model.prefill_batch(prompts, [model.make_cache() for _ in prompts]), own) < SELF_ATOL


def test_add_many_checks_every_prompt_before_reading_any() -> None:
    model = load_cached("llama_gqa")
    decoder = BatchDecoder(model, max_batch=3)
    good, cache = [1, 2, 3], model.make_cache()
    with pytest.raises(modelkit.GenerationError, match="outside the vocabulary"):
        decoder.add_many([good, [model.vocab_size]], [cache, None])
    with pytest.raises(modelkit.GenerationError, match="unknown generation option"):
        decoder.add_many([good, good], options=[{}, {"temprature": 0.5}])
    with pytest.raises(modelkit.GenerationError, match="batch is full"):
        decoder.add_many([good] * 4)
    with pytest.raises(modelkit.GenerationError, match="given twice"):
        decoder.add_many([good, good], [cache, cache])
    assert decoder.active == [] and cache.length == 0
    assert len(decoder.add_many([good, good[:1]], options={"max_new_tokens": 2})) == 2
