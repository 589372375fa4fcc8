"""The strict, generic loader: checkpoint + mapping -> Model.

1. open the checkpoint through a registered weight source;
2. choose the mapping (``--mapping FILE``, a user folder, or a registered architecture);
3. resolve config.json through the mapping;
4. plan every canonical parameter: which checkpoint tensor, which transforms, what shape;
   report missing, unexpected and mis-shaped tensors before any compute;
5. read, convert to float32 and transform each tensor, building blocks layer by layer so fused
   copies replace the originals as they are made.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import plugins
from .blocks.base import REQUIRED, Block, ParamSpec
from .config import Config
from .errors import CheckpointError, ConfigError, MappingError, UnknownArchitectureError, WeightMismatchError
from .mapping import BlockSpec, Mapping, WeightSpec, read_mapping, resolve_value
from .model import Layer, Model
from .sources.base import TensorInfo, WeightSource
from .sources.safetensors_source import PICKLE_PATTERNS
from .sources.safetensors_source import _pickle_advice as pickle_advice

USER_MAPPINGS_ENV = "MODELKIT_MAPPINGS"
# stored dtypes modelkit cannot read as weights: integers (safetensors and GGUF spell them alike)
# and safetensors' 8-, 6- and 4-bit floats; found from the headers, before any data is read
UNREADABLE_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F8_E4M3", "F8_E5M2",
                     "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F6_E2M3", "F6_E3M2", "F4"}
# what block kinds and transforms raise for options of the wrong type (from a broken mapping)
_OPTION_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError)


# ---- weight sources ------------------------------------------------------------------------

def open_source(path: str | os.PathLike) -> WeightSource:
    """Open a checkpoint (a folder or a file) with the first weight source that accepts it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder")
    for name, cls in plugins.registry().weight_sources.items():
        if cls.can_open(p):
            return cls.open(p)
    if p.is_file() and any(p.match(pattern) for pattern in PICKLE_PATTERNS):
        raise pickle_advice(p.parent, [p])
    kinds = ", ".join(plugins.registry().weight_sources)
    hint = "; give the folder holding it and its config.json" if p.suffix == ".safetensors" else ""
    raise CheckpointError(f"{p}: no weight source can read this (known sources: {kinds}){hint}")


# ---- mappings ------------------------------------------------------------------------------

@dataclass
class MappingChoice:
    """A mapping with where it came from (for ``modelkit archs`` and error messages)."""

    mapping: Mapping
    origin: str  # "plugin <name>", "--mapping", or "MODELKIT_MAPPINGS"
    file: str


def _known() -> tuple[dict, set]:
    reg = plugins.registry()
    return reg.block_kinds, set(reg.transforms)


def load_mapping(source: Any) -> Mapping:
    """Read and validate a mapping against the registered block kinds and transforms."""
    kinds, transforms = _known()
    return read_mapping(source, kinds, transforms)


def user_mapping_files() -> list[Path]:
    """YAML files in the folders named by ``MODELKIT_MAPPINGS`` (``os.pathsep``-separated)."""
    files: list[Path] = []
    for folder in filter(None, os.environ.get(USER_MAPPINGS_ENV, "").split(os.pathsep)):
        p = Path(folder).expanduser()
        if not p.is_dir():
            raise MappingError(f"{USER_MAPPINGS_ENV}: {p} is not a folder")
        files.extend(sorted(list(p.glob("*.yaml")) + list(p.glob("*.yml"))))
    return files


def available_mappings() -> list[MappingChoice]:
    """Every mapping in order of precedence: user folders first, then registered architectures."""
    out = [MappingChoice(load_mapping(f), USER_MAPPINGS_ENV, str(f)) for f in user_mapping_files()]
    for arch in plugins.registry().architectures.values():
        m = load_mapping(arch.mapping)
        if m.name != arch.name:
            m.name = arch.name
        out.append(MappingChoice(m, f"plugin {arch.plugin}", str(arch.mapping)))
    return out


