"""Generation over fixture models: greedy equals the argmax of a full forward, EOS / stop ids /
stop strings end it, generation_config.json defaults apply, and streaming decodes incrementally."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import modelkit
from modelkit.errors import GenerationError, TokenizerError
from modelkit.generation.loop import GenerationStats, Piece, eos_ids
from modelkit.generation.stop import StopStrings
from modelkit.text.decoding import IncrementalDecoder
from modelkit.text.tokenizer import Tokenizer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def llama():
    return modelkit.load(FIXTURES / "llama_gqa")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_folder(FIXTURES / "llama_gqa")


def copy_fixture(tmp_path: Path, name: str = "llama_gqa", **edits: dict) -> Path:
    """A copy of a fixture folder with some JSON files updated ({"generation_config.json": {...}})."""
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    for filename, values in edits.items():
        path = dst / filename.replace("__", ".")
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(values)
        path.write_text(json.dumps(data))
    return dst


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens by re-running the full sequence without a cache each step."""
    ids = list(prompt)
    out = []
    for _ in range(n):
        token = int(np.argmax(model.forward(ids)[-1]))
        out.append(token)
        ids.append(token)
    return out


def collapse_replacement(text: str) -> str:
    return re.sub("\ufffd+", "\ufffd", text)


# ---- generate ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "granite3"])
def test_greedy_matches_full_forward_argmax(name):
    model = modelkit.load(FIXTURES / name)
    prompt = model.tokenizer.encode("The cat sat on")
    out = model.generate(prompt, 12, temperature=0)
    ref = greedy_reference(model, prompt, 12)
    n = ref.index(0) + 1 if 0 in ref else len(ref)  # id 0 is EOS in every fixture
    assert out == ref[:n]


def test_eos_from_any_source_stops_and_is_last(tmp_path, llama):
    prompt = llama.tokenizer.encode("Hello world")
    free = llama.generate(prompt, 12)
    assert 0 not in free and len(free) == 12
    target = free[4]
    assert target not in free[:4]
    for edits in ({"config.json": {"eos_token_id": [7, target]}},
                  {"generation_config.json": {"eos_token_id": [target, 5]}},
                  {"generation_config.json": {"eos_token_id": target}},
                  {"tokenizer_config.json": {"eos_token": llama.tokenizer.id_to_token(target)}}):
        model = modelkit.load(copy_fixture(tmp_path / str(len(list(tmp_path.iterdir()))), **edits))
        assert target in eos_ids(model)
        assert model.generate(prompt, 12) == free[:5]


def test_stop_ids_and_max_new_tokens(llama):
    prompt = llama.tokenizer.encode("Hello world")
    free = llama.generate(prompt, 10)
    assert llama.generate(prompt, 10, stop_ids=[free[2]]) == free[:free.index(free[2]) + 1]
    assert llama.generate(prompt, 3) == free[:3]
    assert llama.generate(prompt, 1) == free[:1]


def test_generation_config_sampling_defaults_apply_unless_overridden(tmp_path, llama):
    prompt = llama.tokenizer.encode("Hello world")
    greedy = llama.generate(prompt, 10)
    # do_sample with top_k 1 is greedy whatever the temperature
    path = copy_fixture(tmp_path, **{"generation_config.json": {"do_sample": True, "temperature": 5.0, "top_k": 1}})
    model = modelkit.load(path)
    assert model.generate(prompt, 10, seed=1) == greedy
    # the user's top_k overrides the file's; temperature 5 then wanders off
    assert model.generate(prompt, 10, seed=1, top_k=0) != greedy
    # an explicit temperature 0 is greedy
    assert model.generate(prompt, 10, temperature=0, top_k=0) == greedy


def test_same_seed_same_tokens(llama):
    prompt = llama.tokenizer.encode("Hello world")
    opts = dict(temperature=0.9, top_k=50, top_p=0.95, min_p=0.02, repetition_penalty=1.1)
    a = llama.generate(prompt, 20, seed=42, **opts)
    assert a == llama.generate(prompt, 20, seed=42, **opts)
    assert a != llama.generate(prompt, 20, seed=43, **opts)
    assert [i for p in llama.stream(prompt, max_new_tokens=20, seed=42, **opts) for i in p.ids] == a


def test_generate_continues_a_cache(llama):
    prompt = llama.tokenizer.encode("Hello world, again")
    whole = llama.generate(prompt, 8)
    cache = llama.make_cache()
    llama.forward(prompt[:-3], cache)
    stats = GenerationStats()
    assert llama.generate(prompt[-3:], 8, cache=cache, stats=stats) == whole
    assert (stats.cached_tokens, stats.prompt_tokens, stats.new_tokens) == (len(prompt) - 3, 3, 8)
    assert stats.stop_reason == "length"
    # the cache holds everything but the last token, which was never fed
    assert cache.tokens == prompt + whole[:-1]


