"""Sampling options: what they mean, their checks, and their defaults from generation_config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..errors import GenerationError

# the float32 range the sampler computes in: a positive temperature below TINY divides logits by
# zero (or a subnormal) in float32, so it is greedy decoding, which is its limit; values above
# HUGE overflow to infinity
_TINY = float(np.finfo(np.float32).tiny)
_HUGE = float(np.finfo(np.float32).max)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# field -> (is the value in range, the rule the message states)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (lambda v: math.isfinite(v) and 0 <= v <= _HUGE,
                    f"must be >= 0 and at most {_HUGE:.4g} (float32's largest)"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0 (0 is off)"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1] (1 is off)"),
    "min_p": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1] (0 is off)"),
    "repetition_penalty": (lambda v: _TINY <= v <= _HUGE,
                           f"must be > 0 (1 is off) and within float32's range ({_TINY:.4g} to {_HUGE:.4g})"),
    "seed": (lambda v: v is None or (_is_int(v) and v >= 0), "must be an integer >= 0"),
}


def check_option(name: str, value: Any, label: str | None = None) -> None:
    """Raise a GenerationError when sampling option ``name`` cannot take ``value``; the message
    calls it ``label`` (a flag such as ``--top-p``, or a file's key) when given."""
    ok, rule = RULES[name]
    try:
        good = bool(ok(value))
    except TypeError:  # not a number at all
        good = False
    if not good:
        raise GenerationError(f"{label or name} {rule}, got {value!r}")


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick tokens. ``temperature`` 0 is greedy; ``top_k`` 0, ``top_p`` 1, ``min_p`` 0 and
    ``repetition_penalty`` 1 switch those steps off; ``seed`` None draws a fresh seed."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in RULES:
            check_option(name, getattr(self, name))

    @property
    def greedy(self) -> bool:
        """Temperature 0, or one so small that float32 cannot divide by it: greedy is its limit."""
        return self.temperature < _TINY

    @classmethod
    def resolve(cls, generation_config: dict[str, Any] | None = None, **overrides: Any) -> "SamplingOptions":
        """Options from generation_config.json, each overridden by a non-None keyword.

        As in transformers, the file's temperature / top_k / top_p / min_p only apply when it sets
        ``do_sample: true`` (otherwise decoding is greedy); its repetition_penalty always applies.
        A user-given temperature > 0 turns sampling on with the file's other sampling values.
        """
        gc = generation_config or {}
        values: dict[str, Any] = {}
        sampling = gc.get("do_sample") is True
        user_temperature = overrides.get("temperature")
        if sampling or (user_temperature is not None and user_temperature > 0):
            for key in ("top_k", "top_p", "min_p"):
                if _is_number(gc.get(key)):
                    values[key] = gc[key]
            if sampling:
                values["temperature"] = gc["temperature"] if _is_number(gc.get("temperature")) else 1.0
        if _is_number(gc.get("repetition_penalty")):
            values["repetition_penalty"] = gc["repetition_penalty"]
        given = {k: v for k, v in overrides.items() if v is not None}
        from_file = set(values) - set(given)
        values.update(given)
        unknown = set(values) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise GenerationError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        final = {}
        for key, value in values.items():
            label = f"generation_config.json: {key}" if key in from_file else key
            final[key] = _integer(label, value) if key in ("top_k", "seed") else float(value)
            if key in from_file:  # the error names the file, not a flag the user never gave
                check_option(key, final[key], label)
        return cls(**final)

    def with_(self, **changes: Any) -> "SamplingOptions":
        """A copy with some fields changed."""
        return replace(self, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(name: str, value: Any) -> int:
    # 50.0 is 50; 2.5, inf and NaN (generation_config.json may hold them) are errors, not crashes
    if isinstance(value, float) and not value.is_integer():
        raise GenerationError(f"{name} must be an integer, got {value!r}")
    return int(value)