def choose_mapping(raw: dict[str, Any], source_kind: str, arch: str | None = None,
                   mapping_file: str | os.PathLike | None = None) -> MappingChoice:
    """The mapping for a checkpoint: the file given, else the named architecture, else the first
    mapping (user mappings first) whose ``match`` accepts config.json."""
    if mapping_file is not None:
        m = load_mapping(Path(mapping_file))
        return MappingChoice(m, "--mapping", str(mapping_file))
    choices = available_mappings()
    if arch is not None:
        # a name can have a mapping per source kind: `--arch llama` also means `llama-gguf`
        # (registered names are unique) for a GGUF file
        named = [c for c in choices if c.mapping.name in (arch, f"{arch}-{source_kind}")]
        fitting = [c for c in named if _source_fits(c.mapping, source_kind)]
        if fitting:
            return fitting[0]
        if named:
            raise UnknownArchitectureError(
                f"architecture '{arch}' has no mapping for {source_kind} checkpoints")
        names = sorted({c.mapping.name for c in choices})
        raise UnknownArchitectureError(f"unknown architecture '{arch}'; known: {', '.join(names)}")
    for c in choices:
        if c.mapping.matches(raw, source_kind):
            return c
    model_type = raw.get("model_type")
    archs = raw.get("architectures")
    known_types = sorted({t for c in choices for t in c.mapping.match.get("model_type", [])})
    names = sorted({c.mapping.name for c in choices})
    raise UnknownArchitectureError(
        f"no architecture matches model_type {model_type!r} (architectures {archs!r}); "
        f"known architectures: {', '.join(names)}; known model_types: {', '.join(known_types)}")


def _source_fits(m: Mapping, kind: str) -> bool:
    return kind in m.match["source"] if "source" in m.match else kind == "safetensors"


# ---- block options -------------------------------------------------------------------------

def resolve_block_options(spec: BlockSpec, cls: type, cfg: Config, where: str) -> dict[str, Any]:
    """A block's options: the YAML's values over the kind's defaults, ``$expr`` resolved."""
    opts: dict[str, Any] = {}
    for name, default in cls.OPTIONS.items():
        value = spec.options.get(name, default)
        if value is REQUIRED:
            raise MappingError(f"{where}: block kind '{spec.kind}' needs option '{name}'")
        opts[name] = resolve_value(value, cfg, f"{where}.{name}")
    return opts


# ---- the plan and its report ---------------------------------------------------------------

@dataclass
class PlannedTensor:
    """One canonical parameter: where it comes from and what it must look like."""

    canonical: str
    source: str | None  # checkpoint name; None for the tied head
    transforms: list[tuple[str, dict[str, Any]]]
    shape: tuple[int, ...]
    required: bool


@dataclass
class Report:
    """What does not fit: every missing, unexpected and mis-shaped tensor, by checkpoint name."""

    missing: list[tuple[str, str, tuple]] = field(default_factory=list)  # source, canonical, shape
    unexpected: list[tuple[str, tuple]] = field(default_factory=list)  # source, shape
    misshaped: list[tuple[str, str, tuple, tuple, str]] = field(default_factory=list)
    mistyped: list[tuple[str, str, str]] = field(default_factory=list)  # source, canonical, dtype

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped or self.mistyped)

    def lines(self) -> list[str]:
        """The full report, one tensor a line."""
        out = []
        for src, canon, shape in self.missing:
            out.append(f"missing     {src}  (canonical {canon}, expected shape {list(shape)})")
        for src, shape in self.unexpected:
            out.append(f"unexpected  {src}  (shape {list(shape)}; neither mapped nor ignored)")
        for src, canon, got, want, note in self.misshaped:
            extra = f"; {note}" if note else ""
            out.append(f"mis-shaped  {src}  (canonical {canon}): shape {list(got)}, "
                       f"expected {list(want)}{extra}")
        for src, canon, dtype in self.mistyped:
            out.append(f"mis-typed   {src}  (canonical {canon}): dtype {dtype}, which modelkit does not read "
                       f"as weights")
        return out

    def counts(self) -> str:
        """'N missing, N unexpected, N mis-shaped' (and mis-typed, when there are any)."""
        parts = [f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected",
                 f"{len(self.misshaped)} mis-shaped"]
        if self.mistyped:
            parts.append(f"{len(self.mistyped)} mis-typed")
        return ", ".join(parts)

    def summary(self, where: str) -> str:
        """At most five lines for ``load``/``run``; ``modelkit validate`` prints the rest."""
        lines = self.lines()
        head = f"{where}: checkpoint does not fit the mapping ({self.counts()} tensors)"
        shown = lines[:3]
        tail = (f"... and {len(lines) - 3} more; " if len(lines) > 3 else "") + \
            "run `modelkit validate` for the full report"
        return "\n".join([head, *("  " + s for s in shown), tail])


def _transform_shape(shape: tuple, transforms: list[tuple[str, dict[str, Any]]], cfg: Config,
                     where: str) -> tuple:
    reg = plugins.registry().transforms
    for name, args in transforms:
        t = reg[name]
        resolved = resolve_value(args, cfg, where)
        if t.shape is not None:
            try:
                shape = tuple(t.shape(shape, **resolved))
            except _OPTION_ERRORS as exc:
                raise MappingError(f"{where}: bad arguments for transform '{name}': {exc}") from None
    return shape


