"""Log-probabilities from logits rows: a stable log-softmax, the top alternatives, and the
log-probabilities of a prompt's own tokens (``echo`` in completions, which evaluation harnesses
read as log-likelihoods).

Every number is the model's own distribution: the log-softmax of its logits, before any
repetition penalty, temperature or truncation a sampler applies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import GenerationError

if TYPE_CHECKING:
    from ..model import Cache, Model


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """log(sum(exp(logits))) over the last axis (float32 ``[...]`` for ``[..., V]``), with the row
    maximum taken out before exp; NaN or infinite rows are refused."""
    z = logits if logits.dtype == np.float32 else logits.astype(np.float32)
    top = z.max(axis=-1, keepdims=True)  # [..., 1]
    if not np.isfinite(top).all():
        raise GenerationError("the model produced logits that are NaN or infinite, so no log-probability "
                              "can be computed")
    with np.errstate(over="ignore", under="ignore"):
        total = np.exp(z - top).sum(axis=-1)  # [...], each term in [0, 1], the largest exactly 1
    return (top[..., 0] + np.log(total)).astype(np.float32, copy=False)


def top_alternatives(logits: np.ndarray, k: int, norm: float | None = None) -> tuple[tuple[int, float], ...]:
    """The ``k`` most likely (id, log-probability) of one logits row ``[V]``, best first."""
    k = min(int(k), logits.size)
    if k <= 0:
        return ()
    norm = float(log_normalizer(logits)) if norm is None else norm
    best = np.argpartition(logits, logits.size - k)[logits.size - k:]
    best = best[np.argsort(-logits[best], kind="stable")]
    return tuple((int(i), float(np.float32(logits[i] - norm))) for i in best)


def prompt_logprobs(model: Model, ids: Sequence[int], k: int, cache: Cache
                    ) -> list[tuple[float, tuple[tuple[int, float], ...]] | None]:
    """For each prompt token, (its log-probability given the tokens before it, the ``k`` best
    alternatives at its position); None for the first token, which nothing predicts.

    Runs ``ids[:-1]`` through ``cache`` (which then holds them), in pieces of the model's
    ``prefill_chunk``, so the caller continues with the last token and loses no work.
    """
    out: list[tuple[float, tuple[tuple[int, float], ...]] | None] = [None]
    chunk = model.prefill_chunk
    body = list(ids[:-1])
    for start in range(0, len(body), chunk):
        logits = model.forward(body[start:start + chunk], cache)  # [n, V]
        norms = log_normalizer(logits)  # [n]
        for row, target in enumerate(ids[start + 1:start + 1 + logits.shape[0]]):
            norm = float(norms[row])
            chosen = float(np.float32(logits[row, target] - norm))
            out.append((chosen, top_alternatives(logits[row], k, norm) if k else ()))
    return out
