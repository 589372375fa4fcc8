"""Turning ids that arrive one at a time into text, never splitting a character."""

from __future__ import annotations

from typing import Sequence

from .tokenizer import Tokenizer


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
