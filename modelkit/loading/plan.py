"""The plan: every canonical parameter, block option and scalar of a model, resolved and checked
against the checkpoint's headers before any tensor data is read.

``make_plan`` resolves config.json through the mapping, gives every block its options (each
checked by its :class:`~modelkit.nn.options.Option`), checks that every block reads and
writes the model's hidden width, resolves every transform's arguments, predicts every tensor's
shape after its transforms, and reports what does not fit (:class:`~.report.Report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..checkpoint.source import TensorInfo
from ..errors import CheckpointError, ConfigError, MappingError
from ..nn.block import ParamSpec
from ..nn.options import INT_MAX, REQUIRED, float32_scalar
from ..plugins.registry import Registry, Transform
from ..schema.resolve import Config, layer_variants, resolve_config, resolve_value
from ..schema.spec import PLACEHOLDER, STACK_PLACEHOLDER, BlockSpec, LayerSpec, Mapping, WeightSpec
from .report import Report

# stored dtypes modelkit cannot read as weights: integers (safetensors and GGUF spell them alike)
# and safetensors' 8-, 6- and 4-bit floats; found from the headers, before any data is read
UNREADABLE_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F8_E4M3", "F8_E5M2",
                     "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F6_E2M3", "F6_E3M2", "F4"}
# pieces in one stacked entry at most (published MoE models have a few hundred experts a layer)
MAX_STACK = 1 << 16


@dataclass(frozen=True)
class PlannedTransform:
    """A transform with its arguments resolved over the config."""

    transform: Transform
    args: dict[str, Any]


@dataclass
class PlannedTensor:
    """One canonical parameter: where it comes from and what it must look like."""

    canonical: str
    source: str | None  # checkpoint name (of the first piece, when stacked)
    transforms: list[PlannedTransform]
    shape: tuple[int, ...]
    required: bool
    # a stacked entry's checkpoint tensors, in order: each is transformed, then all are stacked
    # along a new first axis; empty for one tensor
    parts: tuple[str, ...] = ()


@dataclass
class PlannedBlock:
    """One block of one layer: its kind's class, its checked options, its parameters."""

    name: str
    kind: str
    cls: type
    options: dict[str, Any]
    params: dict[str, ParamSpec]  # local name -> spec


@dataclass
class PlannedLayer:
    """One layer: its variant, its blocks in YAML order, its residual multiplier."""

    variant: str
    spec: LayerSpec
    blocks: dict[str, PlannedBlock]
    residual_multiplier: float


@dataclass
class Plan:
    """Everything needed to build the model, resolved: config, layers, tensors, scalars, report."""

    mapping: Mapping
    config: Config
    layers: list[PlannedLayer]
    final_norm: PlannedBlock | None
    tensors: dict[str, PlannedTensor]
    report: Report
    tied: bool
    embedding_multiplier: float
    logits_divisor: float
    logits_softcap: float | None  # None: off
    max_positions: int | None  # learned positions; None without
    where: str = "config.json"
    tuning: dict[str, Any] = field(default_factory=dict)
    embed_norm: PlannedBlock | None = None
    embed_dim: int | None = None  # width of the embedding and the head when it is not hidden_size

    @property
    def variants(self) -> list[str]:
        """Each layer's variant name."""
        return [layer.variant for layer in self.layers]


def _number(value: Any, label: str, where: str, divisor: bool = False) -> float:
    """A model scalar as a float, checked for what float32 (where it is used) can hold."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ConfigError(f"{where}: {label} must be a number, got {value!r}")
    return float32_scalar(value, f"{where}: {label}", divisor=divisor)


def _check_transform_args(args: Any, key: str, where: str) -> None:
    """Every float among a transform's arguments (a factor to scale by, a value to add; nested
    in lists too) must be finite in float32: the weights it touches are float32."""
    if isinstance(args, float):
        float32_scalar(args, f"{where}: {key}")
    elif isinstance(args, dict):
        for name, value in args.items():
            _check_transform_args(value, f"{key}.{name}", where)
    elif isinstance(args, (list, tuple)):
        for value in args:
            _check_transform_args(value, key, where)


def _embed_dim(value: Any, hidden: int, where: str) -> int:
    """The embedding's width: ``model.embed_dim`` when given, else the hidden size."""
    if value is None:
        return hidden
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= INT_MAX:
        raise ConfigError(f"{where}: embed_dim must be a positive integer (or null: hidden_size), got {value!r}")
    return value


