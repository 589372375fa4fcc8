"""tokenizer.json is data that chooses work: regexes that backtrack, searches that go quadratic.
Every encode and decode failure (a Rust panic included) is one TokenizerError line, encoding
with such a file is bounded in time and memory, and ordinary tokenizers are untouched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, copy_fixture, load_cached, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelkit
from modelkit.errors import TokenizerError
from modelkit.text import tokenizer as tokenizer_module
from modelkit.text.tokenizer import Tokenizer, superlinear_work

ORDINARY = "Hello world, this is an ordinary prompt with a few words in it!"


def _split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _replace(regex: str, content: str = "x") -> dict[str, Any]:
    return {"type": "Replace", "pattern": {"Regex": regex}, "content": content}


def _tokenizer_json(tmp: Path, name: str, **parts: Any) -> Path:
    """The fixtures' tokenizer.json with ``parts`` (pre_tokenizer, normalizer, decoder, model)
    replaced, written to ``tmp/name/tokenizer.json``."""
    data = json.loads((FIXTURES / "tokenizer.json").read_text(encoding="utf-8"))
    data.update(parts)
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def _load(folder: Path) -> Tokenizer:
    tok = Tokenizer.from_folder(folder)
    assert tok is not None
    return tok


@pytest.fixture
def short_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 s clock for encoding, so the hostile cases end quickly."""
    monkeypatch.setattr(tokenizer_module, "SECONDS", 2.0)
    monkeypatch.setattr(tokenizer_module, "SECONDS_PER_CHAR", 0.0)


# (pre-tokenizer or normalizer, text): each panics the library or backtracks past the clock
HOSTILE = {
    "nested words then end": ({"pre_tokenizer": _split(r"(\w+\s?)+$")}, ORDINARY),
    "nested plus": ({"pre_tokenizer": _split(r"(a+)+$")}, "a" * 40 + "!"),
    "alternation of equals": ({"pre_tokenizer": _split(r"(a|a)*$")}, "a" * 40 + "!"),
    "overlapping alternation": ({"pre_tokenizer": _split(r"(a|aa)+c")}, "a" * 60),
    "classes that overlap": ({"pre_tokenizer": _split(r"(\w|\d)+$")}, "1" * 40 + "!"),
    "adjacent pluses": ({"pre_tokenizer": _split(r"(x+x+)+y")}, "x" * 40),
    "normalizer regex": ({"normalizer": _replace(r"(\s*)*$")}, " " * 40 + "!"),
    "many start positions": ({"pre_tokenizer": _split(r"(a+)+$")}, ("a" * 22 + "!") * 400),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_regexes_end_in_one_error_quickly(tmp_path: Path, short_limits: None, name: str) -> None:
    parts, text = HOSTILE[name]
    tok = _load(_tokenizer_json(tmp_path, "t", **parts))
    assert tok.bounded
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError) as info:
        tok.encode(text)
    assert time.perf_counter() - t0 < 8.0
    message = str(info.value)
    assert message.startswith(str(tmp_path / "t" / "tokenizer.json") + ": ") and "\n" not in message
    assert "backtracks too far" in message or "ran for more than 2 s" in message, message


def test_a_regex_in_the_decoder_is_bounded_too(tmp_path: Path) -> None:
    tok = _load(_tokenizer_json(tmp_path, "t", decoder={"type": "Sequence", "decoders": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        _replace(r"(a+)+b")]}))
    assert tok.decoder_bounded and not tok.bounded
    ids = tok.encode("a" * 60, add_special_tokens=False)
    with pytest.raises(TokenizerError, match="decoding .* ids failed: a regex of the tokenizer backtracks"):
        tok.decode(ids)
    assert tok.decode(tok.encode("hello", add_special_tokens=False)) == "hello"


def test_a_panic_through_the_cli_is_one_line_and_prints_nothing_else(tmp_path: Path) -> None:
    """The Rust panic message ("thread ... panicked at ...") must not reach the terminal."""
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"] = _split(r"(\w+\s?)+$")
    (folder / "tokenizer.json").write_text(json.dumps(data))
    proc = run_cli("run", "--model", folder, "--prompt", ORDINARY, "-n", "2")
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelkit: error: "), proc.stderr
    assert "backtracks too far" in lines[0] and "panicked" not in proc.stderr


def test_without_fork_a_panic_is_still_a_tokenizer_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = _load(_tokenizer_json(tmp_path, "t", pre_tokenizer=_split(r"(a+)+$")))
    monkeypatch.delattr(os, "fork")  # as on Windows: in-process, the library's panic caught there
    with pytest.raises(TokenizerError, match="backtracks too far"):
        tok.encode("a" * 40 + "!")


