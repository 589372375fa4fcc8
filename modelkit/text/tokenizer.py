"""Tokenizers from tokenizer.json, through the `tokenizers` library."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from ..checkpoint.files import read_json_if_present, read_side_text, read_text_file
from ..errors import TokenizerError

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
        if not path.exists() and not path.is_symlink():
            return None
        text = read_text_file(path, MAX_TOKENIZER_BYTES, TokenizerError, "tokenizer.json")
        from tokenizers import Tokenizer as Backend

        try:
            backend = Backend.from_str(text)
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
