"""Multi-turn chat that keeps the model's cache between turns.

Each turn renders the whole conversation with the chat template and feeds the model only the
tokens its cache does not hold yet. The cache is reused only when the tokens it holds are an
exact prefix of the new prompt (a Mamba state cannot be rolled back, so no cache is ever
truncated); when a template rewrites history the cache is rebuilt from scratch.

So that a reply's own tokens stay in the cache (re-encoding the reply text may split it into
different tokens), the new prompt is built as the cached tokens plus the encoding of the text
that follows the cached text, whenever the rendered conversation starts with that text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import GenerationError
from ..text.chat_template import apply_chat_template

if TYPE_CHECKING:
    from ..model import Model

class ChatSession:
    """A conversation with ``model``: ``send(text)`` yields the reply's pieces and records it.

    ``options`` are the generation options of :func:`modelkit.generation.loop.stream`
    (max_new_tokens, temperature, ..., stop_strings).
    """

    def __init__(self, model: Model, system: str | None = None, **options: Any):
        if model.tokenizer is None:
            raise GenerationError("the model has no tokenizer.json, so it cannot chat")
        self.model = model
        self.system = system
        self.options = options
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays) and drop the cache."""
        self.messages: list[dict[str, str]] = []
        if self.system is not None:
            self.messages.append({"role": "system", "content": self.system})
        self.cache: Any = None
        self.cache_text = ""  # the text the cache's tokens stand for

    def prompt_ids(self, text: str) -> tuple[list[int], list[int]]:
        """(all ids of the rendered conversation ``text``, the ids still to feed); resets the
        cache when it cannot be reused."""
        tok = self.model.tokenizer
        cache = self.cache
        if cache is not None and self.cache_text and text.startswith(self.cache_text):
            ids = list(cache.tokens) + tok.encode(text[len(self.cache_text):], add_special_tokens=False)
        else:
            ids = tok.encode(text, add_special_tokens=False)
        n = len(cache.tokens) if cache is not None else 0
        if cache is not None and len(ids) > n and ids[:n] == cache.tokens:
            return ids, ids[n:]
        self.cache = self.model.make_cache()
        return ids, ids

    def send(self, text: str, *, stats: Any = None,
             should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
        """Add a user message and stream the reply (:class:`modelkit.generation.loop.Piece` objects).
        The reply, even a partial one, joins the conversation when the stream ends."""
        self.messages.append({"role": "user", "content": text})
        try:
            rendered = apply_chat_template(self.model.tokenizer, self.messages, add_generation_prompt=True)
            ids, new = self.prompt_ids(rendered)
            pieces = self.model.stream(new, cache=self.cache, stats=stats, should_stop=should_stop,
                                       **self.options)
        except BaseException:
            self.messages.pop()
            raise
        return self._reply(pieces, rendered, len(ids))

    def _reply(self, pieces: Any, rendered: str, n_prompt: int) -> Iterator[Any]:
        reply: list[str] = []
        try:
            for piece in pieces:
                reply.append(piece.text)
                yield piece
        except GeneratorExit:
            # the caller stopped reading between tokens: the cache is consistent, keep the part
            pieces.close()
            self._record("".join(reply), rendered, n_prompt)
            raise
        except BaseException:
            # a failure inside the model may leave the cache half-updated: start over next turn
            self.messages.pop()
            self.cache, self.cache_text = None, ""
            raise
        self._record("".join(reply), rendered, n_prompt)

    def _record(self, reply: str, rendered: str, n_prompt: int) -> None:
        """Add the reply to the conversation and note the text the cache now stands for."""
        self.messages.append({"role": "assistant", "content": reply})
        fed = self.cache.tokens[n_prompt:]  # the reply tokens the cache holds (all but the last)
        tail = self._continuation(self.cache.tokens[:n_prompt], fed)
        self.cache_text = rendered + tail if tail is not None else ""

    def _continuation(self, context: list[int], ids: list[int]) -> str | None:
        """The text of ``ids`` decoded after ``context`` (so tokenizers that strip a leading
        space agree), or None when it cannot be told apart."""
        tok = self.model.tokenizer
        ctx = context[-4:]
        full = tok.decode(ctx + ids, skip_special_tokens=False)
        head = tok.decode(ctx, skip_special_tokens=False)
        return full[len(head):] if full.startswith(head) else None