def test_memory_past_the_limit_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = _load(_tokenizer_json(tmp_path, "t", pre_tokenizer=_split(r"\s+")))
    monkeypatch.setattr(tokenizer_module, "MEMORY", 32 << 20)
    monkeypatch.setattr(tokenizer_module, "MEMORY_PER_CHAR", 0)
    # the library aborts when an allocation fails (a Rust abort, not a MemoryError)
    with pytest.raises(TokenizerError, match=r"stopped encoding 2,000,000 characters: it (needed more than 32 MiB|"
                                             r"aborted, most likely for want of memory \(it may use 32 MiB)"):
        tok.encode("word " * 400_000)


def test_bounded_encoding_gives_the_library_s_ids(tmp_path: Path) -> None:
    # Llama 3's split regex, as its tokenizer.json writes it: a regex, so encoding is bounded
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = _load(_tokenizer_json(tmp_path, "t", pre_tokenizer={"type": "Sequence", "pretokenizers": [
        _split(llama3), {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}))
    assert tok.bounded
    text = "Hello, world! 12345 numbers\n\nand  spaces " * 50
    assert tok.encode(text) == tok.backend.encode(text).ids
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_ordinary_tokenizers_encode_in_process() -> None:
    """The fixtures' GPT-2 tokenizer (built-in splitting, BPE) and a GGUF one (llama.cpp's
    regexes) do linear work: no child process per call."""
    tok = load_cached("llama_gqa").tokenizer
    assert not tok.bounded and not tok.decoder_bounded
    assert superlinear_work(tok.backend) is None


@pytest.mark.parametrize("model,reason", [
    ({"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
      "max_input_chars_per_word": 10 ** 9, "vocab": {"[UNK]": 0, "a": 1, "##a": 2}}, "WordPiece words"),
    ({"type": "Unigram", "unk_id": 0, "byte_fallback": False,
      "vocab": [["<unk>", 0.0], ["a", -1.0], ["a" * 5000, -2.0]]}, "Unigram vocabulary has a token of 5,000"),
])
def test_quadratic_models_are_bounded(tmp_path: Path, model: dict[str, Any], reason: str) -> None:
    tok = _load(_tokenizer_json(tmp_path, "t", model=model, pre_tokenizer=None, decoder=None, post_processor=None,
                                added_tokens=[]))
    assert reason in (superlinear_work(tok.backend) or "") and tok.bounded
    assert tok.encode("a" * 3000)  # a long word: correct, within the limits


@pytest.mark.parametrize("ids,needle", [
    ([-1], "token id -1 cannot be decoded"),
    ([2 ** 40], "cannot be decoded"),
    (["x"], "must be integers"),
    ([None], "must be integers"),
])
def test_decoding_bad_ids_is_one_error(ids: list[Any], needle: str) -> None:
    with pytest.raises(TokenizerError, match=needle):
        load_cached("llama_gqa").tokenizer.decode(ids)


def test_encoding_what_is_not_text_is_one_error() -> None:
    tok = load_cached("llama_gqa").tokenizer
    with pytest.raises(TokenizerError, match="must be a string"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="not a valid Unicode string"):
        tok.encode("caf\udce9")


def test_a_tokenizer_json_the_library_cannot_compile_is_one_error(tmp_path: Path) -> None:
    for regex in ("(a", "a{1000000}"):
        with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
            _load(_tokenizer_json(tmp_path, "t", pre_tokenizer=_split(regex)))
    # and a model folder with it: one line through load
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "tokenizer.json").write_text(json.dumps({**json.loads((folder / "tokenizer.json").read_text()),
                                                       "pre_tokenizer": _split("(a")}))
    with pytest.raises(modelkit.TokenizerError, match="unmatched parenthesis"):
        modelkit.load(folder)


REGEX_PIECES = st.sampled_from(["a", "b", r"\w", r"\s", ".", "(", ")", "(?:", "+", "*", "?", "{2,}", "|", "$",
                                "^", r"\p{L}", "[ab]", r"\1", "(?=a)", "(?!b)"])


@settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(regex=st.lists(REGEX_PIECES, min_size=1, max_size=10).map("".join),
       text=st.sampled_from([ORDINARY, "a" * 40 + "!", "ab " * 30, "\n\n  x", "aaaa" * 12]))
def test_any_split_regex_encodes_or_fails_cleanly(tmp_path_factory: pytest.TempPathFactory, short_limits: None,
                                                  regex: str, text: str) -> None:
    folder = _tokenizer_json(tmp_path_factory.mktemp("fuzz"), "t", pre_tokenizer=_split(regex))
    t0 = time.perf_counter()
    try:
        tok = _load(folder)
        ids = tok.encode(text)
        assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
        assert isinstance(tok.decode(ids), str)
    except TokenizerError as exc:
        assert "\n" not in str(exc) and str(exc)
    assert time.perf_counter() - t0 < 8.0
