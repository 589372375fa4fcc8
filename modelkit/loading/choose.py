"""Choosing how to read a checkpoint: its weight source and its mapping.

Mappings come, in order of precedence, from ``--mapping FILE``, the folders named by
``MODELKIT_MAPPINGS`` (user mappings), and the architectures plugins register. Each file is
parsed once per process (:func:`modelkit.schema.read_mapping`).
"""

from __future__ import annotations

import dataclasses
import shlex
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.safetensors import PICKLE_PATTERNS, pickle_advice
from ..checkpoint.source import WeightSource
from ..errors import CheckpointError, MappingError, UnknownArchitectureError
from ..plugins.manager import registry as current_registry
from ..plugins.registry import Registry
from ..schema import read
from ..schema.spec import Mapping

USER_MAPPINGS_ENV = "MODELKIT_MAPPINGS"


def open_source(path: str | os.PathLike, registry: Registry | None = None) -> WeightSource:
    """Open a checkpoint (a folder or a file) with the first weight source that accepts it."""
    registry = registry if registry is not None else current_registry()
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    if not p.is_file() and not p.is_dir():
        raise CheckpointError(f"{p}: not a regular file or a folder (a FIFO or a device?)")
    for cls in registry.weight_sources.values():
        if cls.can_open(p):
            return cls.open(p)
    if p.is_file() and any(p.match(pattern) for pattern in PICKLE_PATTERNS):
        raise pickle_advice(p.parent, [p])
    kinds = ", ".join(registry.weight_sources)
    if p.is_dir():
        raise CheckpointError(f"{p}: no *.safetensors weight files, nor weights of another format a "
                              f"weight source reads (known sources: {kinds})")
    raise CheckpointError(f"{p}: no weight source can read this (known sources: {kinds}){_file_hint(p)}")


def _file_hint(p: Path) -> str:
    """What the user probably meant by giving this file as the checkpoint."""
    if p.suffix == ".safetensors" or p.suffix == ".json":
        folder = p.parent if str(p.parent) not in ("", ".") else Path(".")
        return f"; give the folder holding it and its config.json (--model {shlex.quote(str(folder))})"
    if p.suffix in (".yaml", ".yml"):
        return "; a mapping file goes to --mapping FILE, with --model naming the checkpoint"
    return ""


@dataclass(frozen=True)
class MappingChoice:
    """A mapping with where it came from (for ``modelkit archs`` and error messages)."""

    mapping: Mapping
    origin: str  # "plugin <name>", "--mapping", or "MODELKIT_MAPPINGS"
    file: str


def load_mapping(source: Any, registry: Registry | None = None) -> Mapping:
    """Read and validate a mapping against the registered block kinds and transforms."""
    registry = registry if registry is not None else current_registry()

    def resolve(name: str) -> Any:
        arch = registry.architectures.get(name)
        return arch.mapping if arch is not None else None

    # the registry's own tables (one object each per registry), so the parse cache keyed by them hits
    return read.read_mapping(source, registry.block_kinds, registry.transforms, resolve)


def forget_mappings() -> None:
    """Drop every parsed mapping (the plugins changed)."""
    read.forget()


def user_mapping_files() -> list[Path]:
    """YAML files in the folders named by ``MODELKIT_MAPPINGS`` (``os.pathsep``-separated)."""
    files: list[Path] = []
    for folder in filter(None, os.environ.get(USER_MAPPINGS_ENV, "").split(os.pathsep)):
        p = Path(folder).expanduser()
        if not p.is_dir():
            raise MappingError(f"{USER_MAPPINGS_ENV}: {p} is not a folder")
        found = list(p.glob("*.yaml")) + list(p.glob("*.yml"))
        files.extend(sorted(f for f in found if f.is_file()))  # a FIFO named *.yaml is not read
    return files


def available_mappings(registry: Registry | None = None) -> list[MappingChoice]:
    """Every mapping in order of precedence: user folders first, then registered architectures."""
    registry = registry if registry is not None else current_registry()
    out = [MappingChoice(load_mapping(f, registry), USER_MAPPINGS_ENV, str(f)) for f in user_mapping_files()]
    for arch in registry.architectures.values():
        m = load_mapping(arch.mapping, registry)
        if m.name != arch.name:  # the registered name wins over the file's own
            m = dataclasses.replace(m, name=arch.name)
        out.append(MappingChoice(m, f"plugin {arch.plugin}", str(arch.mapping)))
    return out


def choose_mapping(raw: dict[str, Any], source_kind: str, arch: str | None = None,
                   mapping_file: str | os.PathLike | None = None, *,
                   registry: Registry | None = None) -> MappingChoice:
    """The mapping for a checkpoint: the file given, else the named architecture, else the first
    mapping (user mappings first) whose ``match`` accepts config.json."""
    registry = registry if registry is not None else current_registry()
    if mapping_file is not None:
        return MappingChoice(load_mapping(Path(mapping_file), registry), "--mapping", str(mapping_file))
    choices = available_mappings(registry)
    serving = [c for c in choices if c.mapping.matches(raw, source_kind)]
    if arch is not None:
        # a name can have a mapping per source kind: `--arch llama` also means `llama-gguf`
        # (registered names are unique) for a GGUF file
        named = [c for c in choices if c.mapping.name in (arch, f"{arch}-{source_kind}")]
        fitting = [c for c in named if c.mapping.serves_source(source_kind)]
        if not fitting:
            if named:
                raise UnknownArchitectureError(
                    f"architecture '{arch}' has no mapping for {source_kind} checkpoints")
            names = sorted({c.mapping.name for c in choices})
            raise UnknownArchitectureError(
                f"unknown architecture '{arch}' (`modelkit archs` lists them; a new one is a mapping file: "
                f"--mapping FILE, see docs/adding-an-architecture.md); known: {', '.join(names)}")
        chosen = fitting[0]
        if serving and chosen not in serving and not chosen.mapping.matches(raw, source_kind):
            # the checkpoint is another architecture's: say which, instead of failing on its config
            raise UnknownArchitectureError(
                f"the checkpoint has model_type {raw.get('model_type')!r}, which architecture "
                f"'{serving[0].mapping.name}' serves, not '{arch}'; drop --arch or pass --arch "
                f"{serving[0].mapping.name}")
        return chosen
    if serving:
        return serving[0]
    model_type = raw.get("model_type")
    archs = raw.get("architectures")
    known_types = sorted({t for c in choices for t in c.mapping.match.get("model_type", [])})
    names = sorted({c.mapping.name for c in choices})
    # the fix first: the lists that follow are long
    raise UnknownArchitectureError(
        f"no architecture matches model_type {model_type!r} (architectures {archs!r}); a mapping of your "
        f"own can serve it: --mapping FILE, see docs/adding-an-architecture.md (or --arch NAME for a "
        f"known architecture); known architectures: {', '.join(names)}; known model_types: "
        f"{', '.join(known_types)}")


def describe_architectures(registry: Registry | None = None) -> list[dict[str, str]]:
    """Every mapping in use, in precedence order, with the plugin or folder providing it."""
    rows = []
    seen_files = set()
    for c in available_mappings(registry):
        if c.file in seen_files:
            continue
        seen_files.add(c.file)
        rows.append({"name": c.mapping.name, "origin": c.origin, "file": c.file,
                     "model_type": ", ".join(c.mapping.match.get("model_type", [])),
                     "source": ", ".join(c.mapping.match.get("source", ["safetensors"]))})
    return rows