def _check_tuning(tuning: dict[str, Any], registry: Registry) -> dict[str, dict[str, Any]]:
    """``{"kind.option": value}`` -> kind -> option -> value, every key a tunable option."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in tuning.items():
        kind, _, name = str(key).partition(".")
        cls = registry.block_kinds.get(kind)
        option = cls.OPTIONS.get(name) if cls is not None else None
        if option is None or not option.tunable:
            tunables = sorted(f"{k}.{n}" for k, c in registry.block_kinds.items()
                              for n, o in c.OPTIONS.items() if o.tunable)
            raise ConfigError(f"tuning: {key!r} is not a tunable block option; tunable: {', '.join(tunables)}")
        out.setdefault(kind, {})[name] = value
    return out


def plan_block(spec: BlockSpec, cls: type, cfg: Config, key: str, path: str, where: str,
               tuning: dict[str, dict[str, Any]]) -> PlannedBlock:
    """A block's options (the YAML's over the kind's defaults, ``$expr`` resolved, tuning
    applied, each checked by its Option) and the parameters they imply."""
    opts: dict[str, Any] = {}
    overrides = tuning.get(spec.kind, {})
    for name, option in cls.OPTIONS.items():
        value = overrides[name] if name in overrides else spec.options.get(name, option.default)
        if value is REQUIRED:
            raise MappingError(f"{path}: {key}: block kind '{spec.kind}' needs option '{name}'")
        resolved = resolve_value(value, cfg, f"{path}: {key}.{name}")
        opts[name] = option.check(resolved, f"{where}: {key}.{name}")
    try:
        params = cls.params(opts)
    except ConfigError as exc:  # options that do not work together (heads that do not divide)
        raise ConfigError(f"{where}: {key}: {exc}") from None
    return PlannedBlock(spec.name, spec.kind, cls, opts, params)


def _check_width(block: PlannedBlock, hidden: int, layer: str, where: str) -> None:
    width = block.cls.width(block.options)
    if width is not None and width != hidden:
        raise ConfigError(f"{where}: {layer}, block {block.name} ({block.kind}) has width {width}, "
                          f"but the model's hidden_size is {hidden}")


def _plan_transforms(w: WeightSpec, cfg: Config, registry: Registry, key: str, where: str
                     ) -> list[PlannedTransform]:
    planned = []
    for name, args in w.transforms:
        resolved = resolve_value(args, cfg, f"{key}.{name}")
        _check_transform_args(resolved, f"{key.rpartition(': ')[2]}.{name}", where)
        planned.append(PlannedTransform(registry.transforms[name], resolved))
    return planned


def _shape_after(shape: tuple, transforms: list[PlannedTransform], key: str) -> tuple:
    for t in transforms:
        if t.transform.shape is not None:
            try:
                shape = tuple(t.transform.shape(shape, **t.args))
            except CheckpointError:
                raise
            except (TypeError, ValueError, KeyError, IndexError, ArithmeticError) as exc:
                raise MappingError(f"{key}: bad arguments for transform '{t.transform.name}': {exc}") from None
    return shape


def _stack_count(w: WeightSpec, cfg: Config, key: str, where: str) -> int | None:
    """How many checkpoint tensors a stacked entry reads (None: not stacked)."""
    if w.stack is None:
        return None
    n = resolve_value(w.stack, cfg, f"{key}.stack")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_STACK:
        raise ConfigError(f"{where}: weights.{w.target}.stack must be a positive integer (at most "
                          f"{MAX_STACK}), got {n!r}")
    return n


def _stored_form(mapping: Mapping, w: WeightSpec, layer_index: str, cfg: Config, infos: dict[str, TensorInfo],
                 key: str, where: str) -> WeightSpec:
    """The first of an entry's forms (the entry, then its fallbacks) whose ``when`` holds with a
    tensor in the checkpoint; else the first whose ``when`` holds (its tensors are then reported
    missing)."""
    forms = applicable_forms(w, cfg, key)
    for form in forms:
        names = mapping.checkpoint_names(form.sources, layer_index)
        count = _stack_count(form, cfg, key, where) or 1
        if any(n.replace(STACK_PLACEHOLDER, str(j)) in infos for n in names for j in range(count)):
            return form
    return forms[0] if forms else w


def applicable_forms(w: WeightSpec, cfg: Config, key: str) -> list[WeightSpec]:
    """An entry's forms (the entry, then its fallbacks) whose ``when`` holds over ``cfg``."""
    out = []
    for form in (w, *w.fallbacks):
        if form.when is None:
            out.append(form)
            continue
        holds = resolve_value(form.when, cfg, f"{key}.when")
        if not isinstance(holds, bool):
            raise ConfigError(f"{key}.when must be true or false, got {holds!r}")
        if holds:
            out.append(form)
    return out


