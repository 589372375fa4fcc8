"""Reading mapping files: YAML (safe subset, bounded), ``extends:`` resolved, parsed once.

A mapping may build on another with ``extends: NAME`` (a registered architecture) or
``extends: FILE.yaml`` (relative to the extending file). The base's YAML data is merged under
the extension's: objects merge key by key, recursively; any other value (a list, a string, a
number) replaces the base's; ``match`` and each ``weights`` entry are replaced whole, and
``checks`` are added to the base's. In the named tables ``config``, ``layers``, ``blocks``,
``variants``, ``weights`` and ``inert_config`` a key set to null removes the base's entry (in
``layers``, so that an extension can turn a uniform stack into variants). An entry the
extension overrides keeps the base's place (config fields are read in order, so a derivation
sees the fields above it); new entries follow the base's. The merged data is then validated
as one file.

Parsed mappings are kept per process, keyed by the file and its content, so every mapping is
parsed once however many models are loaded.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Callable, Collection

import yaml

from ..checkpoint.files import read_text_file
from ..errors import MappingError
from .parse import parse_mapping
from .spec import Mapping

# libyaml's safe loader when present: the same safe subset, ~10x faster
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# YAML aliases let a few lines stand for a billion values ("billion laughs"); a mapping walked
# value by value past this many is refused (the shipped ones have a few hundred)
MAX_YAML_VALUES = 100_000
# a mapping file larger than this is not a mapping (the largest shipped one is ~12 KB)
MAX_MAPPING_BYTES = 1 << 20
MAX_EXTENDS_DEPTH = 8
# tables whose entries an extension may remove by setting them to null
_NAMED_TABLES = {"config", "layers", "blocks", "variants", "weights", "inert_config"}
# keys whose value an extension replaces whole (a weights entry is one unit: its name, its
# transforms); and lists an extension adds to
_REPLACED = {"match"}
_ADDED = {"checks"}

_cache: dict[tuple, tuple[Mapping, list[tuple]]] = {}  # key -> (mapping, its bases' identities)
_cache_lock = threading.Lock()

# finds the mapping file a registered architecture name stands for (None: unknown name)
Resolver = Callable[[str], Any]


def _identity(source: Any) -> tuple:
    """A cache key that changes when the file's content does (its text is small, so hashing it
    costs far less than parsing it)."""
    try:
        return (str(source), hashlib.sha256(read_text(source).encode("utf-8")).hexdigest())
    except MappingError:
        return (str(source), None)


def read_text(source: Any) -> str:
    """A mapping file's text; only regular files are read, and only up to MAX_MAPPING_BYTES."""
    if isinstance(source, (str, Path)):
        return read_text_file(Path(source), MAX_MAPPING_BYTES, MappingError, "mapping file")
    where = str(source)  # a package resource
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise MappingError(f"{where}: cannot read the mapping file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MappingError(f"{where}: not UTF-8 text") from None


def load_yaml(source: Any) -> Any:
    """The YAML data of a mapping file (safe loader, aliases bounded)."""
    where = str(source)
    try:
        data = yaml.load(read_text(source), Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise MappingError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise MappingError(f"{where}: YAML nested too deeply") from None
    _check_size(data, where)
    return data


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


def merge(base: Any, override: Any, table: str = "") -> Any:
    """``override`` laid over ``base`` (see the module docstring for the rules)."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    out = dict(base)
    for key, value in override.items():
        if value is None and table in _NAMED_TABLES:
            out.pop(key, None)
        elif key not in out or table == "weights" or (not table and key in _REPLACED):
            out[key] = value
        elif not table and key in _ADDED and isinstance(out[key], list) and isinstance(value, list):
            out[key] = out[key] + value
        else:
            out[key] = merge(out[key], value, key if isinstance(key, str) else "")
    return out


def merged_data(source: Any, resolve: Resolver | None = None, chain: list[str] | None = None) -> tuple[Any, list[str]]:
    """The file's YAML data merged over its ``extends`` chain, and the chain's files (nearest
    first). ``resolve`` finds a registered architecture's mapping file by name."""
    chain = chain or []
    where = str(source)
    if len(chain) > MAX_EXTENDS_DEPTH:
        raise MappingError(f"{where}: extends: more than {MAX_EXTENDS_DEPTH} levels")
    data = load_yaml(source)
    if not isinstance(data, dict) or "extends" not in data:
        return data, []
    name = data["extends"]
    if not isinstance(name, str) or not name:
        raise MappingError(f"{where}: extends: expected an architecture name or a .yaml file, got {name!r}")
    if name.endswith((".yaml", ".yml")):
        if not isinstance(source, (str, Path)):
            raise MappingError(f"{where}: extends: a packaged mapping extends architectures by name")
        base = Path(source).parent / name
    else:
        base = resolve(name) if resolve is not None else None
        if base is None:
            raise MappingError(f"{where}: extends: no architecture named {name!r}")
    if str(base) in chain or str(base) == where:
        raise MappingError(f"{where}: extends: {name!r} extends this file again (a cycle)")
    base_data, base_chain = merged_data(base, resolve, chain + [where])
    if not isinstance(base_data, dict):
        raise MappingError(f"{base}: expected a mapping (YAML object) at the top level")
    merged = merge({k: v for k, v in base_data.items() if k != "extends"}, data)
    return merged, [str(base)] + base_chain


def read_mapping(source: Any, known_kinds: dict[str, type] | None = None,
                 known_transforms: Collection[str] | None = None, resolve: Resolver | None = None) -> Mapping:
    """Read, merge over its ``extends`` chain, and validate a mapping file (a path or a package
    resource). ``resolve`` finds a registered architecture's mapping file by name. Parsed once
    per process for the same file content and registry."""
    key = (_identity(source), id(known_kinds), id(known_transforms))
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and all(_identity(b) == ident for b, ident in zip(cached[0].extends, cached[1])):
        return cached[0]
    data, chain = merged_data(source, resolve, [])
    mapping = parse_mapping(data, str(source), known_kinds, known_transforms)
    mapping.extends = chain
    with _cache_lock:
        _cache[key] = (mapping, [_identity(b) for b in chain])
    return mapping


def forget() -> None:
    """Drop every parsed mapping (the registry changed)."""
    with _cache_lock:
        _cache.clear()
