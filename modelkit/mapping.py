"""YAML mapping files: parsing, validation and resolution against a config.

A mapping describes one architecture family: which checkpoints it matches, the config fields it
reads, the blocks each layer is made of, and where every canonical parameter comes from in the
checkpoint. The schema is documented in docs/mappings.md. Every error names the file and the
key, and says what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config
from .errors import ConfigError, MappingError
from .expr import ExprError, compile_expr, evaluate, names_in

TYPES = {"int", "float", "bool", "str", "list", "dict", "any", "float_pair"}
LAYOUTS = {"sequential", "parallel"}
PLACEHOLDER = "{i}"
_BRACES = re.compile(r"\{[^}]*\}|\{|\}")
# libyaml's safe loader when present: the same safe subset, ~10x faster (every load parses every mapping)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# YAML aliases let a few lines stand for a billion values ("billion laughs"); a mapping walked
# value by value past this many is refused (the shipped ones have a few hundred)
MAX_YAML_VALUES = 100_000
# far above any real model (a few hundred layers at most); a larger count is a broken config
# and would take minutes to plan
MAX_LAYERS = 10_000

_TOP_KEYS = {"modelkit_mapping", "name", "description", "match", "config", "checks", "model",
             "layers", "weights", "ignore"}
_MATCH_KEYS = {"model_type", "architectures", "source"}
_FIELD_KEYS = {"from", "type", "default", "derive", "min", "values", "doc"}
_MODEL_KEYS = {"embedding_multiplier", "positions", "final_norm", "logits_divisor", "tie_head",
               "max_positions"}
_LAYER_KEYS = {"layout", "residual_multiplier", "blocks", "flow"}


@dataclass
class FieldSpec:
    """How one config value is read: checkpoint names, type, default or derivation."""

    name: str
    sources: list[str]
    type: str = "any"
    default: Any = None
    has_default: bool = False
    derive: str | None = None
    min: float | None = None
    values: dict[str, Any] | None = None


@dataclass
class BlockSpec:
    """One block of a layer: its kind and raw options (``$expr`` strings not yet resolved)."""

    name: str
    kind: str
    options: dict[str, Any]


@dataclass
class LayerSpec:
    """One kind of layer: how its blocks are wired into residual branches."""

    layout: str
    residual_multiplier: Any
    blocks: dict[str, BlockSpec]
    flow: list[list[str]]


@dataclass
class WeightSpec:
    """Where one canonical parameter comes from: a checkpoint name and transforms."""

    target: str
    sources: list[str]  # alternatives: the first one the checkpoint has is used
    transforms: list[tuple[str, dict[str, Any]]]
    optional: bool = False


@dataclass
class Mapping:
    """A parsed, validated mapping file."""

    name: str
    path: str
    description: str
    match: dict[str, list[str]]
    fields: list[FieldSpec]
    checks: list[tuple[str, str]]
    model: dict[str, Any]
    layer_count: Any
    variant: str | None
    variants: dict[str, LayerSpec]
    weights: list[WeightSpec]
    ignore: list[re.Pattern]
    ignore_text: list[str] = field(default_factory=list)

    # ---- matching -------------------------------------------------------------------------
    def matches(self, raw: dict[str, Any], source: str) -> bool:
        """True when this mapping serves a checkpoint with this config.json and source kind."""
        if "source" in self.match and source not in self.match["source"]:
            return False
        if "source" not in self.match and source != "safetensors":
            return False
        hit = False
        if "model_type" in self.match:
            if raw.get("model_type") not in self.match["model_type"]:
                return False
            hit = True
        if "architectures" in self.match:
            archs = raw.get("architectures") or []
            if isinstance(archs, list) and any(a in self.match["architectures"] for a in archs):
                hit = True
            elif "model_type" not in self.match:
                return False
        return hit

    # ---- config ---------------------------------------------------------------------------
    def resolve_config(self, raw: dict[str, Any], where: str = "config.json") -> Config:
        """Read every declared field from ``raw`` (config.json), in file order, then run checks."""
        values: dict[str, Any] = {}
        for spec in self.fields:
            values[spec.name] = self._resolve_field(spec, raw, values, where)
        for expr, message in self.checks:
            try:
                ok = evaluate(expr, values)
            except ExprError as exc:
                raise ConfigError(f"{where}: check '{expr}' could not be evaluated: {exc}") from None
            if not ok:
                raise ConfigError(f"{where}: {message}")
        return Config(values, raw)

    def _resolve_field(self, spec: FieldSpec, raw: dict[str, Any], values: dict[str, Any],
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

    # ---- layers ---------------------------------------------------------------------------
    def layer_variants(self, cfg: Config) -> list[str]:
        """The variant name of every layer (one name for uniform stacks)."""
        count = resolve_value(self.layer_count, cfg, f"{self.path}: layers.count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConfigError(f"layer count must be a non-negative integer, got {count!r}")
        if count > MAX_LAYERS:
            raise ConfigError(f"layer count {count} is not plausible (more than {MAX_LAYERS})")
        if self.variant is None:
            (only,) = self.variants
            return [only] * count
        out = []
        for i in range(count):
            try:
                name = evaluate(self.variant, {**cfg, "i": i})
            except ExprError as exc:
                raise ConfigError(f"cannot tell the kind of layer {i} ({self.variant}): {exc}") from None
            if name not in self.variants:
                known = ", ".join(sorted(self.variants))
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


# ---- parsing --------------------------------------------------------------------------------

class _Parser:
    def __init__(self, path: str, known_kinds: dict[str, type] | None,
                 known_transforms: set[str] | None):
        self.path = path
        self.kinds = known_kinds
        self.transforms = known_transforms

    def fail(self, key: str, message: str) -> MappingError:
        return MappingError(f"{self.path}: {key}: {message}" if key else f"{self.path}: {message}")

    def expect(self, value: Any, typ: type | tuple, key: str, what: str) -> Any:
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise self.fail(key, f"expected {what}, got {type(value).__name__}")
        return value

    def check_keys(self, data: dict, allowed: set[str], key: str) -> None:
        extra = sorted(str(k) for k in data if k not in allowed)
        if extra:
            raise self.fail(key, f"unknown key(s) {', '.join(extra)}; expected some of "
                                 f"{', '.join(sorted(allowed))}")

    def check_expr(self, text: str, key: str, names: set[str]) -> None:
        try:
            used = names_in(text)
        except ExprError as exc:
            raise self.fail(key, f"bad expression: {exc}") from None
        unknown = sorted(used - names - {"true", "false", "null", "True", "False", "None",
                                         "inf", "infinity", "min", "max", "abs", "int",
                                         "float", "bool", "len", "sqrt", "round", "str",
                                         "all", "any", "list"})
        if unknown:
            raise self.fail(key, f"expression '{text}' names {', '.join(unknown)}, "
                                 f"which the config section does not declare")

    def check_value(self, value: Any, key: str, names: set[str]) -> None:
        if isinstance(value, str) and value.startswith("$") and not value.startswith("$$"):
            self.check_expr(value[1:], key, names)
        elif isinstance(value, list):
            for n, v in enumerate(value):
                self.check_value(v, f"{key}[{n}]", names)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.check_value(v, f"{key}.{k}", names)

    def check_pattern(self, text: str, key: str) -> None:
        for brace in _BRACES.findall(text):
            if brace != PLACEHOLDER:
                raise self.fail(key, f"bad layer placeholder '{brace}' in '{text}'; "
                                     f"the only placeholder is {PLACEHOLDER}")

    def parse(self, data: Any) -> Mapping:
        if not isinstance(data, dict):
            raise self.fail("", "expected a mapping (YAML object) at the top level")
        self.check_keys(data, _TOP_KEYS, "")
        for required in ("name", "match", "config", "layers", "weights"):
            if required not in data:
                raise self.fail(required, "required key is missing")
        version = data.get("modelkit_mapping", 1)
        if version != 1:
            raise self.fail("modelkit_mapping", f"unsupported schema version {version!r}; expected 1")
        name = self.expect(data["name"], str, "name", "a string")
        match = self.parse_match(data["match"])
        fields = self.parse_fields(data["config"])
        names = {f.name for f in fields}
        checks = self.parse_checks(data.get("checks", []), names)
        model = self.parse_model(data.get("model", {}), names)
        count, variant, variants = self.parse_layers(data["layers"], names)
        weights = self.parse_weights(data["weights"], names)
        ignore_text = self.expect(data.get("ignore", []), list, "ignore", "a list of tensor names")
        ignore = []
        for n, pat in enumerate(ignore_text):
            self.expect(pat, str, f"ignore[{n}]", "a tensor name pattern")
            self.check_pattern(pat, f"ignore[{n}]")
            ignore.append(pattern_regex(pat))
        return Mapping(name, self.path, str(data.get("description", "")), match, fields, checks,
                       model, count, variant, variants, weights, ignore, ignore_text)

    def parse_match(self, data: Any) -> dict[str, list[str]]:
        self.expect(data, dict, "match", "an object with model_type and/or architectures")
        self.check_keys(data, _MATCH_KEYS, "match")
        if "model_type" not in data and "architectures" not in data:
            raise self.fail("match", "needs model_type and/or architectures")
        out = {}
        for key, value in data.items():
            if isinstance(value, str):
                value = [value]
            self.expect(value, list, f"match.{key}", "a string or a list of strings")
            for v in value:
                self.expect(v, str, f"match.{key}", "strings")
            out[key] = value
        return out

    def parse_fields(self, data: Any) -> list[FieldSpec]:
        self.expect(data, dict, "config", "an object of field specs")
        fields: list[FieldSpec] = []
        seen: set[str] = set()
        for name, spec in data.items():
            key = f"config.{name}"
            if not isinstance(name, str) or not name.isidentifier():
                raise self.fail(key, "field names must be identifiers")
            if isinstance(spec, str):
                spec = {"from": spec}
            self.expect(spec, dict, key, "a checkpoint name or an object")
            self.check_keys(spec, _FIELD_KEYS, key)
            sources = spec.get("from", [])
            if isinstance(sources, str):
                sources = [sources]
            self.expect(sources, list, f"{key}.from", "a name or a list of names")
            for s in sources:
                self.expect(s, str, f"{key}.from", "strings")
            typ = spec.get("type", "any")
            if not isinstance(typ, str) or typ not in TYPES:
                raise self.fail(f"{key}.type", f"unknown type {typ!r}; expected one of {', '.join(sorted(TYPES))}")
            derive = spec.get("derive")
            if derive is not None:
                self.expect(derive, str, f"{key}.derive", "an expression")
                self.check_expr(derive, f"{key}.derive", seen)
            if not sources and derive is None and "default" not in spec:
                raise self.fail(key, "needs 'from', 'derive' or 'default'")
            values = spec.get("values")
            if values is not None:
                self.expect(values, dict, f"{key}.values", "an object of value aliases")
            minimum = spec.get("min")
            if minimum is not None:
                self.expect(minimum, (int, float), f"{key}.min", "a number")
            fields.append(FieldSpec(name, sources, typ, spec.get("default"), "default" in spec,
                                    derive, minimum, values))
            seen.add(name)
        return fields

    def parse_checks(self, data: Any, names: set[str]) -> list[tuple[str, str]]:
        self.expect(data, list, "checks", "a list")
        out = []
        for n, item in enumerate(data):
            key = f"checks[{n}]"
            if isinstance(item, str):
                item = {"expr": item, "message": f"failed check: {item}"}
            self.expect(item, dict, key, "an expression or {expr, message}")
            self.check_keys(item, {"expr", "message"}, key)
            expr = self.expect(item.get("expr"), str, f"{key}.expr", "an expression")
            self.check_expr(expr, f"{key}.expr", names)
            out.append((expr, str(item.get("message", f"failed check: {expr}"))))
        return out

    def parse_model(self, data: Any, names: set[str]) -> dict[str, Any]:
        self.expect(data, dict, "model", "an object")
        self.check_keys(data, _MODEL_KEYS, "model")
        model = {"embedding_multiplier": 1.0, "positions": "none", "final_norm": None,
                 "logits_divisor": 1.0, "tie_head": False, "max_positions": None}
        model.update(data)
        if model["positions"] not in ("none", "learned"):
            raise self.fail("model.positions", f"expected 'none' or 'learned', got {model['positions']!r}")
        if model["final_norm"] is not None:
            model["final_norm"] = self.parse_block("final_norm", model["final_norm"], "model.final_norm", names)
        for key in ("embedding_multiplier", "logits_divisor", "tie_head", "max_positions"):
            self.check_value(model[key], f"model.{key}", names)
        return model

    def parse_block(self, name: str, data: Any, key: str, names: set[str]) -> BlockSpec:
        self.expect(data, dict, key, "an object with a 'kind'")
        kind = data.get("kind")
        self.expect(kind, str, f"{key}.kind", "a block kind name")
        options = {k: v for k, v in data.items() if k != "kind"}
        if self.kinds is not None:
            if kind not in self.kinds:
                raise self.fail(f"{key}.kind", f"unknown block kind {kind!r}; known kinds: "
                                               f"{', '.join(sorted(self.kinds))}")
            allowed = set(self.kinds[kind].OPTIONS)
            extra = sorted(k for k in options if k not in allowed)
            if extra:
                raise self.fail(key, f"block kind {kind!r} has no option(s) {', '.join(extra)}; "
                                     f"its options are {', '.join(sorted(allowed)) or 'none'}")
        for k, v in options.items():
            self.check_value(v, f"{key}.{k}", names)
        return BlockSpec(name, kind, options)

    def parse_layer(self, data: Any, key: str, names: set[str]) -> LayerSpec:
        self.expect(data, dict, key, "an object with blocks and flow")
        self.check_keys(data, _LAYER_KEYS, key)
        layout = data.get("layout", "sequential")
        if not isinstance(layout, str) or layout not in LAYOUTS:
            raise self.fail(f"{key}.layout", f"expected one of {', '.join(sorted(LAYOUTS))}, got {layout!r}")
        res = data.get("residual_multiplier", 1.0)
        names = names | {"i"}  # layer options may depend on the layer index
        self.check_value(res, f"{key}.residual_multiplier", names)
        blocks_raw = self.expect(data.get("blocks"), dict, f"{key}.blocks", "an object of named blocks")
        blocks = {}
        for bname, bdata in blocks_raw.items():
            if not isinstance(bname, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", bname):
                raise self.fail(f"{key}.blocks", f"block names must be identifiers, got {bname!r}")
            blocks[bname] = self.parse_block(bname, bdata, f"{key}.blocks.{bname}", names)
        flow = self.expect(data.get("flow"), list, f"{key}.flow", "a list of residual branches")
        if not flow:
            raise self.fail(f"{key}.flow", "needs at least one residual branch")
        for n, branch in enumerate(flow):
            self.expect(branch, list, f"{key}.flow[{n}]", "a list of block names")
            if not branch:
                raise self.fail(f"{key}.flow[{n}]", "a branch needs at least one block")
            for b in branch:
                if not isinstance(b, str) or b not in blocks:
                    raise self.fail(f"{key}.flow[{n}]", f"names block {b!r}, which is not in blocks")
        return LayerSpec(layout, res, blocks, flow)

    def parse_layers(self, data: Any, names: set[str]) -> tuple[Any, str | None, dict[str, LayerSpec]]:
        self.expect(data, dict, "layers", "an object")
        if "count" not in data:
            raise self.fail("layers.count", "required key is missing")
        count = data["count"]
        self.check_value(count, "layers.count", names)
        if "variants" in data:
            self.check_keys(data, {"count", "variant", "variants"}, "layers")
            variant = self.expect(data.get("variant"), str, "layers.variant",
                                  "an expression giving each layer's variant (use i for the index)")
            self.check_expr(variant, "layers.variant", names | {"i"})
            raw = self.expect(data["variants"], dict, "layers.variants", "an object of layer kinds")
            if not raw:
                raise self.fail("layers.variants", "needs at least one variant")
            variants = {str(k): self.parse_layer(v, f"layers.variants.{k}", names) for k, v in raw.items()}
            return count, variant, variants
        self.check_keys(data, _LAYER_KEYS | {"count"}, "layers")
        layer = self.parse_layer({k: v for k, v in data.items() if k != "count"}, "layers", names)
        return count, None, {"default": layer}

    def parse_weights(self, data: Any, names: set[str]) -> list[WeightSpec]:
        self.expect(data, dict, "weights", "an object: canonical name -> checkpoint name")
        out = []
        for target, spec in data.items():
            key = f"weights.{target}"
            self.expect(target, str, "weights", "canonical names")
            self.check_pattern(target, key)
            if isinstance(spec, (str, list)):
                spec = {"from": spec}
            self.expect(spec, dict, key, "a checkpoint name or {from, transform, optional}")
            self.check_keys(spec, {"from", "transform", "optional"}, key)
            sources = spec.get("from")
            if isinstance(sources, str):
                sources = [sources]
            self.expect(sources, list, f"{key}.from", "a checkpoint tensor name or a list of alternatives")
            if not sources:
                raise self.fail(f"{key}.from", "needs at least one checkpoint tensor name")
            for source in sources:
                self.expect(source, str, f"{key}.from", "checkpoint tensor names")
                self.check_pattern(source, f"{key}.from")
                if (PLACEHOLDER in target) != (PLACEHOLDER in source):
                    raise self.fail(key, f"{PLACEHOLDER} must appear in both the canonical and the checkpoint name")
            optional = spec.get("optional", False)
            self.expect(optional, bool, f"{key}.optional", "true or false")
            transforms = self.parse_transforms(spec.get("transform", []), f"{key}.transform", names)
            out.append(WeightSpec(target, sources, transforms, optional))
        return out

    def parse_transforms(self, data: Any, key: str, names: set[str]) -> list[tuple[str, dict[str, Any]]]:
        if isinstance(data, (str, dict)):
            data = [data]
        self.expect(data, list, key, "a transform name, {name: {args}}, or a list of them")
        out = []
        for n, item in enumerate(data):
            k = f"{key}[{n}]"
            if isinstance(item, str):
                tname, args = item, {}
            elif isinstance(item, dict) and len(item) == 1:
                ((tname, args),) = item.items()
                args = {} if args is None else args
                self.expect(args, dict, f"{k}.{tname}", "an object of arguments")
            else:
                raise self.fail(k, "expected a transform name or {name: {args}}")
            if self.transforms is not None and tname not in self.transforms:
                raise self.fail(k, f"unknown transform {tname!r}; known transforms: "
                                   f"{', '.join(sorted(self.transforms))}")
            self.check_value(args, f"{k}.{tname}", names)
            out.append((tname, args))
        return out


def pattern_regex(pattern: str) -> re.Pattern:
    """A compiled regex for a tensor-name pattern with the ``{i}`` layer placeholder."""
    parts = pattern.split(PLACEHOLDER)
    return re.compile("(?P<i>[0-9]+)".join(re.escape(p) for p in parts[:2])
                      + "".join("(?P=i)" + re.escape(p) for p in parts[2:]) + r"\Z")


def parse_mapping(data: Any, path: str, known_kinds: dict[str, type] | None = None,
                  known_transforms: set[str] | None = None) -> Mapping:
    """Validate parsed YAML ``data`` and build a :class:`Mapping`; errors name ``path``."""
    return _Parser(path, known_kinds, known_transforms).parse(data)


def read_mapping(source: Any, known_kinds: dict[str, type] | None = None,
                 known_transforms: set[str] | None = None) -> Mapping:
    """Read and validate a YAML mapping from a path or a package resource."""
    where = str(source)
    try:
        if isinstance(source, (str, Path)):
            text = Path(source).read_text(encoding="utf-8")
        else:
            text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(f"{where}: mapping file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{where}: cannot read the mapping file ({exc})") from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise MappingError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise MappingError(f"{where}: YAML nested too deeply") from None
    _check_size(data, where)
    return parse_mapping(data, where, known_kinds, known_transforms)


def _check_size(data: Any, where: str) -> None:
    """Refuse YAML whose values, aliases expanded, number more than MAX_YAML_VALUES."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise MappingError(f"{where}: more than {MAX_YAML_VALUES} values once YAML aliases are "
                               f"expanded; refusing it")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


__all__ = ["Mapping", "FieldSpec", "BlockSpec", "LayerSpec", "WeightSpec", "read_mapping",
           "parse_mapping", "resolve_value", "pattern_regex", "compile_expr"]
