"""Choosing the next token from a logits row.

The steps run in the order transformers applies them: repetition penalty, then (when sampling)
temperature, top-k, top-p and min-p, each narrowing a candidate set, then one draw from the
seeded generator. Temperature 0 is greedy: the argmax of the (penalised) logits.

Every step works on a candidate set ``(ids, z)``: the token ids still allowed and their
float32 logits. ``ids`` is None while the set is still the whole vocabulary, so the common
paths never build a full-vocabulary index array.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import GenerationError
from .options import SamplingOptions

# top-p looks at the best 64 tokens first; only when they hold less than p is the row sorted
_TOP_P_FIRST_TRY = 64
# a candidate whose preceding mass is within this relative distance of top_p counts as reaching it
_TOP_P_RTOL = 1e-7
# cumsum_index() sums long rows in blocks of this many
_BLOCK = 256


class NonFiniteLogits(GenerationError):
    """A logits row whose largest value is NaN or infinite: no token can be chosen. Generation
    replaces the message with where the forward pass first went non-finite
    (:func:`modelkit.generation.diagnose.explain_non_finite`)."""


def _check_finite(best: Any) -> None:
    """Refuse a logits row whose largest value is NaN or infinite (NaN anywhere makes it NaN)."""
    if not math.isfinite(best):
        raise NonFiniteLogits("the model produced logits that are NaN or infinite, so no token can be "
                              "chosen; its weights may hold NaN or inf (`modelkit validate --values` "
                              "checks them) or its arithmetic may overflow float32")


# ---- the steps ---------------------------------------------------------------------------
def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int] | np.ndarray,
                             penalty: float) -> np.ndarray:
    """Logits [V] with every token in ``history`` penalised (CTRL / transformers rule:
    positive logits divided by ``penalty``, negative ones multiplied). Returns a new array."""
    out = logits.copy()
    if penalty == 1.0 or len(history) == 0:
        return out
    idx = np.asarray(history, dtype=np.intp)
    sel = out[idx]  # gathered before writing, so repeated ids write the same value
    out[idx] = np.where(sel > 0, sel / np.float32(penalty), sel * np.float32(penalty))
    return out


def top_k_candidates(ids: np.ndarray | None, z: np.ndarray, k: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Keep the ``k`` largest logits (exactly k; ties at the boundary broken arbitrarily)."""
    if k <= 0 or k >= z.size:
        return ids, z
    keep = np.argpartition(z, z.size - k)[z.size - k:]
    return (keep if ids is None else ids[keep]), z[keep]


def top_p_candidates(ids: np.ndarray | None, z: np.ndarray, p: float) -> tuple[np.ndarray | None, np.ndarray]:
    """Keep the smallest set of most likely tokens whose probability reaches ``p``.

    A token is kept when the mass of the tokens more likely than it is below ``p``. The best
    64 tokens usually hold that mass (language models are peaked); only a flat distribution
    sorts the weights, and even then no index array is sorted.
    """
    if p >= 1.0 or z.size <= 1:
        return ids, z
    e = np.exp(z - z.max())  # float32 [n], unnormalised probabilities
    # running sums over up to 100k weights are taken in float64 (one row per token, not
    # model-sized) so the kept set is exactly the smallest one reaching p
    target = float(e.sum(dtype=np.float64)) * p * (1.0 - _TOP_P_RTOL)
    if e.size > _TOP_P_FIRST_TRY:
        best = np.argpartition(e, e.size - _TOP_P_FIRST_TRY)[e.size - _TOP_P_FIRST_TRY:]
        best = best[np.argsort(-e[best], kind="stable")]
        cum = np.cumsum(e[best], dtype=np.float64)
        if cum[-1] >= target:
            keep = best[:int(np.searchsorted(cum, target, side="left")) + 1]
            return (keep if ids is None else ids[keep]), z[keep]
    desc = np.sort(e)[::-1]
    count = cumsum_index(desc, target, side="left") + 1
    threshold = desc[count - 1]
    keep = np.flatnonzero(e > threshold)
    if keep.size < count:  # tokens tied at the threshold fill the set up to exactly `count`
        keep = np.concatenate([keep, np.flatnonzero(e == threshold)[:count - keep.size]])
    return (keep if ids is None else ids[keep]), z[keep]


def min_p_candidates(ids: np.ndarray | None, z: np.ndarray, min_p: float) -> tuple[np.ndarray | None, np.ndarray]:
    """Keep tokens whose probability is at least ``min_p`` times the top token's.

    The ratio of two probabilities does not depend on normalisation, so this is a threshold on
    logits: z >= max(z) + log(min_p).
    """
    if min_p <= 0.0:
        return ids, z
    keep = np.flatnonzero(z >= z.max() + np.float32(math.log(min_p)))
    return (keep if ids is None else ids[keep]), z[keep]


