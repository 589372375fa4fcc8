r"""Tokenizers from tokenizer.json, through the `tokenizers` library.

tokenizer.json is data, but some of it is work done on the user's text. Most of that work is
linear in the text (BPE merges, added-token matching, Unicode normalisation, the built-in
splitters), but a file can choose work that is not:

- its own regexes (pre-tokenizer splits, normalizer and decoder replacements): the library
  uses Oniguruma, a backtracking engine whose limit (10 million retries) holds per match
  attempt, not per search, so a regex such as ``(\w+\s?)+$`` panics on an ordinary prompt (a
  Rust panic, a ``BaseException``) or, on a text made for it, takes a second per character;
- a ``Precompiled`` normalizer (a binary character map, looked up by longest match);
- WordPiece's per-word search above :data:`LONGEST_WORD` characters and a Unigram vocabulary
  with tokens longer than that (both search every start position that far: quadratic).

A tokenizer with any of these encodes in a forked child held to time and memory limits that
grow with the text (:mod:`modelkit.text.bounded`); one without encodes in-process. Either way
every failure, a panic included, is one :class:`TokenizerError`. Decoding runs in-process (it
is called for every generated token) unless the decoder holds a regex.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..checkpoint.files import read_json_if_present, read_side_text, read_text_file
from ..errors import TokenizerError, out_of_memory
from .bounded import ChildFailed, LimitExceeded, Limits, Result, run_bounded

# what encoding a text of n characters may use: real tokenizers take 2-4 microseconds and
# about 280 bytes per character (2 M characters in 6 s and 560 MB on a busy machine)
SECONDS = 10.0
SECONDS_PER_CHAR = 20e-6
MEMORY = 1 << 30
MEMORY_PER_CHAR = 512
# ids per character at most (byte fallback gives up to 4; the template's specials are few)
IDS_PER_CHAR = 8
# decoding with a regex in the decoder: the same, per id (tokens are at most a few hundred
# characters long)
SECONDS_PER_ID = 1e-3
MEMORY_PER_ID = 64 << 10
CHARS_PER_ID = 64 << 10
# WordPiece words and Unigram tokens longer than this make encoding quadratic: bounded then
# (real vocabularies' longest tokens are a few hundred characters; WordPiece's default is 100)
LONGEST_WORD = 1024

# tokenizer.json is the one large side file (Gemma 3's is 33 MB); four times that is refused
# before the tokenizers library parses it
MAX_TOKENIZER_BYTES = 128 << 20


class Tokenizer:
    """Encode and decode text exactly as the checkpoint's tokenizer.json does.

    ``encode`` applies the tokenizer's own post-processor (so it adds a BOS only where
    tokenizer.json says so) and nothing of modelkit's own. ``special_ids`` are the added special
    tokens, skipped by ``decode`` unless asked.
    """

    def __init__(self, backend: Any, *, chat_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None,
                 extra: dict[str, Any] | None = None, chat_template_file: str | None = None,
                 source: str = "tokenizer", bounded: bool | None = None):
        self.backend = backend
        self.source = source  # the file it came from, for messages
        # encode in a bounded child? (None: when the file chose superlinear work; False: the
        # caller vouches for the tokenizer, as the GGUF plugin does for llama.cpp's regexes)
        self.bounded = superlinear_work(backend) is not None if bounded is None else bool(bounded)
        self.decoder_bounded = _holds(backend.decoder, "Regex") if bounded is None else bool(bounded)
        self.chat_template = chat_template
        self.chat_template_file = chat_template_file
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.extra = extra or {}
        self.special_ids = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}

    def special_tokens(self) -> dict[str, Any]:
        """The named special tokens a chat template may use (bos_token, eos_token, unk_token,
        pad_token, ..., additional_special_tokens), from tokenizer_config.json."""
        out: dict[str, Any] = {}
        for key in SPECIAL_TOKEN_KEYS:
            text = _token_text(self.extra.get(key))
            if text is not None:
                out[key] = text
        if self.bos_token:
            out["bos_token"] = self.bos_token
        if self.eos_token:
            out["eos_token"] = self.eos_token
        extra = self.extra.get("additional_special_tokens") or self.extra.get("extra_special_tokens")
        if isinstance(extra, list):
            out["additional_special_tokens"] = [t for t in map(_token_text, extra) if t is not None]
        return out

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for ``text``. With :attr:`bounded`, computed in a child process held to
        time and memory limits that grow with the text (:data:`SECONDS` + :data:`SECONDS_PER_CHAR`
        per character, :data:`MEMORY` + :data:`MEMORY_PER_CHAR` per character)."""
        if not isinstance(text, str):
            raise TokenizerError(f"the text to encode must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (undecodable bytes passed through)
            raise TokenizerError("the text to encode is not a valid Unicode string") from None
        backend, n = self.backend, len(text)

        def work() -> list[int]:
            return list(backend.encode(text, add_special_tokens=add_special_tokens).ids)

        if not self.bounded:
            return self._in_process(work, f"encoding {n:,} characters")
        limits = Limits(SECONDS + SECONDS_PER_CHAR * n, MEMORY + MEMORY_PER_CHAR * n, IDS_PER_CHAR * n + 4096)
        return self._bounded(work, limits, f"encoding {n:,} characters")

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text for ``ids`` (special tokens dropped by default). Ids the vocabulary lacks decode
        to nothing; negative ones and ids past 2**32 are errors."""
        try:
            ids = [int(i) for i in ids]
        except (TypeError, ValueError, OverflowError):
            raise TokenizerError("the ids to decode must be integers") from None
        bad = next((i for i in ids if not 0 <= i < 2 ** 32), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} cannot be decoded (ids are 0 and up, below 2**32)")
        backend = self.backend

        def work() -> str:
            return backend.decode(ids, skip_special_tokens=skip_special_tokens)

        n = len(ids)
        if not self.decoder_bounded:
            return self._in_process(work, f"decoding {n:,} ids")
        limits = Limits(SECONDS + SECONDS_PER_ID * n, MEMORY + MEMORY_PER_ID * n, CHARS_PER_ID * (n + 1))
        return self._bounded(work, limits, f"decoding {n:,} ids")

    def _in_process(self, work: Callable[[], Result], doing: str) -> Result:
        """``work()`` here; every way it can fail is one TokenizerError (or OutOfMemoryError)."""
        try:
            return work()
        except BaseException as exc:  # noqa: BLE001 - a Rust panic is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if isinstance(exc, MemoryError):
                raise out_of_memory(f"{doing} with {self.source}", exc) from None
            raise TokenizerError(f"{self.source}: {doing} failed: "
                                 f"{_library_error(type(exc).__name__, str(exc))}") from None

    def _bounded(self, work: Callable[[], Result], limits: Limits, doing: str) -> Result:
        """``work()`` in a child held to ``limits`` (in-process where there is no fork); every
        way it can fail is one TokenizerError."""
        try:
            return run_bounded(lambda: self._in_process(work, doing), limits)
        except LimitExceeded as exc:
            raise TokenizerError(f"{self.source}: stopped {doing}: {exc} (the limit for this text: "
                                 f"{limits.seconds:.3g} s, {limits.memory_bytes >> 20:,} MiB)") from None
        except ChildFailed as exc:
            raise TokenizerError(str(exc) if exc.kind == "TokenizerError" else
                                 f"{self.source}: {doing} failed: {_library_error(exc.kind, str(exc))}") from None

    def token_id(self, token: str) -> int | None:
        """The id of a token string (special or not), or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    @classmethod
    def from_folder(cls, folder: Path) -> "Tokenizer | None":
        """The tokenizer of a Hugging Face folder, or None without tokenizer.json."""
        path = folder / "tokenizer.json"
        if not path.exists() and not path.is_symlink():
            return None
        text = read_text_file(path, MAX_TOKENIZER_BYTES, TokenizerError, "tokenizer.json")
        from tokenizers import Tokenizer as Backend

        try:
            backend = Backend.from_str(text)
        except BaseException as exc:  # noqa: BLE001 - a bare Exception for bad files, a panic for worse
            if isinstance(exc, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({_first_line(exc)})") from None
        # special_tokens_map.json is the older home of the special tokens; tokenizer_config.json wins
        tok_cfg = {**read_json_if_present(folder / "special_tokens_map.json"),
                   **read_json_if_present(folder / "tokenizer_config.json")}
        template, template_file = _find_chat_template(folder, tok_cfg)
        return cls(backend, chat_template=template, bos_token=_token_text(tok_cfg.get("bos_token")),
                   eos_token=_token_text(tok_cfg.get("eos_token")), extra=tok_cfg,
                   chat_template_file=template_file, source=str(path))


# names of the special tokens transformers hands to chat templates
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _find_chat_template(folder: Path, tok_cfg: dict[str, Any]) -> tuple[str | None, str | None]:
    """The chat template and the file it came from: chat_template.jinja, else chat_template.json
    ({"chat_template": ...}), else tokenizer_config.json's chat_template."""
    jinja = folder / "chat_template.jinja"
    text = read_side_text(jinja)
    if text is not None:
        return text, str(jinja)
    where = folder / "chat_template.json"
    template = read_json_if_present(where).get("chat_template")
    if template is None:
        where = folder / "tokenizer_config.json"
        template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{where}: chat_template must be a string")
    return template, (str(where) if template is not None else None)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _library_error(kind: str, message: str) -> str:
    """What the tokenizers library said, in one line; Oniguruma giving up gets the reason."""
    first = message.strip().splitlines()[0][:200] if message.strip() else kind
    if "retry-limit" in first or "match-stack-limit" in first:
        return f"a regex of the tokenizer backtracks too far on this text (the library gave up: {first})"
    return first if kind in ("Exception", "PanicException") else f"{kind}: {first}"


def superlinear_work(backend: Any) -> str | None:
    """Why encoding with ``backend`` (a ``tokenizers.Tokenizer``) can take more than linear time
    in the text, or None: a regex or a Precompiled map in its normalizer or pre-tokenizer, or a
    WordPiece or Unigram model that searches more than :data:`LONGEST_WORD` characters ahead."""
    for part, name in ((backend.normalizer, "normalizer"), (backend.pre_tokenizer, "pre-tokenizer")):
        for kind in ("Regex", "Precompiled"):
            if _holds(part, kind):
                return f"its {name} holds a {kind.lower()}"
    model = backend.model
    kind = type(model).__name__
    if kind == "WordPiece" and getattr(model, "max_input_chars_per_word", 0) > LONGEST_WORD:
        return f"its WordPiece words may be {model.max_input_chars_per_word:,} characters long"
    if kind == "Unigram":
        longest = max(map(len, backend.get_vocab(with_added_tokens=False)), default=0)
        if longest > LONGEST_WORD:
            return f"its Unigram vocabulary has a token of {longest:,} characters"
    return None


def _holds(component: Any, kind: str) -> bool:
    """True when a tokenizer component (normalizer, pre-tokenizer, decoder) holds ``kind``
    anywhere: a ``Regex`` pattern, or a part of that type (``Precompiled``)."""
    if component is None:
        return False
    try:
        state = json.loads(component.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return True  # cannot tell: treat it as holding one
    stack = [state]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if kind in item or item.get("type") == kind:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