def _plan_tensor(mapping: Mapping, w: WeightSpec, canonical: str, ps: ParamSpec, layer_index: str,
                 cfg: Config, registry: Registry, infos: dict[str, TensorInfo], report: Report,
                 used: set[str], key: str, where: str) -> PlannedTensor | None:
    """One canonical parameter's checkpoint tensor(s), checked from their headers; what does not
    fit goes to ``report`` (None is returned)."""
    transforms = _plan_transforms(w, cfg, registry, key, where)
    candidates = mapping.checkpoint_names(w.sources, layer_index)
    count = _stack_count(w, cfg, key, where)
    required = ps.required or not w.optional
    if count is None:  # one tensor of the planned shape
        pieces, piece_shape = [candidates], ps.shape
    else:  # count tensors, each of the planned shape without its first axis
        pieces = [[c.replace(STACK_PLACEHOLDER, str(j)) for c in candidates] for j in range(count)]
        piece_shape = ps.shape[1:]
    sources = [next((c for c in names if c in infos), names[0]) for names in pieces]
    used.update(s for s in sources if s in infos)  # mapped, even when the stack lacks a piece
    absent = [s for s in sources if s not in infos]
    if count is not None:  # a stack absent altogether, or of another count, is one line
        shown = candidates[0].replace(STACK_PLACEHOLDER, f"{{0..{count - 1}}}")
        if len(absent) == count:
            if required:
                report.missing.append((shown, canonical, ps.shape))
            return None
        if not absent and ps.shape[:1] != (count,):
            report.misshaped.append((shown, canonical, (count, *piece_shape), ps.shape, f"{count} stacked"))
            return None
    if absent and (required or len(absent) < len(sources)):  # a stack is complete or absent
        report.missing.extend((s, canonical, piece_shape) for s in absent)
    if absent:
        return None
    ok = True
    for source in sources:
        info = infos[source]
        if info.dtype in UNREADABLE_DTYPES:
            report.mistyped.append((source, canonical, info.dtype))
            ok = False
            continue
        try:
            got = _shape_after(info.shape, transforms, key)
        except CheckpointError as exc:
            report.misshaped.append((source, canonical, info.shape, ps.shape, str(exc)))
            ok = False
            continue
        if count is not None:
            got = (count, *got)
        if tuple(got) != tuple(ps.shape):
            notes = [f"after {', '.join(t.transform.name for t in transforms)}"] if transforms else []
            notes += [f"{count} stacked"] if count is not None else []
            note = f"{' and '.join(notes)}: {list(got)}" if notes else ""
            report.misshaped.append((source, canonical, info.shape, ps.shape, note))
            ok = False
    if not ok:
        return None
    return PlannedTensor(canonical, sources[0], transforms, ps.shape, required,
                         tuple(sources) if count is not None else ())


