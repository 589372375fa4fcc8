"""Typed block options: each kind declares its options once, and they are checked here only.

A mapping gives a block's options as YAML values or ``$expressions``; the planner resolves
them over the config and passes each through its :class:`Option`, so a block receives values
of the declared type within the declared bounds and never checks them itself.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["Option", "REQUIRED", "TYPES", "INT_MAX", "FLOAT32_MAX", "FLOAT32_TINY", "float32_scalar"]

# the largest integer option: no width, count, window or position of a model comes near it, and
# below it every index sum and product NumPy forms stays inside int64
INT_MAX = 2 ** 31 - 1
# float32's largest finite value and smallest normal one: every scalar is used in float32, where
# a larger finite value becomes infinite and dividing by a smaller one overflows
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of an option the mapping must give

# option type -> what a value must be
TYPES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "float_pair": "a pair of numbers",
    "dict": "an object",
    "list": "a list",
    "any": "any value",
}


@dataclass(frozen=True)
class Option:
    """One block option: its type, default, bounds and meaning.

    ``default`` may be a ``$expression`` over the config, or :data:`REQUIRED`. ``nullable``
    allows null (``None``), meaning "off" or "not given". ``min``/``max`` bound numbers (and
    both numbers of a float_pair); an int is at most :data:`INT_MAX` unless ``max`` says
    otherwise, and a finite float must be finite in float32 too (``divisor``: and, as
    something the block divides by, not round to zero or a subnormal there). ``choices``
    lists the allowed values. ``tunable`` options change only speed, never results, and may be
    overridden when loading (``modelkit.load(..., tuning={"attention.query_block": 64})``).
    """

    type: str
    default: Any = REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    tunable: bool = False
    divisor: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown option type {self.type!r}")

    def check(self, value: Any, where: str) -> Any:
        """``value`` as the block receives it (ints widened to float for a float option), or a
        :class:`ConfigError` naming ``where`` and what was expected."""
        if value is None and self.nullable:
            return None
        value = self._typed(value, where)
        if self.choices is not None and value not in self.choices:
            shown = ", ".join(map(str, self.choices))
            raise ConfigError(f"{where} must be one of {shown}, got {value!r}")
        for v in (value if self.type == "float_pair" else (value,)):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if self.min is not None and v < self.min:
                    raise ConfigError(f"{where} must be at least {self.min:g}, got {value!r}")
                if self.max is not None and v > self.max:
                    raise ConfigError(f"{where} must be at most {self.max:g}, got {value!r}")
                if self.type == "int" and self.max is None and abs(v) > INT_MAX:
                    raise ConfigError(f"{where} must be at most {INT_MAX:,} in size (no width, count, "
                                      f"window or position of a model is larger), got {_short(v)}")
                if isinstance(v, float):
                    float32_scalar(v, where, divisor=self.divisor, allow_inf=True)
        return value

    def _typed(self, value: Any, where: str) -> Any:
        def bad() -> ConfigError:
            null = " or null" if self.nullable else ""
            return ConfigError(f"{where} must be {TYPES[self.type]}{null}, got {value!r}")

        t = self.type
        if t == "any":
            return value
        if t == "bool":
            if not isinstance(value, bool):
                raise bad()
            return value
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise bad()
            return int(value)
        if t == "float":
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise bad()
            number = _as_float(value, where)
            if math.isnan(number):
                raise bad()
            return number
        if t == "str":
            if not isinstance(value, str):
                raise bad()
            return value
        if t == "float_pair":
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)):
                raise bad()
            pair = (_as_float(value[0], where), _as_float(value[1], where))
            if any(math.isnan(v) for v in pair):
                raise bad()
            return pair
        if t == "dict":
            if not isinstance(value, dict):
                raise bad()
            return value
        if not isinstance(value, list):  # "list"
            raise bad()
        return value


def _as_float(value: numbers.Real, where: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ConfigError(f"{where} is {_short(value)}, which float32 cannot hold (its largest value is "
                          f"{FLOAT32_MAX:.4g})") from None


def _short(value: numbers.Real) -> str:
    """``repr(value)``, cut short for integers of hundreds of digits."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:8]}... ({len(text)} digits)"


def float32_scalar(number: numbers.Real, where: str, *, divisor: bool = False, allow_inf: bool = False) -> float:
    """``number`` as a float when float32 holds it, else a :class:`ConfigError` naming ``where``.

    A finite value beyond :data:`FLOAT32_MAX` becomes infinite in float32 (1e39); a ``divisor``
    that float32 rounds to zero or a subnormal (1e-300, 1e-39) overflows whatever it divides.
    Infinity itself passes with ``allow_inf`` (some options mean "no limit" by it); NaN never."""
    value = _as_float(number, where)
    if value != value:
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if math.isinf(value):
        if allow_inf:
            return value
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{where} is {value!r}, which float32 cannot hold (its largest value is "
                          f"{FLOAT32_MAX:.4g}): it would compute as infinity")
    if divisor and abs(value) < FLOAT32_TINY:
        shown = "zero" if value == 0 else (f"{value!r}, which float32 rounds to zero or a subnormal "
                                           f"(below {FLOAT32_TINY:.4g})")
        raise ConfigError(f"{where} is {shown}; dividing by it overflows")
    return value
