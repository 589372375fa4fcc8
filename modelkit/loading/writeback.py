"""A model's canonical parameters laid out as a mapping's checkpoint stores them: the inverse of
the loader, for ``modelkit convert``.

:func:`stored_layout` names every stored tensor, predicts its shape and says which canonical
parameters it is made from, without any data; :meth:`StoredTensor.build` makes one from those
parameters. Each transform is undone by the :class:`~modelkit.plugins.registry.Inverse`
registered with it; a stacked entry is written as one tensor per piece; the pieces a
transform takes out of one stored tensor (``split``, ``slice``, ``falcon_qkv``) are placed back
into it together. A form with no inverse is refused with a :class:`CannotWriteBack` that says
which entry and why, for the caller to put in words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CheckpointError, MappingError
from ..plugins.registry import Registry
from ..schema.resolve import resolve_config, resolve_value
from ..schema.spec import PLACEHOLDER, STACK_PLACEHOLDER, Mapping
from .plan import PlannedTransform, applicable_forms

Shape = tuple[int, ...]


class CannotWriteBack(MappingError):
    """A canonical parameter the mapping's layout cannot hold, or holds in a form with no inverse.

    ``reason``: ``no_place`` (no entry), ``no_inverse`` (``transforms`` lists the entry's
    transforms), ``incomplete`` (the pieces of a stored tensor do not fill it) or ``shared``
    (two parameters would be one stored tensor unchanged). ``template`` is the canonical name
    with ``{i}`` for the layer, ``stored`` the checkpoint name with ``N`` for the layer.
    """

    def __init__(self, reason: str, template: str, stored: str, transforms: list[str] | None = None,
                 detail: str = ""):
        self.reason, self.template, self.stored = reason, template, stored
        self.transforms = transforms or []
        super().__init__(f"{template} ({stored}): {reason}{': ' + detail if detail else ''}")


@dataclass
class Member:
    """One canonical parameter (or one piece of a stacked one) inside a stored tensor."""

    canonical: str
    index: int | None  # the piece of a stacked parameter; None: all of it
    piece: PlannedTransform | None  # the transform taking it out of the stored tensor; None: it is all of it
    after: list[PlannedTransform]  # the transforms applied after that one (all of them without it)

    def stored_piece(self, array: np.ndarray) -> np.ndarray:
        """The parameter's array as the piece it was taken as: its later transforms undone."""
        if self.index is not None:
            array = array[self.index]
        for t in reversed(self.after):
            array = t.transform.inverse.apply(array, **t.args)
        return np.asarray(array, dtype=np.float32)