def make_plan(mapping: Mapping, raw: dict[str, Any], infos: dict[str, TensorInfo],
              where: str = "config.json", *, registry: Registry | None = None,
              tuning: dict[str, Any] | None = None) -> Plan:
    """Resolve the config and check every tensor, option and scalar against the mapping,
    reading no tensor data (``registry``: the plugins' registrations, the current ones by
    default)."""
    if registry is None:
        from ..plugins.manager import registry as current_registry

        registry = current_registry()
    cfg = resolve_config(mapping, raw, where)
    for required in ("vocab_size", "hidden_size"):
        if required not in cfg:
            raise MappingError(f"{mapping.path}: config must declare '{required}'")
    d, vocab = cfg["hidden_size"], cfg["vocab_size"]
    if not isinstance(d, int) or d <= 0 or not isinstance(vocab, int) or vocab <= 0:
        raise ConfigError(f"{where}: hidden_size and vocab_size must be positive integers")
    if max(d, vocab) > INT_MAX:
        raise ConfigError(f"{where}: hidden_size and vocab_size must be at most {INT_MAX:,}, got {d} and {vocab}")
    tunes = _check_tuning(tuning or {}, registry)
    kinds = registry.block_kinds
    path = mapping.path
    model = mapping.model

    tied = bool(resolve_value(model.tie_head, cfg, f"{path}: model.tie_head"))
    emb_mult = _number(resolve_value(model.embedding_multiplier, cfg, f"{path}: model.embedding_multiplier"),
                       "embedding_multiplier", where)
    divisor = resolve_value(model.logits_divisor, cfg, f"{path}: model.logits_divisor")
    if divisor == 0:
        raise ConfigError(f"{where}: logits_divisor must not be zero")
    divisor = _number(divisor, "logits_divisor", where, divisor=True)
    softcap = resolve_value(model.logits_softcap, cfg, f"{path}: model.logits_softcap")
    if softcap is not None:
        if not _number(softcap, "logits_softcap", where) > 0:
            raise ConfigError(f"{where}: logits_softcap must be positive (or null: off), got {softcap!r}")
        softcap = _number(softcap, "logits_softcap", where, divisor=True)

    needed: dict[str, tuple[ParamSpec, str]] = {}  # canonical -> (spec, weights template)
    e = _embed_dim(resolve_value(model.embed_dim, cfg, f"{path}: model.embed_dim"), d, where)
    needed["embed.weight"] = (ParamSpec((vocab, e)), "embed.weight")
    if e != d:  # the embedding and the head are narrower (or wider) than the layers: projections
        needed["embed_proj.weight"] = (ParamSpec((d, e)), "embed_proj.weight")
        needed["head_proj.weight"] = (ParamSpec((e, d)), "head_proj.weight")
    max_pos = None
    if model.positions == "learned":
        max_pos = resolve_value(model.max_positions, cfg, f"{path}: model.max_positions")
        if not isinstance(max_pos, int) or isinstance(max_pos, bool) or not 0 < max_pos <= INT_MAX:
            raise ConfigError(f"{where}: learned positions need a positive max_positions (at most "
                              f"{INT_MAX:,}), got {max_pos!r}")
        needed["pos_embed.weight"] = (ParamSpec((max_pos, d)), "pos_embed.weight")
    model_blocks: dict[str, PlannedBlock | None] = {}
    for name in ("embed_norm", "final_norm"):
        spec = getattr(model, name)
        when = True if spec is None else resolve_value(spec.when, cfg, f"{path}: model.{name}.when")
        if not isinstance(when, bool):
            raise ConfigError(f"{where}: model.{name}.when must be true or false, got {when!r}")
        if spec is None or not when:
            model_blocks[name] = None
            continue
        planned = plan_block(spec, kinds[spec.kind], cfg, f"model.{name}", path, where, tunes)
        _check_width(planned, d, f"the model's {name}", where)
        for pname, ps in planned.params.items():
            needed[f"{name}.{pname}"] = (ps, f"{name}.{pname}")
        model_blocks[name] = planned
    if not tied:
        needed["head.weight"] = (ParamSpec((vocab, e)), "head.weight")
    needed["head.bias"] = (ParamSpec((vocab,), required=False), "head.bias")

    layers: list[PlannedLayer] = []
    for i, variant in enumerate(layer_variants(mapping, cfg)):
        spec = mapping.variants[variant]
        layer_cfg = cfg.with_layer(i)
        blocks = {}
        for bname, bspec in spec.blocks.items():
            key = f"{mapping.layer_key(variant)}.blocks.{bname}"
            block = plan_block(bspec, kinds[bspec.kind], layer_cfg, key, path, where, tunes)
            _check_width(block, d, f"layer {i}", where)
            blocks[bname] = block
            for pname, ps in block.params.items():
                needed[f"layers.{i}.{bname}.{pname}"] = (ps, f"layers.{PLACEHOLDER}.{bname}.{pname}")
        res = resolve_value(spec.residual_multiplier, layer_cfg, f"{path}: residual_multiplier")
        layers.append(PlannedLayer(variant, spec, blocks, _number(res, "residual_multiplier", where)))

    by_target: dict[str, WeightSpec] = {w.target: w for w in mapping.weights}
    report = Report()
    tensors: dict[str, PlannedTensor] = {}
    used: set[str] = set()
    for canonical, (ps, template) in needed.items():
        w = by_target.get(template)
        if w is None:
            if ps.required:
                raise MappingError(f"{path}: weights: no entry for '{template}', which the "
                                   f"blocks need (add '{template}: <checkpoint tensor name>')")
            continue
        layer_index = canonical.split(".")[1] if template.startswith("layers.") else ""
        key = f"{path}: weights.{template}"
        entry_cfg = cfg if not layer_index else cfg.with_layer(int(layer_index))
        form = _stored_form(mapping, w, layer_index, entry_cfg, infos, key, where) if w.fallbacks else w
        planned = _plan_tensor(mapping, form, canonical, ps, layer_index, entry_cfg, registry, infos,
                               report, used, key, where)
        if planned is not None:
            tensors[canonical] = planned

    # a tied head may still be stored (transformers writes it sometimes): accept and ignore it
    head = by_target.get("head.weight")
    tied_head_sources = (set(mapping.checkpoint_names([n for form in (head, *head.fallbacks) for n in form.sources]))
                         if tied and head is not None else set())
    for name, info in infos.items():
        if name in used or name in tied_head_sources:
            continue
        if any(p.match(name) for p in mapping.ignore):
            continue
        report.unexpected.append((name, info.shape))
    return Plan(mapping, cfg, layers, model_blocks["final_norm"], tensors, report, tied, emb_mult, divisor,
                softcap, max_pos, where, tuning=dict(tuning or {}), embed_norm=model_blocks["embed_norm"],
                embed_dim=e if e != d else None)