def _block_params(cls: type, opts: dict[str, Any], where: str, key: str) -> dict[str, ParamSpec]:
    # a block kind rejects impossible options (heads, eps, rope) with a ConfigError: name config.json
    try:
        return cls.params(opts)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except _OPTION_ERRORS as exc:
        # an option of the wrong type (a mapping's `rope_scaling: 1.5`) that the kind does not check
        raise MappingError(f"{key}: the block cannot use these options ({type(exc).__name__}: {exc})") from None


@dataclass
class Plan:
    """Everything needed to load: the resolved config, per-layer blocks, tensors and report."""

    config: Config
    variants: list[str]
    block_options: list[dict[str, dict[str, Any]]]  # per layer: block name -> options
    final_norm_options: dict[str, Any] | None
    tensors: dict[str, PlannedTensor]
    report: Report
    tied: bool


def make_plan(mapping: Mapping, raw: dict[str, Any], infos: dict[str, TensorInfo],
              where: str = "config.json") -> Plan:
    """Resolve the config and check every tensor against the mapping, reading no data."""
    cfg = mapping.resolve_config(raw, where)
    for required in ("vocab_size", "hidden_size"):
        if required not in cfg:
            raise MappingError(f"{mapping.path}: config must declare '{required}'")
    kinds = plugins.registry().block_kinds
    variants = mapping.layer_variants(cfg)
    d, vocab = cfg["hidden_size"], cfg["vocab_size"]
    if not isinstance(d, int) or d <= 0 or not isinstance(vocab, int) or vocab <= 0:
        raise ConfigError(f"{where}: hidden_size and vocab_size must be positive integers")

    model = mapping.model
    tied = bool(resolve_value(model["tie_head"], cfg, f"{mapping.path}: model.tie_head"))
    needed: dict[str, tuple[ParamSpec, str]] = {}  # canonical -> (spec, template)
    needed["embed.weight"] = (ParamSpec((vocab, d)), "embed.weight")
    if model["positions"] == "learned":
        max_pos = resolve_value(model["max_positions"], cfg, f"{mapping.path}: model.max_positions")
        if not isinstance(max_pos, int) or max_pos <= 0:
            raise ConfigError(f"{where}: learned positions need a positive max_positions, got {max_pos!r}")
        needed["pos_embed.weight"] = (ParamSpec((max_pos, d)), "pos_embed.weight")
    final_opts = None
    if model["final_norm"] is not None:
        spec = model["final_norm"]
        cls = kinds[spec.kind]
        final_opts = resolve_block_options(spec, cls, cfg, f"{mapping.path}: model.final_norm")
        for pname, ps in _block_params(cls, final_opts, where, f"{mapping.path}: model.final_norm").items():
            needed[f"final_norm.{pname}"] = (ps, f"final_norm.{pname}")
    if not tied:
        needed["head.weight"] = (ParamSpec((vocab, d)), "head.weight")
    needed["head.bias"] = (ParamSpec((vocab,), required=False), "head.bias")

    block_options: list[dict[str, dict[str, Any]]] = []
    for i, variant in enumerate(variants):
        layer = mapping.variants[variant]
        layer_cfg = Config({**cfg, "i": i}, cfg.raw)
        per_block = {}
        for bname, bspec in layer.blocks.items():
            cls = kinds[bspec.kind]
            key = f"{mapping.path}: layers" + (f".variants.{variant}" if mapping.variant else "") + f".blocks.{bname}"
            opts = resolve_block_options(bspec, cls, layer_cfg, key)
            per_block[bname] = opts
            for pname, ps in _block_params(cls, opts, where, key).items():
                needed[f"layers.{i}.{bname}.{pname}"] = (ps, f"layers.{{i}}.{bname}.{pname}")
        block_options.append(per_block)

    by_target: dict[str, WeightSpec] = {w.target: w for w in mapping.weights}
    report = Report()
    tensors: dict[str, PlannedTensor] = {}
    used: set[str] = set()
    for canonical, (ps, template) in needed.items():
        w = by_target.get(template)
        if w is None:
            if ps.required:
                raise MappingError(f"{mapping.path}: weights: no entry for '{template}', which the "
                                   f"blocks need (add '{template}: <checkpoint tensor name>')")
            continue
        layer_index = canonical.split(".")[1] if template.startswith("layers.{i}") else ""
        candidates = [s.replace("{i}", layer_index) for s in w.sources]
        source = next((c for c in candidates if c in infos), candidates[0])
        required = ps.required or not w.optional
        info = infos.get(source)
        if info is None:
            if required:
                report.missing.append((source, canonical, ps.shape))
            continue
        used.add(source)
        if info.dtype in UNREADABLE_DTYPES:
            report.mistyped.append((source, canonical, info.dtype))
            continue
        try:
            got = _transform_shape(info.shape, w.transforms, cfg, f"{mapping.path}: weights.{template}")
        except CheckpointError as exc:
            report.misshaped.append((source, canonical, info.shape, ps.shape, str(exc)))
            continue
        if tuple(got) != tuple(ps.shape):
            note = f"after {', '.join(n for n, _ in w.transforms)}: {list(got)}" if w.transforms else ""
            report.misshaped.append((source, canonical, info.shape, ps.shape, note))
            continue
        tensors[canonical] = PlannedTensor(canonical, source, w.transforms, ps.shape, required)

    # a tied head may still be stored (transformers writes it sometimes): accept and ignore it
    tied_head_sources = set(by_target["head.weight"].sources) if tied and "head.weight" in by_target else set()
    for name, info in infos.items():
        if name in used or name in tied_head_sources:
            continue
        if any(p.match(name) for p in mapping.ignore):
            continue
        report.unexpected.append((name, info.shape))
    return Plan(cfg, variants, block_options, final_opts, tensors, report, tied)