def _search(cum: np.ndarray, x: float, side: str) -> int:
    i = int(np.searchsorted(cum, x, side=side))
    # rounding may put x at or past the total: take the last entry with positive weight
    return i if i < cum.size else int(np.searchsorted(cum, cum[-1], side="left"))


def cumsum_index(weights: np.ndarray, x: float, side: str = "right") -> int:
    """The first index i where ``cumsum(weights)[i] > x`` (``side="right"``) or ``>= x``
    (``"left"``), never an index of zero weight past the last positive one.

    A long cumulative sum is slow in NumPy (it is not vectorised), so long rows go in two
    levels: find the block of 256 by block totals, then the index within that block.
    """
    n = weights.size
    if n <= 4 * _BLOCK:
        return _search(np.cumsum(weights, dtype=np.float64), x, side)
    full = n - n % _BLOCK
    sums = weights[:full].reshape(-1, _BLOCK).sum(axis=1)  # [n/256] float32, pairwise per block
    if full < n:
        sums = np.append(sums, weights[full:].sum())
    cum = np.cumsum(sums, dtype=np.float64)
    b = _search(cum, x, side)
    inner = np.cumsum(weights[b * _BLOCK:(b + 1) * _BLOCK], dtype=np.float64)
    return b * _BLOCK + _search(inner, x - (cum[b - 1] if b else 0.0), side)


def draw(weights: np.ndarray, u: float) -> int:
    """An index drawn with probability proportional to ``weights`` [n] (>= 0, float32), from one
    uniform number ``u`` in [0, 1) (inverse CDF)."""
    total = float(weights.sum(dtype=np.float64))
    return cumsum_index(weights, u * total, side="right")


# ---- the sampler -------------------------------------------------------------------------
class Sampler:
    """Pick token ids from logits rows with :class:`SamplingOptions`; one generator per sampler,
    so the same seed, logits and history give the same tokens."""

    def __init__(self, options: SamplingOptions | None = None, **kwargs: Any):
        self.options = options if options is not None else SamplingOptions(**kwargs)
        self.rng = np.random.default_rng(self.options.seed)

    def distribution(self, logits: np.ndarray, history: Sequence[int] | np.ndarray = ()
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The candidate token ids and their float64 probabilities (summing to 1) that
        :meth:`__call__` draws from; greedy gives the argmax with probability 1."""
        ids, z = self._candidates(logits, history)
        if ids is None:
            ids = np.arange(z.size)
        if self.options.greedy:
            return ids, np.ones(1)
        # the draw's probabilities in float64: the row must sum to 1 for the seeded choice
        p = np.exp(z.astype(np.float64) - float(z.max()))
        return ids, p / p.sum()

    def __call__(self, logits: np.ndarray, history: Sequence[int] | np.ndarray = ()) -> int:
        """The next token id for a logits row [V]; ``history`` is every token seen so far
        (prompt and generated), used by the repetition penalty."""
        o = self.options
        if o.greedy and o.repetition_penalty == 1.0:
            best = int(np.argmax(logits))  # the fast path: no copy at all
            _check_finite(logits[best])  # argmax points at the first NaN when there is one
            return best
        ids, z = self._candidates(logits, history)
        if o.greedy:
            return int(ids[0])
        if z.size == 1:
            return int(ids[0]) if ids is not None else 0
        e = np.exp(z - z.max())  # float32 [n], unnormalised probabilities
        pick = draw(e, self.rng.random())
        return int(ids[pick]) if ids is not None else pick

    def _candidates(self, logits: np.ndarray, history: Sequence[int] | np.ndarray
                    ) -> tuple[np.ndarray | None, np.ndarray]:
        o = self.options
        z = logits if logits.dtype == np.float32 else logits.astype(np.float32)
        if o.repetition_penalty != 1.0:
            z = apply_repetition_penalty(z, history, o.repetition_penalty)
        if o.greedy:
            best = int(np.argmax(z))
            _check_finite(z[best])
            return np.array([best]), z[best:best + 1]
        top = z.max()
        _check_finite(top)
        # a new float32 array (the caller's logits stay intact), shifted so its maximum is 0 before
        # dividing: a tiny temperature then sends the others to -inf instead of the maximum to inf
        with np.errstate(over="ignore"):
            z = (z - top) / np.float32(o.temperature)
        ids, z = top_k_candidates(None, z, o.top_k)
        ids, z = top_p_candidates(ids, z, o.top_p)
        ids, z = min_p_candidates(ids, z, o.min_p)
        return ids, z
