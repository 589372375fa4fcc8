"""Perplexity of a model over a tokenized text, by two methods.

``llama.cpp`` (its ``llama-perplexity``): the tokens are cut into ``n = len // ctx`` chunks of
``ctx`` tokens (the rest is dropped; at least two chunks are needed); each chunk is evaluated
from an empty cache, its first token replaced by BOS when the tokenizer adds one, and only its
second half is scored: the tokens at positions ``ctx/2 + 1 .. ctx - 1``, each from the logits
of the position before (``ctx - ctx/2 - 1`` tokens per chunk).

``sliding`` (the strided sliding window of transformers' perplexity guide): windows of at most
``ctx`` tokens start every ``stride`` tokens (``stride <= ctx``, default ``ctx / 2``); each
window scores the tokens past the previous window's end, so every token but the first is scored
exactly once, with at least ``ctx - stride`` tokens of context where the text has them (with
``stride == ctx`` the windows are disjoint and each one's first token, which has no context in
it, goes unscored, as in the guide). The
guide's code weights each window's mean loss by one token fewer than it averages over once the
windows overlap; here the log-probabilities themselves are summed, so every token counts once.

Both report ``exp(mean NLL)`` and, as llama.cpp does, its standard error
``ppl * sqrt(var(NLL) / (n - 1))``. Windows run in pieces of ``batch`` tokens through one cache
(the result does not depend on it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from ..errors import EvaluationError
from .logprobs import chosen_logprobs

if TYPE_CHECKING:
    from ..model import Model

METHODS = ("llama.cpp", "sliding")


class Window(NamedTuple):
    """One forward pass: the ids it reads and the rows whose next token it scores
    (row ``p`` predicts ``ids[p + 1]``, for ``p`` in ``first_row .. len(ids) - 2``)."""

    ids: np.ndarray
    first_row: int


@dataclass
class Perplexity:
    """Running totals of the negative log-likelihood over the scored tokens."""

    method: str
    ctx: int
    stride: int | None
    text_tokens: int
    windows: int
    scored: int = 0
    nll: float = 0.0   # sum of -log p
    nll2: float = 0.0  # sum of (log p)^2

    def add(self, logprobs: np.ndarray) -> None:
        lp = logprobs.astype(np.float64)
        self.scored += lp.size
        self.nll -= float(lp.sum())
        self.nll2 += float(np.dot(lp, lp))

    @property
    def value(self) -> float:
        """exp(mean NLL) so far (NaN before any token is scored)."""
        return math.exp(self.nll / self.scored) if self.scored else math.nan

    @property
    def stderr(self) -> float:
        """The standard error of the perplexity (llama.cpp's ``+/-``); NaN under two tokens."""
        n = self.scored
        if n < 2:
            return math.nan
        mean = self.nll / n
        var = self.nll2 / n - mean * mean
        return self.value * math.sqrt(max(var, 0.0) / (n - 1))


def llama_cpp_windows(ids: np.ndarray, ctx: int, bos: int | None) -> list[Window]:
    """llama.cpp's chunks (see the module docstring); ``bos`` replaces each chunk's first token."""
    if ids.size < 2 * ctx:
        raise EvaluationError(f"the text has {ids.size} tokens; the llama.cpp method needs at least "
                              f"2 x --ctx = {2 * ctx} (two chunks); give a longer text or a smaller --ctx")
    out = []
    for i in range(ids.size // ctx):
        chunk = ids[i * ctx:(i + 1) * ctx].copy()
        if bos is not None:
            chunk[0] = bos
        out.append(Window(chunk, ctx // 2))
    return out


def sliding_windows(ids: np.ndarray, ctx: int, stride: int) -> list[Window]:
    """transformers' strided windows (see the module docstring)."""
    if not 1 <= stride <= ctx:
        raise EvaluationError(f"--stride must be between 1 and --ctx ({ctx}), got {stride}")
    if ids.size < 2:
        raise EvaluationError(f"the text has {ids.size} token(s); perplexity needs at least 2")
    out, prev_end = [], 0
    for begin in range(0, ids.size, stride):
        end = min(begin + ctx, ids.size)
        # the first token scored is the one past the previous window (never the window's own first)
        first_target = max(prev_end, begin + 1)
        out.append(Window(ids[begin:end], first_target - begin - 1))
        prev_end = end
        if end == ids.size:
            break
    return out


def check_context(model: Model, ctx: int) -> None:
    """Refuse a context longer than the model's positions: its learned positions, or the
    ``max_position_embeddings`` it was trained for."""
    if ctx < 2:
        raise EvaluationError(f"--ctx must be at least 2 tokens, got {ctx}")
    learned = model.max_positions
    if learned is not None and ctx > learned:
        raise EvaluationError(f"--ctx {ctx} is larger than this model's {learned} learned positions")
    trained = model.config.raw.get("max_position_embeddings")
    if isinstance(trained, int) and not isinstance(trained, bool) and ctx > trained > 0:
        raise EvaluationError(f"--ctx {ctx} is larger than the {trained} positions this model was trained for "
                              "(max_position_embeddings in config.json)")


def windows_for(model: Model, ids: Sequence[int] | np.ndarray, method: str, ctx: int,
                stride: int | None = None) -> list[Window]:
    """The forward passes a method makes over ``ids``, after checking ``ctx`` against the model."""
    if method not in METHODS:
        raise EvaluationError(f"unknown perplexity method {method!r}; use one of {', '.join(METHODS)}")
    check_context(model, ctx)
    ids = np.asarray(ids, dtype=np.int64)
    if method == "llama.cpp":
        if stride is not None:
            raise EvaluationError("--stride belongs to the sliding method; llama.cpp's chunks do not overlap")
        return llama_cpp_windows(ids, ctx, _bos_if_added(model))
    return sliding_windows(ids, ctx, stride if stride is not None else max(ctx // 2, 1))


def perplexity(model: Model, ids: Sequence[int] | np.ndarray, *, method: str = "llama.cpp", ctx: int = 512,
               stride: int | None = None, batch: int | None = None,
               progress: Callable[[Perplexity], None] | None = None) -> Perplexity:
    """The perplexity of ``model`` over ``ids`` by ``method``; ``progress`` is called with the
    running totals after each window."""
    windows = windows_for(model, ids, method, ctx, stride)
    total = Perplexity(method, ctx, stride if method == "sliding" else None, int(np.asarray(ids).size), len(windows))
    if method == "sliding" and stride is None:
        total.stride = max(ctx // 2, 1)
    piece = batch if batch is not None else model.prefill_chunk
    if piece < 1:
        raise EvaluationError(f"--batch must be at least 1, got {piece}")
    for window in windows:
        for logprobs in _window_logprobs(model, window, piece):
            total.add(logprobs)
        if progress is not None:
            progress(total)
    return total


def _window_logprobs(model: Model, window: Window, piece: int) -> Iterator[np.ndarray]:
    """The scored log-probabilities of one window, piece by piece through one cache."""
    cache = model.make_cache()
    ids, last_row = window.ids, window.ids.size - 2
    for start in range(0, ids.size - 1, piece):
        logits = model.forward(ids[start:start + piece], cache)  # [n, V]
        lo, hi = max(window.first_row, start), min(last_row, start + logits.shape[0] - 1)
        if lo <= hi:
            yield chosen_logprobs(logits[lo - start:hi - start + 1], ids[lo + 1:hi + 2])


def _bos_if_added(model: Model) -> int | None:
    """The BOS id when the tokenizer puts one before a text (as llama.cpp's add_bos), else None."""
    tok = model.tokenizer
    if tok is None or not tok.bos_token:
        return None
    bos = tok.token_id(tok.bos_token)
    encoded = tok.encode("a")
    return bos if bos is not None and encoded and encoded[0] == bos else None