# ---- loading -------------------------------------------------------------------------------

def _read(source: WeightSource, planned: PlannedTensor, cfg: Config, memo: dict[str, np.ndarray],
          where: str) -> np.ndarray:
    assert planned.source is not None
    if planned.source in memo:
        array = memo[planned.source]
    else:
        array = source.read(planned.source)
        memo.clear()  # keep only the latest source tensor (Falcon's fused qkv is read once)
        memo[planned.source] = array
    reg = plugins.registry().transforms
    for name, args in planned.transforms:
        try:
            array = reg[name].apply(array, **resolve_value(args, cfg, where))
        except _OPTION_ERRORS as exc:
            raise MappingError(f"{where}.{planned.canonical}: bad arguments for transform '{name}': {exc}") from None
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=np.float32)
    if tuple(array.shape) != tuple(planned.shape):
        raise CheckpointError(f"{planned.source}: transforms produced shape {list(array.shape)}, "
                              f"expected {list(planned.shape)}")
    return array


def build_model(source: WeightSource, choice: MappingChoice, plan: Plan, *,
                progress: bool = False, tokenizer: Any = None,
                generation_config: dict | None = None) -> Model:
    """Read every planned tensor and assemble the model, layer by layer."""
    mapping, cfg = choice.mapping, plan.config
    kinds = plugins.registry().block_kinds
    memo: dict[str, np.ndarray] = {}
    bar = _progress_bar(len(plan.tensors), progress)
    n_params = 0

    def get(canonical: str) -> np.ndarray | None:
        nonlocal n_params
        planned = plan.tensors.get(canonical)
        if planned is None:
            return None
        array = _read(source, planned, cfg, memo, f"{mapping.path}: weights")
        n_params += array.size
        if bar is not None:
            bar.update(1)
        return array

    try:
        embed = get("embed.weight")
        assert embed is not None
        pos_embed = get("pos_embed.weight")
        layers: list[Layer] = []
        for i, variant in enumerate(plan.variants):
            spec = mapping.variants[variant]
            blocks: dict[str, Block] = {}
            for bname, bspec in spec.blocks.items():
                cls = kinds[bspec.kind]
                opts = plan.block_options[i][bname]
                params = {pname: get(f"layers.{i}.{bname}.{pname}") for pname in cls.params(opts)}
                try:
                    blocks[bname] = cls(opts, params)
                except _OPTION_ERRORS as exc:  # an option of a type the kind does not check
                    key = f"layers{f'.variants.{variant}' if mapping.variant else ''}.blocks.{bname}"
                    raise MappingError(f"{mapping.path}: {key}: the block cannot use these options "
                                       f"({type(exc).__name__}: {exc})") from None
            res = resolve_value(spec.residual_multiplier, {**cfg, "i": i}, f"{mapping.path}: residual_multiplier")
            if not isinstance(res, (int, float)) or isinstance(res, bool) or res != res:
                raise ConfigError(f"{_config_where(source)}: residual_multiplier must be a number, got {res!r}")
            layers.append(Layer(spec, blocks, float(res), variant))
        final_norm = None
        if plan.final_norm_options is not None:
            fspec = mapping.model["final_norm"]
            cls = kinds[fspec.kind]
            params = {pname: get(f"final_norm.{pname}") for pname in cls.params(plan.final_norm_options)}
            final_norm = cls(plan.final_norm_options, params)
        head = embed if plan.tied else get("head.weight")
        head_bias = get("head.bias")
    finally:
        memo.clear()
        if bar is not None:
            bar.close()
    assert head is not None
    emb_mult = resolve_value(mapping.model["embedding_multiplier"], cfg, f"{mapping.path}: model.embedding_multiplier")
    divisor = resolve_value(mapping.model["logits_divisor"], cfg, f"{mapping.path}: model.logits_divisor")
    for label, value in (("embedding_multiplier", emb_mult), ("logits_divisor", divisor)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise ConfigError(f"{_config_where(source)}: {label} must be a number, got {value!r}")
    if divisor == 0:
        raise ConfigError(f"{_config_where(source)}: logits_divisor must not be zero")
    model = Model(name=mapping.name, config=cfg, mapping=mapping, layers=layers, embed=embed,
                  pos_embed=pos_embed, final_norm=final_norm, head=head, head_bias=head_bias,
                  embedding_multiplier=float(emb_mult), logits_divisor=float(divisor),
                  tokenizer=tokenizer, generation_config=generation_config,
                  source=str(source.path), tied=plan.tied)
    model.n_params = n_params
    model.mapping_file = choice.file
    return model


def count_parameters(model: Model) -> int:
    """Parameters read from the checkpoint (recorded at load)."""
    return int(getattr(model, "n_params", 0))


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="loading", unit="tensor", leave=False, file=sys.stderr)


