"""Tokenizers from tokenizer.json (through the `tokenizers` library) and generation settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .errors import TokenizerError


class Tokenizer:
    """Encode and decode text exactly as the checkpoint's tokenizer.json does.

    ``encode`` applies the tokenizer's own post-processor (so it adds a BOS only where
    tokenizer.json says so) and nothing of modelkit's own. ``special_ids`` are the added special
    tokens, skipped by ``decode`` unless asked.
    """

    def __init__(self, backend: Any, *, chat_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None,
                 extra: dict[str, Any] | None = None):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.extra = extra or {}
        self.special_ids = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for ``text``."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

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
        tok_cfg = read_json_if_present(folder / "tokenizer_config.json")
        template = tok_cfg.get("chat_template")
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            template = jinja.read_text(encoding="utf-8", errors="replace")
        if isinstance(template, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is not None and not isinstance(template, str):
            raise TokenizerError(f"{folder / 'tokenizer_config.json'}: chat_template must be a string")
        return cls(backend, chat_template=template, bos_token=_token_text(tok_cfg.get("bos_token")),
                   eos_token=_token_text(tok_cfg.get("eos_token")), extra=tok_cfg)


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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None
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
