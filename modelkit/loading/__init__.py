"""Loading: checkpoint + mapping -> plan -> model.

1. :func:`~.choose.open_source`: the first registered weight source that reads the path;
2. :func:`~.choose.choose_mapping`: ``--mapping FILE``, a user mapping, or a registered one;
3. :func:`~.plan.make_plan`: config resolved, every option, scalar and tensor checked against
   the checkpoint's headers, before any data is read;
4. :func:`~.build.build_model`: tensors read, converted to float32, transformed, built into
   blocks layer by layer.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..checkpoint.source import WeightSource
from ..errors import WeightMismatchError
from ..model import Model
from ..plugins import registry as current_registry
from ..plugins.registry import Registry
from .build import build_model
from .choose import MappingChoice, choose_mapping, describe_architectures, open_source
from .plan import Plan, make_plan

# prompts longer than this run through the stack in pieces, bounding activation memory
PREFILL_CHUNK = 512

__all__ = ["Plan", "MappingChoice", "architectures", "describe_architectures", "find_mapping", "inspect", "load",
           "resolve_path"]


def resolve_path(path: str | os.PathLike, revision: str | None = None, progress: bool = False) -> Any:
    """A local path for ``path``: as given when it exists, else a hub repo id's snapshot (the
    local Hugging Face cache first, then downloaded). With ``progress``, a line on stderr says
    so before a download starts (its progress bars follow)."""
    from ..checkpoint.hub import resolve_model_path

    notice = (lambda text: print(f"modelkit: {text}", file=sys.stderr)) if progress else None
    return resolve_model_path(os.fspath(path), revision, notice)


def inspect(path: str | os.PathLike, arch: str | None = None, mapping: str | os.PathLike | None = None, *,
            registry: Registry | None = None, tuning: dict[str, Any] | None = None
            ) -> tuple[WeightSource, MappingChoice, Plan]:
    """Open a checkpoint, choose its mapping and plan the load without reading tensor data.
    The caller closes the returned source."""
    reg = registry if registry is not None else current_registry()
    source = open_source(path, reg)
    try:
        raw = source.config()
        choice = choose_mapping(raw, source.kind, arch, mapping, registry=reg)
        plan = make_plan(choice.mapping, raw, source.tensor_infos(), source.config_location(),
                         registry=reg, tuning=tuning)
    except BaseException:
        source.close()
        raise
    return source, choice, plan


def load(path: str | os.PathLike, arch: str | None = None, *, mapping: str | os.PathLike | None = None,
         revision: str | None = None, progress: bool = False, strict: bool = True,
         prefill_chunk: int = PREFILL_CHUNK, tuning: dict[str, Any] | None = None) -> Model:
    """Load a model from a checkpoint folder, a file a weight source reads (GGUF), or a hub repo
    id (``org/name``, from the local Hugging Face cache or downloaded; ``revision`` picks a
    branch, tag or commit).

    The architecture is detected from config.json unless ``arch`` names it; ``mapping`` uses a
    YAML file instead of any registered one. Strict: any missing, unexpected or mis-shaped
    tensor raises :class:`WeightMismatchError` (summarised; ``modelkit validate`` shows all).
    ``prefill_chunk`` (tokens per piece of a long prompt) and ``tuning`` (tunable block
    options, ``{"attention.query_block": 64}``) change speed and memory, never results.
    """
    from ..errors import GenerationError

    if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
        raise GenerationError(f"prefill_chunk must be a positive integer, got {prefill_chunk!r}")
    source, choice, plan = inspect(resolve_path(path, revision, progress), arch, mapping, tuning=tuning)
    try:
        report = plan.report
        if not report.ok and (strict or report.missing or report.misshaped or report.mistyped):
            raise WeightMismatchError(report, report.summary(str(source.path)))
        return build_model(source, plan, file=choice.file, progress=progress, prefill_chunk=prefill_chunk)
    finally:
        source.close()


def architectures() -> list[str]:
    """Names of every architecture in use: user mappings (``MODELKIT_MAPPINGS``) and registered ones."""
    return sorted({row["name"] for row in describe_architectures(current_registry())})


def find_mapping(raw: dict[str, Any], source_kind: str, arch: str | None = None) -> MappingChoice:
    """The mapping that serves a checkpoint with config ``raw`` read by a ``source_kind``
    weight source (what ``load`` would choose), from the current registry."""
    return choose_mapping(raw, source_kind, arch, registry=current_registry())
