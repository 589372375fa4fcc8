"""Log-probabilities of tokens under a model: a stable log-softmax, the score of a text, and the
top-k alternatives of one position.

Every number is the model's own distribution: the log-softmax of its logits, before any
repetition penalty, temperature or truncation a sampler applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from ..errors import GenerationError, TokenizerError

if TYPE_CHECKING:
    from ..model import Model


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) over the last axis, float32 ``[...]`` for logits ``[..., V]``,
    computed stably (the row maximum is taken out before exp); refuses NaN or infinite rows."""
    z = logits if logits.dtype == np.float32 else logits.astype(np.float32)
    top = z.max(axis=-1, keepdims=True)  # [..., 1]
    if not np.isfinite(top).all():
        raise GenerationError("the model produced logits that are NaN or infinite, so no log-probability "
                              "can be computed; its weights may hold NaN or inf (`modelkit validate "
                              "--values` checks them)")
    # the exp terms sum in float32, pairwise: relative error ~1e-7 over 100k-token rows; a logit
    # so far below the maximum that the difference overflows is -inf, a probability of 0
    with np.errstate(over="ignore"):
        total = np.exp(z - top).sum(axis=-1)  # [...], each term in [0, 1], the largest exactly 1
    return (top[..., 0] + np.log(total)).astype(np.float32, copy=False)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-probabilities ``[..., V]`` for logits ``[..., V]`` (a new array)."""
    z = logits.astype(np.float32)  # a copy
    with np.errstate(over="ignore"):  # -inf for a probability float32 cannot hold
        z -= log_normalizer(z)[..., None]
    return z


def chosen_logprobs(logits: np.ndarray, targets: Sequence[int] | np.ndarray) -> np.ndarray:
    """float32 ``[T]``: the log-probability row ``t`` of ``logits [T, V]`` gives ``targets[t]``."""
    targets = np.asarray(targets, dtype=np.intp)
    rows = np.arange(targets.size)
    return (logits[rows, targets] - log_normalizer(logits)).astype(np.float32, copy=False)


class TokenLogprob(NamedTuple):
    """One generated token, its log-probability, and the ``k`` most likely tokens at its
    position with theirs (best first; the chosen token is among them when it ranks there)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    """The :class:`TokenLogprob` of ``token`` for one logits row ``[V]`` with ``k`` alternatives."""
    norm = float(log_normalizer(logits))
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, logits.size)
        best = np.argpartition(logits, logits.size - k)[logits.size - k:]
        best = best[np.argsort(-logits[best], kind="stable")]
        top = tuple((int(i), float(np.float32(logits[i] - norm))) for i in best)
    return TokenLogprob(int(token), float(np.float32(logits[token] - norm)), top)


@dataclass(frozen=True)
class Scores:
    """What :func:`score` measured: the token ids ``[T]`` and ``logprobs [T-1]`` float32, where
    ``logprobs[j]`` is log p(ids[j+1] | ids[:j+1]) (the first token has no context to be
    predicted from)."""

    ids: np.ndarray
    logprobs: np.ndarray

    @property
    def nll(self) -> float:
        """The total negative log-likelihood of the scored tokens (summed in float64)."""
        return float(-self.logprobs.sum(dtype=np.float64))

    @property
    def perplexity(self) -> float:
        """exp(mean negative log-likelihood); NaN when no token was scored."""
        n = self.logprobs.size
        return math.exp(self.nll / n) if n else math.nan


def score(model: Model, text_or_ids: str | Sequence[int] | np.ndarray) -> Scores:
    """Per-token log-probabilities of a text (encoded with the tokenizer's own special tokens,
    as ``modelkit run`` encodes a prompt) or of token ids, under one forward pass.

    The sequence runs in pieces of the model's ``prefill_chunk`` tokens through one cache, and
    only the chosen tokens' log-probabilities are kept, so memory stays bounded at any length.
    """
    if isinstance(text_or_ids, str):
        if model.tokenizer is None:
            raise TokenizerError("the model has no tokenizer.json, so text cannot be scored; pass token ids")
        ids = np.asarray(model.tokenizer.encode(text_or_ids), dtype=np.int64)
    else:
        ids = np.asarray(text_or_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise GenerationError(f"ids must be a 1-D sequence of integers, got shape {ids.shape} {ids.dtype}")
        ids = ids.astype(np.int64)
    out = np.empty(max(ids.size - 1, 0), dtype=np.float32)
    cache = model.make_cache()
    chunk = model.prefill_chunk
    for start in range(0, max(ids.size - 1, 0), chunk):
        piece = ids[start:start + chunk]
        logits = model.forward(piece, cache)  # [n, V]
        targets = ids[start + 1:start + 1 + piece.size]  # the last piece predicts one token fewer
        out[start:start + targets.size] = chosen_logprobs(logits[:targets.size], targets)
    if ids.size == 1:
        model.forward(ids, cache)  # still checks the id and the model's positions
    return Scores(ids, out)