@dataclass
class StoredTensor:
    """One tensor of the checkpoint: its name, its shape, what it is made from."""

    name: str
    shape: Shape
    members: list[Member]
    before: list[PlannedTransform] = field(default_factory=list)  # applied to all of it before a piece is taken
    whole: Shape = ()  # its shape after ``before`` (where the pieces are placed)
    shown: str = ""  # its weights entry's checkpoint name, N for the layer (for messages)

    def build(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The stored tensor (float32) from its members' canonical arrays."""
        first = self.members[0]
        if first.piece is None:
            return first.stored_piece(arrays[first.canonical])
        whole = np.zeros(self.whole, dtype=np.float32)
        pieces = [m.stored_piece(arrays[m.canonical]) for m in self.members]
        for m, piece in zip(self.members, pieces):
            m.piece.transform.inverse.place(whole, piece, **m.piece.args)
        for m, piece in zip(self.members, pieces):  # each piece reads back as placed: none overlap
            if not np.array_equal(m.piece.transform.apply(whole, **m.piece.args), piece):
                raise CheckpointError(f"{self.name}: the pieces written into it overlap")
        for t in reversed(self.before):
            whole = t.transform.inverse.apply(whole, **t.args)
        return np.ascontiguousarray(whole, dtype=np.float32)


def _template(canonical: str) -> str:
    """``layers.3.attn.q.weight`` -> ``layers.{i}.attn.q.weight``: its weights entry's name."""
    parts = canonical.split(".")
    return ".".join(["layers", PLACEHOLDER, *parts[2:]]) if parts[0] == "layers" else canonical


def _shape_back(shape: Shape, transforms: list[PlannedTransform]) -> Shape:
    for t in reversed(transforms):
        if t.transform.inverse.shape is not None:
            shape = tuple(t.transform.inverse.shape(shape, **t.args))
    return shape


def _split_chain(chain: list[PlannedTransform], refuse: Any) -> tuple[list, PlannedTransform | None, list]:
    """``chain`` -> (before, the piece-taking transform or None, after); refused when a
    transform has no inverse, or two take pieces."""
    if any(t.transform.inverse is None for t in chain):
        raise refuse("no_inverse")
    pieces = [n for n, t in enumerate(chain) if t.transform.inverse.place is not None]
    if len(pieces) > 1:
        raise refuse("no_inverse")
    if not pieces:
        return [], None, chain
    p = pieces[0]
    return chain[:p], chain[p], chain[p + 1:]


def stored_layout(mapping: Mapping, raw: dict[str, Any], shapes: dict[str, Shape], *,
                  registry: Registry | None = None) -> list[list[StoredTensor]]:
    """The tensors ``mapping``'s checkpoint (config.json ``raw``) stores for canonical parameters
    of ``shapes``, in groups built from the same parameters (one group in memory at a time),
    in the order of the parameters.

    Each transform's arguments are resolved over the config as on loading; a stacked entry's
    count must match its parameter's first axis. Raises :class:`CannotWriteBack`.
    """
    if registry is None:
        from ..plugins.manager import registry as current_registry

        registry = current_registry()
    cfg = resolve_config(mapping, raw)
    by_target = {w.target: w for w in mapping.weights}
    tensors: dict[str, StoredTensor] = {}
    for canonical, shape in shapes.items():
        for part in _pieces(mapping, by_target, cfg, registry, canonical, tuple(shape)):
            have = tensors.get(part.name)
            if have is None:
                tensors[part.name] = part
                continue
            if part.members[0].piece is None or have.members[0].piece is None or have.before != part.before \
                    or len(have.whole) != len(part.whole):
                raise CannotWriteBack("shared", _template(canonical), part.shown)
            have.members += part.members
            have.whole = tuple(max(a, b) for a, b in zip(have.whole, part.whole))
    for t in tensors.values():
        template = _template(t.members[0].canonical)
        if t.members[0].piece is not None:
            held = sum(int(np.prod(_shape_back(shapes[m.canonical][1 if m.index is not None else 0:], m.after)))
                       for m in t.members)
            if held != int(np.prod(t.whole)):
                raise CannotWriteBack("incomplete", template, t.shown)
        try:
            t.shape = _shape_back(t.whole, t.before)
        except CheckpointError as exc:
            raise CannotWriteBack("no_inverse", template, t.shown, [x.transform.name for x in t.before],
                                  str(exc)) from None
    return _groups(tensors)


def _pieces(mapping: Mapping, by_target: dict[str, Any], cfg: Any, registry: Registry, canonical: str,
            shape: Shape) -> list[StoredTensor]:
    """The stored tensors (or the parts of them) one canonical parameter makes: one, or one per
    piece of a stacked entry."""
    parts = canonical.split(".")
    layer = parts[1] if parts[0] == "layers" else ""
    template = _template(canonical)
    entry = by_target.get(template)
    if entry is None:
        raise CannotWriteBack("no_place", template, canonical)
    key = f"{mapping.path}: weights.{template}"
    entry_cfg = cfg.with_layer(int(layer)) if layer else cfg
    spec = (applicable_forms(entry, entry_cfg, key) or [entry])[0]  # the form this config stores
    shown = mapping.checkpoint_names(spec.sources, "N" if layer else "")[0]

    def refuse(reason: str, detail: str = "") -> CannotWriteBack:
        return CannotWriteBack(reason, template, shown, [n for n, _ in spec.transforms], detail)

    chain = [PlannedTransform(registry.transforms[n], resolve_value(a, entry_cfg, f"{key}.{n}"))
             for n, a in spec.transforms]
    before, piece, after = _split_chain(chain, refuse)
    name = mapping.checkpoint_names(spec.sources, layer)[0]
    count = None if spec.stack is None else resolve_value(spec.stack, entry_cfg, f"{key}.stack")
    if count is not None and shape[:1] != (count,):
        raise refuse("incomplete", f"{count} pieces stacked, the parameter has shape {list(shape)}")
    pieces = [(name, None, shape)] if count is None else \
        [(name.replace(STACK_PLACEHOLDER, str(j)), j, shape[1:]) for j in range(count)]
    out = []
    for stored, index, piece_shape in pieces:
        try:
            at_piece = _shape_back(piece_shape, after)
            whole = at_piece if piece is None else tuple(piece.transform.inverse.shape(at_piece, **piece.args))
        except CheckpointError as exc:
            raise refuse("no_inverse", str(exc)) from None
        out.append(StoredTensor(stored, (), [Member(canonical, index, piece, after)], before, whole, shown))
    return out


def _groups(tensors: dict[str, StoredTensor]) -> list[list[StoredTensor]]:
    """Stored tensors grouped by shared parameters (union of overlapping member sets), each
    group at its first tensor's place."""
    owner: dict[str, int] = {}  # canonical -> group index
    groups: list[list[StoredTensor]] = []
    for t in tensors.values():
        hit = sorted({owner[m.canonical] for m in t.members if m.canonical in owner})
        if not hit:
            groups.append([t])
            g = len(groups) - 1
        else:
            g = hit[0]
            for other in hit[1:]:  # merge later groups into the first
                groups[g].extend(groups[other])
                for x in groups[other]:
                    for m in x.members:
                        owner[m.canonical] = g
                groups[other] = []
            groups[g].append(t)
        for m in t.members:
            owner[m.canonical] = g
    return [g for g in groups if g]
