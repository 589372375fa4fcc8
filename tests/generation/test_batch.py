"""BatchDecoder and generate_batch: options, finish reasons, logprobs, text and stop strings,
leaving early, and continuing from cache snapshots (prefix caching), on fixture models."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_cached, reference

from modelkit.errors import GenerationError
from modelkit.generation.batch import BatchDecoder, TokenEvent, generate_batch
from modelkit.evaluation.logprobs import log_softmax, token_logprob


@pytest.fixture(scope="module")
def llama():
    return load_cached("llama_gqa")


def _prompts(name: str = "llama_gqa") -> list[list[int]]:
    ids = [int(t) for t in reference(name)[0]]
    return [ids[:4], ids[3:9], ids[1:3]]


def _run(decoder: BatchDecoder) -> dict[int, list[TokenEvent]]:
    events: dict[int, list[TokenEvent]] = {}
    while decoder.active:
        for event in decoder.step():
            events.setdefault(event.seq_id, []).append(event)
    return events


def test_sampled_sequences_equal_generate_with_the_same_seed(llama):
    prompts = _prompts()
    options = dict(max_new_tokens=8, temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.3, seed=11)
    want = [llama.generate(p, **options) for p in prompts]
    assert generate_batch(llama, prompts, **options) == want
    assert llama.generate_batch(prompts, max_batch=2, **options) == want  # the third joins later


def test_logprobs_are_the_log_softmax_of_the_logits(llama):
    prompt = _prompts()[0]
    decoder = BatchDecoder(llama)
    seq = decoder.add(prompt, max_new_tokens=3, temperature=0.0, top_logprobs=3)
    events = _run(decoder)[seq]
    logits = llama.forward(prompt + [e.token for e in events[:-1]])[len(prompt) - 1:]
    lp = log_softmax(logits)
    assert lp.dtype == np.float32 and np.allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-5)
    for row, event in zip(lp, events):
        assert abs(event.logprob - row[event.token]) < 1e-4
        assert [t for t, _ in event.top_logprobs] == list(np.argsort(-row, kind="stable")[:3])
        assert event.top_logprobs[0] == (event.token, event.logprob)  # greedy: the best token
    assert token_logprob(np.array([1.0, 3.0, 3.0], np.float32), 0, 2).top[0][0] == 1  # ties: the lower id
    assert token_logprob(np.array([0.0, 0.0], np.float32), 1, 0).logprob == pytest.approx(np.log(0.5))


def test_finish_reasons_and_stop_ids(llama):
    prompt = _prompts()[0]
    free = llama.generate(prompt, 6, temperature=0.0)
    decoder = BatchDecoder(llama)
    a = decoder.add(prompt, max_new_tokens=6, temperature=0.0)
    b = decoder.add(prompt, max_new_tokens=6, temperature=0.0, stop_ids=[free[2]])
    events = _run(decoder)
    assert [e.token for e in events[a]] == free and events[a][-1].finish_reason == "length"
    assert [e.token for e in events[b]] == free[:free.index(free[2]) + 1]
    assert events[b][-1].finish_reason == "stop" and events[b][-1].finished
    assert not any(e.finished for e in events[a][:-1])


def test_learned_positions_end_a_sequence_with_length():
    gpt2 = load_cached("gpt2")  # 64 learned positions
    prompt = [int(t) for t in reference("gpt2")[0]][:4] * 15  # 60 tokens
    decoder = BatchDecoder(gpt2)
    seq = decoder.add(prompt, max_new_tokens=20, temperature=0.0, stop_ids=[])
    events = _run(decoder)[seq]
    want = gpt2.generate(prompt, 20, temperature=0.0)
    assert [e.token for e in events] == want and events[-1].finish_reason == "length"
    assert len(events) == 5  # fed back at positions 60..63; the fifth token has no position
    with pytest.raises(GenerationError, match="learned positions"):
        decoder.add(prompt * 2)


def test_text_and_stop_strings_match_stream(llama):
    prompt = llama.tokenizer.encode("The answer is")
    pieces = list(llama.stream(prompt, max_new_tokens=30, temperature=1.0, seed=7))
    full = "".join(p.text for p in pieces)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    want = "".join(p.text for p in llama.stream(prompt, max_new_tokens=30, temperature=1.0, seed=7,
                                                stop_strings=[stop]))
    decoder = BatchDecoder(llama)
    plain = decoder.add(prompt, max_new_tokens=30, temperature=1.0, seed=7, text=True)
    stopped = decoder.add(prompt, max_new_tokens=30, temperature=1.0, seed=7, stop_strings=stop)
    events = _run(decoder)
    assert "".join(e.text for e in events[plain]) == full
    assert "".join(e.text for e in events[stopped]) == want
    assert events[stopped][-1].finish_reason == "stop" and len(events[stopped]) < len(events[plain])


def test_a_sequence_leaves_early_and_the_others_are_unchanged(llama):
    prompts = _prompts()
    want = [llama.generate(p, 6, temperature=0.0) for p in prompts]
    decoder = BatchDecoder(llama, max_batch=3)
    ids = [decoder.add(p, max_new_tokens=6, temperature=0.0) for p in prompts]
    assert decoder.full and decoder.active == ids
    with pytest.raises(GenerationError, match="full"):
        decoder.add(prompts[0])
    got = {i: [] for i in ids}
    for step in range(6):
        for event in decoder.step():
            got[event.seq_id].append(event.token)
        if step == 1:
            decoder.remove(ids[1])  # its client went away
            assert decoder.active == [ids[0], ids[2]]
            with pytest.raises(KeyError):
                decoder.cache_of(ids[1])
    assert got[ids[0]] == want[0] and got[ids[2]] == want[2] and got[ids[1]] == want[1][:2]
    decoder.remove(ids[1])  # gone already: no error
    with pytest.raises(KeyError):
        decoder.remove(99)


def test_a_finished_sequence_cache_stays_until_the_next_step(llama):
    prompt = _prompts()[0]
    decoder = BatchDecoder(llama)
    seq = decoder.add(prompt, max_new_tokens=2, temperature=0.0)
    assert decoder.cache_of(seq).tokens == prompt  # prefilled at add
    first, = decoder.step()
    last, = decoder.step()
    assert last.finished and decoder.active == []
    cache = decoder.cache_of(seq)  # the finishing token is never fed back
    assert cache.tokens == prompt + [first.token]
    assert decoder.step() == []
    with pytest.raises(KeyError):
        decoder.cache_of(seq)


@pytest.mark.parametrize("name", ["gh_hybrid", "llama_gqa", "lfm2", "mamba", "mistral_window"])
def test_prefix_caching_from_snapshots(name: str):
    """A conversation that extends a served one reads only its new tokens, from a snapshot of
    the state at the end of the earlier prompt or reply, and gives what a fresh run gives."""
    model = load_cached(name)
    prompt, extra = _prompts(name)[1], _prompts(name)[2]
    decoder = BatchDecoder(model)
    seq = decoder.add(prompt, max_new_tokens=4, temperature=0.0)
    at_prompt = decoder.cache_of(seq).snapshot()  # kept by a server at the end of the prompt
    events = _run_keep(decoder, seq)
    reply = [e.token for e in events]
    at_reply = events.cache.snapshot()  # ... and at the end of the reply
    assert at_reply.tokens == prompt + reply[:-1]
    # the same prompt again: nothing new to read, the kept logits choose the first token
    again = decoder.add([], cache=at_prompt.snapshot(), max_new_tokens=4, temperature=0.0)
    assert [e.token for e in _run(decoder)[again]] == reply
    # the conversation goes on: only the reply's last token and the new turn are read
    longer = prompt + reply + extra
    follow = decoder.add(longer[len(at_reply.tokens):], cache=at_reply.snapshot(), max_new_tokens=5,
                         temperature=0.0)
    assert [e.token for e in _run(decoder)[follow]] == model.generate(longer, 5, temperature=0.0)
    assert at_prompt.tokens == prompt  # the kept snapshots never change
    with pytest.raises(GenerationError, match="empty"):
        decoder.add([], cache=model.make_cache())


class _Kept(list):
    cache = None


def _run_keep(decoder: BatchDecoder, seq: int) -> _Kept:
    """Run the batch to the end, keeping the cache of ``seq`` from the step that finished it."""
    out = _Kept()
    while decoder.active:
        for event in decoder.step():
            if event.seq_id == seq:
                out.append(event)
                if event.finished:
                    out.cache = decoder.cache_of(seq)
    return out


def test_bad_options_and_calls_are_refused(llama):
    decoder = BatchDecoder(llama)
    prompt = _prompts()[0]
    for options, message in [({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0.0}, "top_p"),
                             ({"beam_width": 2}, "unknown"), ({"top_logprobs": -1}, "top_logprobs")]:
        with pytest.raises(GenerationError, match=message):
            decoder.add(prompt, **options)
    with pytest.raises(GenerationError, match="empty"):
        decoder.add([])
    with pytest.raises(GenerationError, match="max_batch"):
        BatchDecoder(llama, max_batch=0)
    seq = decoder.add(prompt)
    with pytest.raises(GenerationError, match="belongs"):
        decoder.add([1], cache=decoder.cache_of(seq))
    cache = llama.make_cache()
    llama.forward(prompt, cache)
    with pytest.raises(GenerationError, match="twice"):
        llama.decode_batch([1, 2], [cache, cache])
    with pytest.raises(GenerationError, match="2 ids for 1"):
        llama.decode_batch([1, 2], [cache])
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        llama.decode_batch([llama.vocab_size], [cache])
    assert llama.decode_batch([], []).shape == (0, llama.vocab_size)


def test_samples_of_one_prompt_share_its_prefill(llama):
    """n samples: the prompt is read once, the others continue snapshots of its cache."""
    prompt = _prompts()[1]
    decoder = BatchDecoder(llama)
    first = decoder.add(prompt, max_new_tokens=6, temperature=1.0, seed=0)
    others = [decoder.add([], cache=decoder.cache_of(first).snapshot(), max_new_tokens=6, temperature=1.0,
                          seed=seed) for seed in (1, 2)]
    events = _run(decoder)
    for seq, seed in zip([first, *others], (0, 1, 2)):
        assert [e.token for e in events[seq]] == llama.generate(prompt, 6, temperature=1.0, seed=seed)


def test_a_sequence_with_non_finite_logits_ends_alone_with_an_error(llama):
    prompt = _prompts()[0]
    broken = llama.make_cache()
    llama.forward(prompt, broken)
    broken.keep_logits(np.full(llama.vocab_size, np.nan, np.float32))
    decoder = BatchDecoder(llama)
    good = decoder.add(prompt, max_new_tokens=3, temperature=0.0)
    bad = decoder.add([], cache=broken.snapshot(), max_new_tokens=3, temperature=0.0)
    events = _run(decoder)
    event, = events[bad]
    assert event.finished and event.finish_reason == "error" and event.token == -1 and "NaN" in event.error
    assert [e.token for e in events[good]] == llama.generate(prompt, 3, temperature=0.0)
    with pytest.raises(GenerationError, match="NaN"):
        generate_batch(llama, [[]], max_new_tokens=2, cache=broken)


@pytest.mark.parametrize("name", ["llama_gqa", "mistral_window"])
def test_a_snapshot_holds_only_the_stored_positions(name: str):
    model = load_cached(name)
    ids = [int(t) for t in reference(name)[0]]
    cache = model.make_cache()
    model.forward(ids, cache)
    snap = cache.snapshot()
    kv = [state for states in cache.layers for state in states.values()]
    held = sum(2 * s.v.shape[0] * s.v.shape[2] * (s.length - s.offset) * 4 for s in kv)
    assert snap.nbytes() == held < cache.nbytes()  # the live cache holds room to grow
    row = model.forward(ids, last_only=True)[0]  # the logits after the cache's last token
    cache.keep_logits(row)
    assert cache.snapshot().nbytes() == held + row.nbytes


def test_the_batch_ending_releases_what_blocks_kept_for_it():
    """Mamba2 seats a batch's states side by side; when the decoder's last sequence leaves,
    ``Model.end_batch`` gives them their own arrays back and the pools go, and a finished
    sequence's cache still continues as a fresh run does."""
    model = load_cached("gh_hybrid")
    pools = lambda: [b._pool for layer in model.layers for b in layer.blocks.values() if hasattr(b, "_pool")]  # noqa: E731
    prompts = _prompts("gh_hybrid")
    decoder = BatchDecoder(model)
    ids = [decoder.add(p, max_new_tokens=n, temperature=0.0) for p, n in zip(prompts, (3, 5, 5))]
    decoder.step()
    decoder.step()
    assert pools() and all(p is not None for p in pools())
    kept = _run_keep(decoder, ids[1])
    assert all(p is None for p in pools())
    longer = kept.cache.tokens + [kept[-1].token]
    cont = decoder.add([kept[-1].token], cache=kept.cache, max_new_tokens=3, temperature=0.0)
    assert [e.token for e in _run(decoder)[cont]] == model.generate(longer, 3, temperature=0.0)
    decoder.remove(cont)
