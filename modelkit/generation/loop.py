"""Token generation over a model's cache: prefill the prompt once, then one token at a time.

:func:`generate` returns the new ids; :func:`stream` yields :class:`Piece` objects (text and the
ids that produced it) as they come. Both take the same options: the sampling options of
:class:`modelkit.generation.options.SamplingOptions` (defaults from generation_config.json), stop ids,
stop strings and an optional cache to continue. With ``logprobs=K`` each token also carries
its log-probability and the K most likely alternatives (:class:`TokenLogprob`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

from ..errors import GenerationError, TokenizerError
from ..evaluation.logprobs import TokenLogprob, token_logprob
from .diagnose import explain_non_finite
from .options import SamplingOptions
from .sampling import NonFiniteLogits, Sampler
from .stop import StopStrings

if TYPE_CHECKING:
    from ..model import Cache, Model

DEFAULT_MAX_NEW_TOKENS = 16


class Piece(NamedTuple):
    """Text produced by ``ids`` (text may be empty while a character is incomplete, and the last
    piece may carry no ids when it only flushes held-back text); with ``logprobs=K``, one
    :class:`TokenLogprob` per id."""

    text: str
    ids: list[int]
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass
class GenerationStats:
    """What one generation did, filled in by :func:`stream` / :func:`generate` when passed."""

    cached_tokens: int = 0    # tokens already in the cache before this call (reused)
    prompt_tokens: int = 0    # tokens prefilled by this call
    new_tokens: int = 0       # tokens generated (a final EOS included)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str = ""     # "eos", "stop_string", "length", "context" or "interrupted"

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0


def eos_ids(model: Model) -> set[int]:
    """End-of-sequence ids from config.json, generation_config.json and the tokenizer."""
    return set(model.eos_token_ids)


def _stop_ids(model: Model, stop_ids: Sequence[int] | int | None) -> set[int]:
    extra = [stop_ids] if isinstance(stop_ids, (int, np.integer)) else list(stop_ids or ())
    return eos_ids(model) | {int(i) for i in extra}


def _check_options(model: Model, prompt_ids: Sequence[int], max_new_tokens: int | None,
                   sampling: dict[str, Any], cache: Cache | None, logprobs: int | None = None
                   ) -> tuple[list[int], int, SamplingOptions]:
    prompt = [int(i) for i in prompt_ids]
    if not prompt:
        raise GenerationError("the prompt is empty: give at least one token")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, (int, np.integer))
                                 or logprobs < 0):
        raise GenerationError(f"logprobs must be None or a number of alternatives >= 0, got {logprobs!r}")
    n = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise GenerationError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
    options = SamplingOptions.resolve(model.generation_config, **sampling)
    if cache is not None and not hasattr(cache, "tokens"):
        raise GenerationError("cache must come from model.make_cache()")
    limit = model.max_positions
    held = cache.length if cache is not None else 0
    if limit is not None and held + len(prompt) > limit:
        raise GenerationError(f"the prompt has {held + len(prompt)} tokens; this model has {limit} learned "
                              f"positions, so it cannot read more than {limit} tokens")
    return prompt, int(n), options


def _tokens(model: Model, prompt: list[int], max_new_tokens: int, options: SamplingOptions, stops: set[int],
            cache: Cache | None, stats: GenerationStats, should_stop: Callable[[], bool] | None,
            logprobs: int | None = None) -> Iterator[tuple[int, bool, TokenLogprob | None]]:
    """Yield (token, is_last, its TokenLogprob or None without ``logprobs``). A token is yielded
    before it is fed back, so a consumer that stops early leaves the cache holding everything
    but the last token. Generation also ends when the model's learned positions are full (stop
    reason "context")."""
    sampler = Sampler(options)
    limit = model.max_positions
    cache = cache if cache is not None else model.make_cache()
    stats.cached_tokens, stats.prompt_tokens = cache.length, len(prompt)
    t0 = time.perf_counter()
    logits = model.forward(prompt, cache, last_only=True)[-1]
    t1 = time.perf_counter()
    stats.prefill_s = t1 - t0
    history = None
    if options.repetition_penalty != 1.0:
        # every id seen so far, prompt included, in a preallocated buffer (no per-token lists)
        history = np.empty(len(cache.tokens) + max_new_tokens, dtype=np.intp)
        history[:len(cache.tokens)] = cache.tokens
    seen = len(cache.tokens)
    try:
        for step in range(max_new_tokens):
            if should_stop is not None and should_stop():
                stats.stop_reason = "interrupted"
                return
            try:
                token = sampler(logits, history[:seen] if history is not None else ())
            except NonFiniteLogits:
                raise GenerationError(explain_non_finite(model, cache.tokens)) from None
            info = None if logprobs is None else token_logprob(logits, token, logprobs)
            stats.new_tokens += 1
            # a token fed back at position cache.length needs a position embedding for it
            full = limit is not None and cache.length >= limit
            last = token in stops or step + 1 == max_new_tokens or full
            if last:
                stats.stop_reason = ("eos" if token in stops else "length" if step + 1 == max_new_tokens
                                     else "context")
            yield token, last, info
            if last:
                return
            logits = model.forward([token], cache, last_only=True)[-1]
            if history is not None:
                history[seen] = token
            seen += 1
    finally:
        stats.decode_s = time.perf_counter() - t1


def stream(model: Model, prompt_ids: Sequence[int], max_new_tokens: int | None = None, *,
           temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
           min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
           stop_ids: Sequence[int] | None = None, stop_strings: Sequence[str] | None = None,
           cache: Cache | None = None, stats: GenerationStats | None = None,
           should_stop: Callable[[], bool] | None = None, logprobs: int | None = None) -> Iterator[Piece]:
    """Yield :class:`Piece` (text, ids) as tokens are generated after ``prompt_ids``.

    Special tokens are not shown; multi-byte characters split across tokens come out whole;
    a stop string ends generation and is not shown (nor anything after it). Sampling options
    left None come from generation_config.json (see :meth:`SamplingOptions.resolve`). With
    ``cache``, ``prompt_ids`` continue the cached sequence. ``should_stop`` is polled before
    each token (used for Ctrl-C in chat); ``stats`` receives counts and timings. ``logprobs=K``
    (0 or more) gives each piece the log-probability of each of its tokens and the K most likely
    tokens at that position (the model's distribution, before penalty, temperature and
    truncation).
    """
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty, seed=seed)
    prompt, n, options = _check_options(model, prompt_ids, max_new_tokens, sampling, cache, logprobs)
    tok = model.tokenizer
    if tok is None:
        raise TokenizerError("the model has no tokenizer.json, so its output cannot be decoded to text")
    stops = _stop_ids(model, stop_ids)
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    matcher = StopStrings(stop_strings) if stop_strings else None
    stats = stats if stats is not None else GenerationStats()
    # the decoder only needs the last few ids before the new ones
    context = (cache.tokens[-8:] if cache is not None else []) + prompt[-8:]
    return _stream(model, prompt, n, options, stops, matcher, cache, stats, should_stop, context, logprobs)


def _stream(model: Model, prompt: list[int], n: int, options: SamplingOptions, stops: set[int],
            matcher: StopStrings | None, cache: Cache | None, stats: GenerationStats,
            should_stop: Callable[[], bool] | None, context: list[int], logprobs: int | None) -> Iterator[Piece]:
    from ..text.decoding import IncrementalDecoder

    decoder = IncrementalDecoder(model.tokenizer, context=context)
    tokens = _tokens(model, prompt, n, options, stops, cache, stats, should_stop, logprobs)
    try:
        for token, last, info in tokens:
            scored = () if info is None else (info,)
            text = decoder.add(token)
            if last:
                text += decoder.flush()
            if matcher is not None:
                text, hit = matcher.feed(text)
                if hit:
                    stats.stop_reason = "stop_string"
                    yield Piece(text, [token], scored)
                    return
                if last:
                    text += matcher.flush()
            yield Piece(text, [token], scored)
        # stopped between tokens (interrupted): show what is still held back
        rest = decoder.flush()
        if matcher is not None:
            rest, _ = matcher.feed(rest)
            rest += matcher.flush()
        if rest:
            yield Piece(rest, [])
    finally:
        tokens.close()


def generate(model: Model, prompt_ids: Sequence[int], max_new_tokens: int | None = None, *,
             temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
             stop_ids: Sequence[int] | None = None, stop_strings: Sequence[str] | None = None,
             cache: Cache | None = None, stats: GenerationStats | None = None,
             should_stop: Callable[[], bool] | None = None, logprobs: int | None = None
             ) -> list[int] | tuple[list[int], list[TokenLogprob]]:
    """New ids after ``prompt_ids`` (at most ``max_new_tokens``, default 16). When an EOS, a stop
    id or the token completing a stop string ends generation, it is the last element.
    Options as :func:`stream`; without stop strings no tokenizer is needed. With
    ``logprobs=K`` the result is ``(ids, [TokenLogprob per id])``."""
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty, seed=seed)
    if stop_strings:
        pieces = list(stream(model, prompt_ids, max_new_tokens, stop_ids=stop_ids, stop_strings=stop_strings,
                             cache=cache, stats=stats, should_stop=should_stop, logprobs=logprobs, **sampling))
        ids = [i for piece in pieces for i in piece.ids]
        return ids if logprobs is None else (ids, [s for piece in pieces for s in piece.logprobs])
    prompt, n, options = _check_options(model, prompt_ids, max_new_tokens, sampling, cache, logprobs)
    stops = _stop_ids(model, stop_ids)
    stats = stats if stats is not None else GenerationStats()
    steps = list(_tokens(model, prompt, n, options, stops, cache, stats, should_stop, logprobs))
    ids = [token for token, _, _ in steps]
    return ids if logprobs is None else (ids, [info for _, _, info in steps])
