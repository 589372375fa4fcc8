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

__all__ = ["Option", "REQUIRED", "TYPES"]


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
    both numbers of a float_pair); ``choices`` lists the allowed values. ``tunable`` options
    change only speed, never results, and may be overridden when loading
    (``modelkit.load(..., tuning={"attention.query_block": 64})``).
    """

    type: str
    default: Any = REQUIRED
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    tunable: bool = False

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
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
                raise bad()
            return float(value)
        if t == "str":
            if not isinstance(value, str):
                raise bad()
            return value
        if t == "float_pair":
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                               and not math.isnan(v) for v in value)):
                raise bad()
            return (float(value[0]), float(value[1]))
        if t == "dict":
            if not isinstance(value, dict):
                raise bad()
            return value
        if not isinstance(value, list):  # "list"
            raise bad()
        return value