@pytest.mark.parametrize("kwargs,match", [({"max_new_tokens": 0}, "max_new_tokens"),
                                          ({"temperature": -1}, "temperature"),
                                          ({"top_p": 0}, "top_p"),
                                          ({"stop_strings": [""]}, "stop strings")])
def test_bad_options_are_user_errors(llama, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        llama.generate([1, 2, 3], **kwargs)
    with pytest.raises(GenerationError):
        llama.generate([])


# ---- stream ------------------------------------------------------------------------------
def test_stream_yields_text_with_ids(llama):
    prompt = llama.tokenizer.encode("Hello world")
    ids = llama.generate(prompt, 30)
    pieces = list(llama.stream(prompt, max_new_tokens=30))
    assert all(isinstance(p, Piece) for p in pieces)
    assert [i for p in pieces for i in p.ids] == ids
    text = "".join(p.text for p in pieces)
    assert collapse_replacement(text) == collapse_replacement(llama.tokenizer.decode(ids))


def test_stream_text_equals_decode_across_many_sampled_outputs(llama):
    for seed in range(20):
        prompt = llama.tokenizer.encode(f"Sample {seed}:")
        pieces = list(llama.stream(prompt, max_new_tokens=40, temperature=1.0, seed=seed))
        ids = [i for p in pieces for i in p.ids]
        # invalid byte runs may show as a different number of U+FFFD; valid text is exact
        assert collapse_replacement("".join(p.text for p in pieces)) == \
            collapse_replacement(llama.tokenizer.decode(ids))


def test_special_tokens_are_not_streamed(tmp_path):
    # a model whose first greedy token is the special <|endoftext|> (id 0): make id 0 the argmax
    model = modelkit.load(FIXTURES / "llama_gqa")
    model.head_bias = np.zeros(model.vocab_size, np.float32)
    model.head_bias[0] = 1e4
    pieces = list(model.stream(model.tokenizer.encode("Hi"), max_new_tokens=5))
    assert pieces == [Piece("", [0])]
    model.generation_config = {"eos_token_id": 5}
    model.config.raw = {}
    pieces = list(model.stream(model.tokenizer.encode("Hi"), max_new_tokens=3))
    assert [p.ids for p in pieces] == [[0], [0], [0]] and all(p.text == "" for p in pieces)


def stop_string_across_a_boundary(pieces: list[Piece]) -> tuple[str, int]:
    """A 3-character stop string made of the last 2 characters shown before piece k and the
    first character of piece k, occurring first there; and k."""
    full = "".join(p.text for p in pieces)
    text = ""
    for k, p in enumerate(pieces):
        if len(text) >= 2 and p.text:
            stop = text[-2:] + p.text[0]
            if "\ufffd" not in stop and full.find(stop) == len(text) - 2:
                return stop, k
        text += p.text
    raise AssertionError("no suitable boundary in the fixture output")


def test_stop_string_across_token_boundary_is_not_shown(llama):
    prompt = llama.tokenizer.encode("The answer is")
    pieces = list(llama.stream(prompt, max_new_tokens=40, temperature=1.0, seed=7))
    full = "".join(p.text for p in pieces)
    stop, k = stop_string_across_a_boundary(pieces)
    got = list(llama.stream(prompt, max_new_tokens=40, temperature=1.0, seed=7, stop_strings=["zzzz", stop]))
    text = "".join(p.text for p in got)
    assert text == full[:full.find(stop)]
    assert stop not in text
    ids = [i for p in pieces for i in p.ids]
    stats = GenerationStats()
    out = llama.generate(prompt, 40, temperature=1.0, seed=7, stop_strings=[stop], stats=stats)
    # the token completing the stop string is the last element
    assert out == ids[:k + 1] and stats.stop_reason == "stop_string"


def test_single_stop_string_and_stop_id_need_no_list(llama):
    prompt = llama.tokenizer.encode("Hello world")
    free = llama.generate(prompt, 10)
    assert llama.generate(prompt, 10, stop_ids=free[1]) == free[:free.index(free[1]) + 1]
    text = "".join(p.text for p in llama.stream(prompt, max_new_tokens=10, stop_strings="Zq"))
    assert text == "".join(p.text for p in llama.stream(prompt, max_new_tokens=10, stop_strings=["Zq"]))


def test_stop_string_matcher_holds_back_possible_starts():
    m = StopStrings(["<end>", "STOP"])
    assert m.feed("abc<e") == ("abc", False)
    assert m.feed("n") == ("", False)
    assert m.feed("x S") == ("<enx ", False)
    assert m.feed("TO") == ("", False)
    assert m.feed("P and more") == ("", True)
    m = StopStrings(["ab"])
    assert m.feed("xa") == ("x", False)
    assert m.flush() == "a"


def test_stop_strings_need_a_tokenizer(llama):
    model = modelkit.load(FIXTURES / "llama_gqa")
    model.tokenizer = None
    assert len(model.generate([1, 2, 3], 3)) == 3  # ids need no tokenizer
    with pytest.raises(TokenizerError):
        model.generate([1, 2, 3], 3, stop_strings=["x"])


# ---- the incremental decoder -------------------------------------------------------------
def test_incremental_decoder_never_breaks_multibyte_characters(tok):
    text = "héllo 👋🏽 世界 🇫🇷 done — Привет ok"
    ids = tok.encode(text, add_special_tokens=False)
    # the byte-level tokenizer really splits these characters across tokens
    assert sum("\ufffd" in tok.decode([i]) for i in ids) >= 10
    dec = IncrementalDecoder(tok)
    pieces = [dec.add(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert "👋" in pieces and "世" in pieces and "🇫" in pieces


def test_incremental_decoder_emits_invalid_bytes_eventually(tok):
    lead = tok.encode("世", add_special_tokens=False)[0]  # a lone UTF-8 lead byte, never completed
    ascii_ids = tok.encode("abcdef", add_special_tokens=False)
    dec = IncrementalDecoder(tok)
    out = dec.add(lead)
    assert out == ""
    out += "".join(dec.add(i) for i in ascii_ids) + dec.flush()
    assert out == "\ufffdabcdef"


def test_incremental_decoder_keeps_sentencepiece_spaces():
    # Metaspace decoders drop the space of the first token of a decode; the window keeps it
    from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers

    backend = Backend(models.WordLevel({"▁Hello": 0, "▁world": 1, "!": 2, "<unk>": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    t = Tokenizer(backend)
    assert t.decode([1]) == "world"
    dec = IncrementalDecoder(t, context=[0])
    assert [dec.add(1), dec.add(2), dec.add(1)] == [" world", "!", " world"]
    dec = IncrementalDecoder(t)
    assert "".join([dec.add(0), dec.add(1)]) == t.decode([0, 1]) == "Hello world"


def test_streaming_decodes_a_short_window_only(llama):
    """Per token, the decoder decodes a few ids, never the whole output."""
    calls: list[int] = []
    tok = llama.tokenizer
    original = tok.decode

    def counting(ids, skip_special_tokens=True):
        ids = list(ids)
        calls.append(len(ids))
        return original(ids, skip_special_tokens)

    tok.decode = counting
    try:
        prompt = tok.encode("Hello world")
        pieces = list(llama.stream(prompt, max_new_tokens=200, stop_strings=["@@@"]))
        assert len(pieces) > 100
        assert max(calls) <= IncrementalDecoder.CONTEXT + IncrementalDecoder.MAX_HELD + 1
        assert len(calls) <= 4 * len(pieces) + 4
        calls.clear()
        llama.generate(prompt, 50)
        assert calls == []  # no stop strings: generate never decodes
    finally:
        del tok.decode


class FakeModel:
    """A model stand-in with a 49k vocabulary whose forward costs nothing, to time the per-token
    work of the generation layer alone."""

    def __init__(self, tokenizer, vocab: int = 49152):
        rng = np.random.default_rng(0)
        self.row = (rng.standard_normal((1, vocab)) * 2).astype(np.float32)
        self.row[0, 65] = 12.0  # a peaked distribution, as language models have
        self.row[0, 321:] -= 4.0  # ids the fixture tokenizer cannot decode stay unlikely
        self.row.setflags(write=False)  # the sampler must never write into the logits
        self.vocab_size = vocab
        self.tokenizer = tokenizer
        self.generation_config: dict = {}
        self.config = type("C", (), {"raw": {}})()
        self.eos_token_ids: frozenset[int] = frozenset()
        self.max_positions = None

    def make_cache(self):
        from modelkit.model import Cache

        return Cache([])

    def forward(self, ids, cache=None, last_only=False):
        cache.tokens.extend(int(i) for i in ids)
        cache.length += len(ids)
        return self.row


def test_per_token_overhead_is_small(tok):
    from modelkit.generation.loop import generate, stream

    model = FakeModel(tok)
    n = 300
    t0 = time.perf_counter()
    out = generate(model, [1, 2, 3], n)
    greedy_ms = (time.perf_counter() - t0) / n * 1e3
    assert len(out) == n
    t0 = time.perf_counter()
    pieces = list(stream(model, [1, 2, 3], n, temperature=0.8, top_k=50, top_p=0.95, min_p=0.05,
                         repetition_penalty=1.1, seed=0))
    sampled_ms = (time.perf_counter() - t0) / len(pieces) * 1e3
    # generous bounds (a loaded CI machine); typical: ~0.02 ms greedy, ~1 ms sampled at 49k vocab
    assert greedy_ms < 1.0, greedy_ms
    assert sampled_ms < 8.0, sampled_ms
