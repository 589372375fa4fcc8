"""Tokenizers from tokenizer.json (through the `tokenizers` library) and generation settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import TokenizerError


class Tokenizer:
    """Encode and decode text exactly as the checkpoint's tokenizer.json does.

    ``encode`` applies the tokenizer's own post-processor (so it adds a BOS only where
    tokenizer.json says so) and nothing of modelkit's own. ``special_ids`` are the added special
    tokens, skipped by ``decode`` unless asked.
    """

    def __init__(self, backend: Any, *, chat_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None,
                 extra: dict[str, Any] | None = None, chat_template_file: str | None = None):
        self.backend = backend
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
        """Token ids for ``text``."""
        try:
            return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        except TypeError:  # not a str, or one with lone surrogates (undecodable bytes)
            raise TokenizerError("the text to encode is not a valid Unicode string") from None

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text for ``ids`` (special tokens dropped by default)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        """The id of a token string (special or not), or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    @classmethod
    def from_folder(cls, folder: Path) -> "Tokenizer | None":
        """The tokenizer of a Hugging Face folder, or None without tokenizer.json."""
        path = folder / "tokenizer.json"
        if not path.is_file():
            return None
        from tokenizers import Tokenizer as Backend

        try:
            backend = Backend.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises a bare Exception for bad files
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0][:200]})") from None
        # special_tokens_map.json is the older home of the special tokens; tokenizer_config.json wins
        tok_cfg = {**read_json_if_present(folder / "special_tokens_map.json"),
                   **read_json_if_present(folder / "tokenizer_config.json")}
        template, template_file = _find_chat_template(folder, tok_cfg)
        return cls(backend, chat_template=template, bos_token=_token_text(tok_cfg.get("bos_token")),
                   eos_token=_token_text(tok_cfg.get("eos_token")), extra=tok_cfg,
                   chat_template_file=template_file)


# names of the special tokens transformers hands to chat templates
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _find_chat_template(folder: Path, tok_cfg: dict[str, Any]) -> tuple[str | None, str | None]:
    """The chat template and the file it came from: chat_template.jinja, else chat_template.json
    ({"chat_template": ...}), else tokenizer_config.json's chat_template."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8"), str(jinja)
        except UnicodeDecodeError:
            raise TokenizerError(f"{jinja}: not UTF-8 text") from None
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


def read_json_if_present(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, {} when absent; a malformed file is a TokenizerError."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise TokenizerError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return data


def load_tokenizer(source: Any) -> Tokenizer | None:
    """The tokenizer a weight source provides, or the one in its folder, or None."""
    tok = source.tokenizer()
    if tok is not None:
        return tok
    folder = source.folder()
    return Tokenizer.from_folder(folder) if folder is not None else None


def load_generation_config(source: Any) -> dict[str, Any]:
    """generation_config.json of the checkpoint folder ({} when absent)."""
    getter = getattr(source, "generation_config", None)
    if callable(getter):
        return getter()
    folder = source.folder()
    if folder is None:
        return {}
    try:
        return read_json_if_present(folder / "generation_config.json")
    except TokenizerError:
        return {}


class IncrementalDecoder:
    """Text for ids that arrive one at a time, without re-decoding everything each time.

    Decodes only a short window: the ids since the last emitted piece plus the piece before
    them (``prefix``), and emits the difference between the two decodings. That keeps
    decoders that strip or add a leading space at the start of a decode (SentencePiece)
    correct, and holds text back while it ends in U+FFFD, i.e. while a multi-byte UTF-8
    character is split across byte-level tokens. ``context`` (say the prompt's last ids)
    seeds the window so the first piece decodes as a continuation.
    """

    # a UTF-8 character is at most 4 bytes: a longer run ending in U+FFFD is really invalid bytes
    MAX_HELD = 4
    CONTEXT = 4

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = [int(i) for i in list(context)[-self.CONTEXT:]]
        self.prefix = 0                 # window start
        self.read = len(self.ids)       # ids before this are already emitted
        self._prefix_text = self._decode(self.ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""

    def add(self, token_id: int) -> str:
        """Append one id; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(int(token_id))
        text = self._decode(self.ids[self.prefix:])
        held = len(self.ids) - self.read
        if text.endswith("\ufffd") and held < self.MAX_HELD:
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        if self.read == len(self.ids):
            return ""
        return self._emit(self._decode(self.ids[self.prefix:]))

    def _emit(self, text: str) -> str:
        # the window decodes as prefix text + new text; a decoder that rewrites the boundary
        # (rare) still yields everything past the common part
        if text.startswith(self._prefix_text):
            new = text[len(self._prefix_text):]
        else:
            common = 0
            for a, b in zip(text, self._prefix_text):
                if a != b:
                    break
                common += 1
            new = text[common:]
        # slide the window: the ids just emitted become the next prefix
        del self.ids[:self.read]
        self.prefix, self.read = 0, len(self.ids)
        self._prefix_text = self._decode(self.ids)
        return new
