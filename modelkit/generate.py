"""Token generation over a model's cache: prefill the prompt once, then one token at a time."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from .errors import GenerationError


def eos_ids(model: Any) -> set[int]:
    """End-of-sequence ids from config.json, generation_config.json and the tokenizer (any may be a list)."""
    out: set[int] = set()
    for source in (model.config.raw, model.generation_config):
        value = source.get("eos_token_id")
        if isinstance(value, int) and not isinstance(value, bool):
            out.add(value)
        elif isinstance(value, list):
            out.update(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    tok = model.tokenizer
    if tok is not None and tok.eos_token:
        tid = tok.token_id(tok.eos_token)
        if tid is not None:
            out.add(tid)
    return out


def _pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature == 0.0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate(model: Any, prompt_ids: Sequence[int], max_new_tokens: int = 16, temperature: float = 0.0,
             seed: int | None = None, stop_ids: Sequence[int] | None = None, cache: Any = None) -> list[int]:
    """New ids after the prompt; an EOS or stop id that ends generation is the last element."""
    if max_new_tokens < 1:
        raise GenerationError("max_new_tokens must be at least 1")
    if temperature < 0:
        raise GenerationError("temperature must be >= 0")
    prompt = list(prompt_ids)
    if not prompt:
        raise GenerationError("the prompt is empty: give at least one token")
    stops = eos_ids(model) | set(stop_ids or ())
    rng = np.random.default_rng(seed)
    cache = cache if cache is not None else model.make_cache()
    logits = model.forward(prompt, cache, last_only=True)[-1]
    out: list[int] = []
    while True:
        token = _pick(logits, temperature, rng)
        out.append(token)
        if token in stops or len(out) >= max_new_tokens:
            return out
        logits = model.forward([token], cache, last_only=True)[-1]


def stream(model: Any, prompt_ids: Sequence[int], **options: Any) -> Iterator[tuple[str, list[int]]]:
    """Yield (text, ids) pieces as tokens are generated."""
    for token in generate(model, prompt_ids, **options):
        text = model.tokenizer.decode([token]) if model.tokenizer is not None else ""
        yield text, [token]
