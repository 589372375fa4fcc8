"""Prefix caching: copies of a model's whole cache (KV for attention, conv and SSM state for
Mamba) at the ends of served prompts and replies, so a request that extends one prefills only
what is new.

A Mamba state cannot be rolled back to an earlier position, so a snapshot is only reused when
its tokens are an exact prefix of the new prompt, and it is copied, never continued in place.
Memory is bounded: entries are dropped least recently used first once their bytes pass the
limit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..model import Cache


@dataclass
class _Entry:
    ids: tuple[int, ...]
    text: str | None  # the rendered text these ids stand for (chat), when known
    cache: Any
    nbytes: int


class PrefixCache:
    """Snapshots keyed by their token ids, at most ``max_bytes`` in all (0 turns caching off).
    Thread-safe; ``stats()`` gives hits, misses, bytes and entries."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.bytes = 0
        self.reused_tokens = 0

    def lookup(self, ids: Sequence[int]) -> tuple[list[int], Cache] | None:
        """The longest stored prefix of a prompt's ``ids`` and a fresh copy of its cache, or None
        (a miss). A prefix is shorter than the prompt: at least one token is left to prefill,
        so the prompt's last logits are computed."""
        if not self.max_bytes:
            return None
        key = tuple(int(i) for i in ids)
        with self._lock:
            best = None
            for entry in self._entries.values():
                n = len(entry.ids)
                if n < len(key) and (best is None or n > len(best.ids)) and key[:n] == entry.ids:
                    best = entry
            return self._hit(best)

    def continuation(self, text: str) -> tuple[list[int], str] | None:
        """(ids, text) of the entry with the longest text that ``text`` starts with (and is
        longer than), or None. A chat prompt is then encoded as those ids plus the encoding of
        the rest of ``text``, so a reply's own tokens are reused even where encoding its text
        again would split it differently (as :class:`modelkit.generation.chat.ChatSession`
        does). Counts nothing: :meth:`lookup` on the resulting ids does."""
        if not self.max_bytes:
            return None
        with self._lock:
            best = None
            for entry in self._entries.values():
                t = entry.text
                if t is not None and len(t) < len(text) and text.startswith(t) and (
                        best is None or len(t) > len(best.text)):
                    best = entry
            return (list(best.ids), best.text) if best is not None else None

    def _hit(self, entry: _Entry | None) -> tuple[list[int], Cache] | None:
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(entry.ids)
        self.hits += 1
        self.reused_tokens += len(entry.ids)
        return list(entry.ids), entry.cache.snapshot()

    def store(self, cache: Cache, text: str | None = None) -> None:
        """Keep a copy of ``cache`` keyed by the tokens it holds (replacing an equal key)."""
        if not self.max_bytes or not cache.tokens:
            return
        key = tuple(cache.tokens)
        size = cache.nbytes()
        if size > self.max_bytes:
            return
        copy_ = cache.snapshot()
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._entries[key] = _Entry(key, text, copy_, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= dropped.nbytes
                self.evictions += 1

    def stats(self) -> dict[str, int]:
        """Counts for /health and /metrics."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries),
                    "bytes": self.bytes, "max_bytes": self.max_bytes, "evictions": self.evictions,
                    "reused_tokens": self.reused_tokens}