def inspect(path: str | os.PathLike, arch: str | None = None,
            mapping: str | os.PathLike | None = None) -> tuple[WeightSource, MappingChoice, Plan]:
    """Open a checkpoint, choose its mapping and plan the load without reading tensor data."""
    source = open_source(path)
    try:
        raw = source.config()
        choice = choose_mapping(raw, source.kind, arch, mapping)
        plan = make_plan(choice.mapping, raw, source.tensor_infos(), _config_where(source))
    except BaseException:
        source.close()
        raise
    return source, choice, plan


def non_finite_values(source: WeightSource, plan: Plan) -> list[str]:
    """One line per planned tensor holding NaN or infinite values. Reads every tensor, so it
    takes as long as loading; ``load`` itself does not look (``modelkit validate --values`` does)."""
    out = []
    for name in dict.fromkeys(t.source for t in plan.tensors.values() if t.source is not None):
        array = source.read(name)  # float32 [...]
        nan = int(np.count_nonzero(np.isnan(array)))
        inf = int(np.count_nonzero(np.isinf(array)))
        if nan or inf:
            out.append(f"non-finite  {name}  ({nan} NaN, {inf} infinite of {array.size} values)")
    return out


def _config_where(source: WeightSource) -> str:
    folder = source.folder()
    return str(folder / "config.json") if folder is not None and source.kind == "safetensors" else str(source.path)


def load(path: str | os.PathLike, arch: str | None = None, *, mapping: str | os.PathLike | None = None,
         progress: bool = False, strict: bool = True) -> Model:
    """Load a model from a checkpoint folder (or a file a weight source reads).

    The architecture is detected from config.json unless ``arch`` names it; ``mapping`` uses a
    YAML file instead of any registered one. Strict: any missing, unexpected or mis-shaped
    tensor raises :class:`WeightMismatchError` (summarised; ``modelkit validate`` shows all).
    """
    from .tokenizer import load_generation_config, load_tokenizer

    source, choice, plan = inspect(path, arch, mapping)
    try:
        report = plan.report
        if not report.ok and (strict or report.missing or report.misshaped or report.mistyped):
            raise WeightMismatchError(report, report.summary(str(source.path)))
        tokenizer = load_tokenizer(source)
        gen_cfg = load_generation_config(source)
        return build_model(source, choice, plan, progress=progress, tokenizer=tokenizer,
                           generation_config=gen_cfg)
    finally:
        source.close()


def architectures() -> list[str]:
    """Names of the registered architectures."""
    return sorted(plugins.registry().architectures)


def describe_architectures() -> list[dict[str, str]]:
    """Every mapping in use, in precedence order, with the plugin or folder providing it."""
    rows = []
    seen_files = set()
    for c in available_mappings():
        if c.file in seen_files:
            continue
        seen_files.add(c.file)
        rows.append({"name": c.mapping.name, "origin": c.origin, "file": c.file,
                     "model_type": ", ".join(c.mapping.match.get("model_type", [])),
                     "source": ", ".join(c.mapping.match.get("source", ["safetensors"]))})
    return rows

