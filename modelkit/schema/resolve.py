"""Resolving a mapping against a checkpoint's config: fields, checks, layer kinds, ``$expr`` values."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from .expr import ExprError, evaluate
from .spec import FieldSpec, Mapping

# far above any real model (a few hundred layers at most); a larger count is a broken config
# and would take minutes to plan
MAX_LAYERS = 10_000


class Config(dict):
    """Resolved config values by canonical name, readable as keys or attributes.

    ``raw`` keeps config.json as it was read, for fields no mapping names.
    """

    def __init__(self, values: dict[str, Any], raw: dict[str, Any] | None = None):
        super().__init__(values)
        self.raw = raw or {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def with_layer(self, i: int) -> "Config":
        """The config seen by layer ``i``'s options (``i`` is the layer index)."""
        return Config({**self, "i": i}, self.raw)


def resolve_config(mapping: Mapping, raw: dict[str, Any], where: str = "config.json") -> Config:
    """Read every declared field from ``raw`` (config.json), in file order, then run checks."""
    values: dict[str, Any] = {}
    for spec in mapping.fields:
        values[spec.name] = _resolve_field(spec, raw, values, where)
    for expr, message in mapping.checks:
        try:
            ok = evaluate(expr, values)
        except ExprError as exc:
            raise ConfigError(f"{where}: check '{expr}' could not be evaluated: {exc}") from None
        if not ok:
            raise ConfigError(f"{where}: {message}")
    return Config(values, raw)

def _resolve_field(spec: FieldSpec, raw: dict[str, Any], values: dict[str, Any],
                   where: str) -> Any:
    found, value, key = False, None, None
    for src in spec.sources:
        present, v = _lookup(raw, src)
        if present and v is not None:
            found, value, key = True, v, src
            break
    if not found:
        if spec.derive is not None:
            try:
                value = evaluate(spec.derive, values)
            except ExprError as exc:
                raise ConfigError(f"{where}: cannot derive '{spec.name}' "
                                  f"({spec.derive}): {exc}") from None
            key = f"derived {spec.name}"
        elif spec.has_default:
            return spec.default
        else:
            names = " or ".join(f"'{s}'" for s in spec.sources) or f"'{spec.name}'"
            raise ConfigError(f"{where}: missing {names}")
    if spec.values is not None:
        value = _map_values(value, spec.values)
    return _coerce(value, spec, key or spec.name, where)


def layer_variants(mapping: Mapping, cfg: Config) -> list[str]:
    """The variant name of every layer (one name for uniform stacks)."""
    count = resolve_value(mapping.layer_count, cfg, f"{mapping.path}: layers.count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ConfigError(f"layer count must be a non-negative integer, got {count!r}")
    if count > MAX_LAYERS:
        raise ConfigError(f"layer count {count} is not plausible (more than {MAX_LAYERS})")
    if mapping.variant is None:
        (only,) = mapping.variants
        return [only] * count
    out = []
    for i in range(count):
        try:
            name = evaluate(mapping.variant, {**cfg, "i": i})
        except ExprError as exc:
            raise ConfigError(f"cannot tell the kind of layer {i} ({mapping.variant}): {exc}") from None
        if name not in mapping.variants:
            known = ", ".join(sorted(mapping.variants))
            raise ConfigError(f"layer {i} is of kind {name!r}; this architecture knows {known}")
        out.append(name)
    return out


def resolve_value(value: Any, cfg: dict[str, Any], where: str) -> Any:
    """Resolve an option: ``$expr`` strings are evaluated over config; anything else is literal.

    Lists and dicts are resolved element by element. ``$$`` escapes a literal dollar.
    """
    if isinstance(value, str) and value.startswith("$"):
        if value.startswith("$$"):
            return value[1:]
        try:
            return evaluate(value[1:], cfg)
        except ExprError as exc:
            raise ConfigError(f"{where}: {value}: {exc}") from None
    if isinstance(value, list):
        return [resolve_value(v, cfg, where) for v in value]
    if isinstance(value, dict):
        return {k: resolve_value(v, cfg, f"{where}.{k}") for k, v in value.items()}
    return value


def _lookup(raw: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    cur: Any = raw
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _map_values(value: Any, table: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [table.get(v, v) if isinstance(v, str) else v for v in value]
    return table.get(value, value) if isinstance(value, str) else value


def _coerce(value: Any, spec: FieldSpec, key: str, where: str) -> Any:
    t = spec.type

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: '{key}' must be {expected}, got {value!r}")

    if t == "int":
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise bad("an integer")
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
        if math.isnan(value):
            raise bad("a number")
    elif t == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
    elif t == "str":
        if not isinstance(value, str):
            raise bad("a string")
    elif t == "list":
        if not isinstance(value, list):
            raise bad("a list")
    elif t == "dict":
        if not isinstance(value, dict):
            raise bad("an object")
    elif t == "float_pair":
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise bad("a pair of numbers")
        value = (float(value[0]), float(value[1]))
    if spec.min is not None and isinstance(value, (int, float)) and value < spec.min:
        raise ConfigError(f"{where}: '{key}' must be at least {spec.min:g}, got {value!r}")
    return value
