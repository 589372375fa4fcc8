"""Validating a mapping's YAML data and building its :class:`~modelkit.schema.spec.Mapping`.

Every error names the file and the key, and says what was expected. With the registered block
kinds and transforms at hand the parser also checks that every block kind and transform
exists, that each block's options are the kind's own, that every block name is canonical
(:mod:`modelkit.schema.vocabulary`) and used by some branch, and that every ``weights`` entry
names a parameter its block declares.
"""

from __future__ import annotations

import re
from typing import Any, Collection

from ..errors import MappingError
from .expr import ExprError, names_in
from .spec import PLACEHOLDER, STACK_PLACEHOLDER, BlockSpec, FieldSpec, LayerSpec, Mapping, ModelSpec, WeightSpec
from .vocabulary import BLOCK_NAMES, MODEL_TENSORS
from .weights import WEIGHT_KEYS, WeightsSection  # noqa: F401  (WEIGHT_KEYS: one table of the YAML keys)

TYPES = {"int", "float", "bool", "str", "list", "dict", "any", "float_pair"}
LAYOUTS = {"sequential", "parallel"}
_BRACES = re.compile(r"\{[^}]*\}|\{|\}")

TOP_KEYS = {"modelkit_mapping", "extends", "name", "description", "match", "config", "checks",
            "model", "layers", "tensor_prefixes", "weights", "ignore", "inert_config"}
MATCH_KEYS = {"model_type", "architectures", "source"}
FIELD_KEYS = {"from", "type", "default", "derive", "min", "values", "doc"}
MODEL_KEYS = {"embedding_multiplier", "embed_dim", "positions", "embed_norm", "final_norm", "logits_divisor",
              "logits_softcap", "tie_head", "max_positions"}
MODEL_BLOCKS = ("embed_norm", "final_norm")  # model-level blocks, each with its own parameters
WHEN = "when"  # on a model-level block: it exists only when this is true
ADD = "+"  # in a flow branch: the blocks after it apply to the residual stream after the add
LAYER_KEYS = {"layout", "residual_multiplier", "blocks", "flow"}
FLOW_STEP_KEYS = {"parallel"}  # a flow entry that is an object: branches summed off one input
# the functions and constants expressions may name besides config fields
EXPR_BUILTINS = {"true", "false", "null", "True", "False", "None", "inf", "infinity", "min", "max",
                 "abs", "int", "float", "bool", "len", "sqrt", "round", "str", "all", "any", "list"}


class _Parser(WeightsSection):
    def __init__(self, path: str, known_kinds: dict[str, type] | None,
                 known_transforms: Collection[str] | None):
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
        unknown = sorted(used - names - EXPR_BUILTINS)
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

    def check_pattern(self, text: str, key: str, stacked: bool = False) -> None:
        allowed = (PLACEHOLDER, STACK_PLACEHOLDER) if stacked else (PLACEHOLDER,)
        for brace in _BRACES.findall(text):
            if brace == STACK_PLACEHOLDER and not stacked:
                raise self.fail(key, f"{STACK_PLACEHOLDER} in '{text}' belongs to a stacked entry; "
                                     f"add 'stack: <count>' to this weights entry")
            if brace not in allowed:
                raise self.fail(key, f"bad layer placeholder '{brace}' in '{text}'; "
                                     f"the only placeholder is {PLACEHOLDER}"
                                     + (f" (and {STACK_PLACEHOLDER} in a stacked entry)" if stacked else ""))

    def parse(self, data: Any) -> Mapping:
        if not isinstance(data, dict):
            raise self.fail("", "expected a mapping (YAML object) at the top level")
        # keys starting with "." hold YAML anchors for the rest of the file and are not read
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("."))}
        self.check_keys(data, TOP_KEYS, "")
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
        self.check_weight_targets(weights, model, variants)
        prefixes = self.expect(data.get("tensor_prefixes", [""]), list, "tensor_prefixes",
                               "a list of name prefixes")
        if not prefixes or not all(isinstance(x, str) for x in prefixes):
            raise self.fail("tensor_prefixes", "expected a non-empty list of strings ('' for none)")
        ignore_text = self.expect(data.get("ignore", []), list, "ignore", "a list of tensor names")
        ignore = []
        for n, pat in enumerate(ignore_text):
            self.expect(pat, str, f"ignore[{n}]", "a tensor name pattern")
            self.check_pattern(pat, f"ignore[{n}]")
            ignore.extend(pattern_regex(prefix + pat) for prefix in prefixes)
        inert = self.parse_inert_config(data.get("inert_config", {}), fields)
        return Mapping(name, self.path, str(data.get("description", "")), match, fields, checks,
                       model, count, variant, variants, weights, ignore, ignore_text,
                       tensor_prefixes=list(prefixes), inert_config=inert)

    def parse_inert_config(self, data: Any, fields: list[FieldSpec]) -> dict[str, str]:
        """config.json keys the mapping does not read because they do not change its forward
        pass, each with the reason. A key a field reads is not inert (an extension may read
        what its base declared inert), so it is dropped."""
        self.expect(data, dict, "inert_config", "an object of config.json key -> reason")
        read = {source.split(".")[0] for f in fields for source in f.sources}
        for key, reason in data.items():
            if not isinstance(key, str) or not key:
                raise self.fail("inert_config", f"keys must be config.json key names, got {key!r}")
            if not isinstance(reason, str) or not reason.strip():
                raise self.fail(f"inert_config.{key}", "expected the reason the key does not change the forward pass")
        return {key: reason for key, reason in data.items() if key not in read}

    def parse_match(self, data: Any) -> dict[str, list[str]]:
        self.expect(data, dict, "match", "an object with model_type and/or architectures")
        self.check_keys(data, MATCH_KEYS, "match")
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
            self.check_keys(spec, FIELD_KEYS, key)
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

    def parse_model(self, data: Any, names: set[str]) -> ModelSpec:
        self.expect(data, dict, "model", "an object")
        self.check_keys(data, MODEL_KEYS, "model")
        spec = ModelSpec(**{k: v for k, v in data.items() if k not in MODEL_BLOCKS})
        if spec.positions not in ("none", "learned"):
            raise self.fail("model.positions", f"expected 'none' or 'learned', got {spec.positions!r}")
        for name in MODEL_BLOCKS:
            if data.get(name) is not None:
                setattr(spec, name, self.parse_model_block(name, data[name], names))
        for key in ("embedding_multiplier", "embed_dim", "logits_divisor", "logits_softcap", "tie_head",
                    "max_positions"):
            self.check_value(getattr(spec, key), f"model.{key}", names)
        return spec

    def parse_model_block(self, name: str, data: Any, names: set[str]) -> BlockSpec:
        """A model-level block: a layer block's ``kind`` and options, plus an optional ``when``."""
        key = f"model.{name}"
        self.expect(data, dict, key, "an object with a 'kind'")
        when = data.get(WHEN, True)
        self.check_value(when, f"{key}.{WHEN}", names)
        block = self.parse_block(name, {k: v for k, v in data.items() if k != WHEN}, key, names)
        block.when = when
        return block

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
        self.check_keys(data, LAYER_KEYS, key)
        layout = data.get("layout", "sequential")
        if not isinstance(layout, str) or layout not in LAYOUTS:
            raise self.fail(f"{key}.layout", f"expected one of {', '.join(sorted(LAYOUTS))}, got {layout!r}")
        res = data.get("residual_multiplier", 1.0)
        names = names | {"i"}  # layer options may depend on the layer index
        self.check_value(res, f"{key}.residual_multiplier", names)
        blocks_raw = self.expect(data.get("blocks"), dict, f"{key}.blocks", "an object of named blocks")
        blocks = {}
        for bname, bdata in blocks_raw.items():
            if bname not in BLOCK_NAMES:
                raise self.fail(f"{key}.blocks", f"{bname!r} is not a canonical block name; use one of "
                                                 f"{', '.join(BLOCK_NAMES)} (see docs/mappings.md)")
            blocks[bname] = self.parse_block(bname, bdata, f"{key}.blocks.{bname}", names)
        flow = self.expect(data.get("flow"), list, f"{key}.flow", "a list of residual branches")
        if not flow:
            raise self.fail(f"{key}.flow", "needs at least one residual branch")
        steps, after_add = [], []
        for n, entry in enumerate(flow):
            skey = f"{key}.flow[{n}]"
            if isinstance(entry, dict):
                steps.append(self.parse_parallel_step(entry, skey, layout, blocks))
                after_add.append([])
                continue
            self.expect(entry, list, skey, "a list of block names or {parallel: [branches]}")
            before, after = self.split_branch(entry, skey, layout)
            steps.append([self.parse_branch(before, skey, blocks)])
            after_add.append(self.parse_branch(after, skey, blocks) if after else [])
        if layout == "parallel":  # every branch reads the layer's input: one step
            steps, after_add = [[step[0] for step in steps]], [[]]
        used = {b for step in steps for branch in step for b in branch} | {b for a in after_add for b in a}
        unused = [b for b in blocks if b not in used]
        if unused:
            raise self.fail(f"{key}.blocks.{unused[0]}", "no branch of flow uses this block; add it to "
                                                        "a branch or remove it")
        return LayerSpec(layout, res, blocks, steps, after_add)

    def split_branch(self, branch: list, key: str, layout: str) -> tuple[list, list]:
        """A branch's blocks before ``+`` (the residual branch) and after it (applied to the sum)."""
        if ADD not in branch:
            return list(branch), []
        cut = branch.index(ADD)
        before, after = list(branch[:cut]), list(branch[cut + 1:])
        if ADD in after:
            raise self.fail(key, f"a branch has at most one '{ADD}'")
        if not before or not after:
            raise self.fail(key, f"'{ADD}' needs the branch's blocks before it and the blocks applied "
                                 f"after the residual add after it")
        if layout != "sequential":
            raise self.fail(key, f"blocks after '{ADD}' (applied after the residual add) need layout: "
                                 f"sequential")
        return before, after

    def parse_branch(self, data: Any, key: str, blocks: dict[str, BlockSpec]) -> list[str]:
        """One residual branch: a non-empty list of the layer's block names, applied in order."""
        self.expect(data, list, key, "a list of block names or {parallel: [branches]}")
        if not data:
            raise self.fail(key, "a branch needs at least one block")
        for b in data:
            if not isinstance(b, str) or b not in blocks:
                raise self.fail(key, f"names block {b!r}, which is not in blocks")
        return list(data)

    def parse_parallel_step(self, data: dict, key: str, layout: str,
                            blocks: dict[str, BlockSpec]) -> list[list[str]]:
        """``{parallel: [branch, ...]}`` in a sequential flow: branches that read the same input
        and whose sum is added once (Falcon-H1's Mamba2 and attention side by side)."""
        if layout != "sequential":
            raise self.fail(key, "a parallel layout already sums every branch; list its branches "
                                 "directly, or use layout: sequential")
        self.check_keys(data, FLOW_STEP_KEYS, key)
        branches = self.expect(data.get("parallel"), list, f"{key}.parallel", "a list of branches")
        if len(branches) < 2:
            raise self.fail(f"{key}.parallel", "needs at least two branches")
        return [self.parse_branch(b, f"{key}.parallel[{m}]", blocks) for m, b in enumerate(branches)]

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
        self.check_keys(data, LAYER_KEYS | {"count"}, "layers")
        layer = self.parse_layer({k: v for k, v in data.items() if k != "count"}, "layers", names)
        return count, None, {"default": layer}

    def check_weight_targets(self, weights: list[WeightSpec], model: ModelSpec,
                             variants: dict[str, LayerSpec]) -> None:
        """Every weights entry names a parameter that a block of this mapping declares."""
        if self.kinds is None:
            return
        layer_kinds: dict[str, set[str]] = {}  # block name -> kinds it has in some variant
        for layer in variants.values():
            for bname, bspec in layer.blocks.items():
                layer_kinds.setdefault(bname, set()).add(bspec.kind)
        for w in weights:
            key = f"weights.{w.target}"
            parts = w.target.split(".")
            if parts[0] == "layers":
                if len(parts) < 4 or parts[1] != PLACEHOLDER:
                    raise self.fail(key, f"a layer tensor is named layers.{PLACEHOLDER}.<block>.<parameter>")
                block, param = parts[2], ".".join(parts[3:])
                if block not in layer_kinds:
                    raise self.fail(key, f"no layer has a block {block!r}; the blocks are "
                                         f"{', '.join(layer_kinds)}")
                kinds = sorted(layer_kinds[block])
            elif parts[0] in MODEL_BLOCKS:
                spec = getattr(model, parts[0])
                if spec is None:
                    raise self.fail(key, f"the model has no {parts[0]}")
                block, param, kinds = parts[0], ".".join(parts[1:]), [spec.kind]
            else:
                if w.target not in MODEL_TENSORS:
                    raise self.fail(key, f"unknown canonical tensor; expected one of "
                                         f"{', '.join(MODEL_TENSORS)}, final_norm.<parameter>, "
                                         f"embed_norm.<parameter> or "
                                         f"layers.{PLACEHOLDER}.<block>.<parameter>")
                continue
            declared = sorted({p for k in kinds for p in self.kinds[k].PARAMETERS})
            if param not in declared:
                raise self.fail(key, f"block {block!r} ({'/'.join(kinds)}) has no parameter {param!r}; "
                                     f"its parameters are {', '.join(declared)}")


def pattern_regex(pattern: str) -> re.Pattern:
    """A compiled regex for a tensor-name pattern with the ``{i}`` layer placeholder."""
    parts = pattern.split(PLACEHOLDER)
    return re.compile("(?P<i>[0-9]+)".join(re.escape(p) for p in parts[:2])
                      + "".join("(?P=i)" + re.escape(p) for p in parts[2:]) + r"\Z")


def parse_mapping(data: Any, path: str, known_kinds: dict[str, type] | None = None,
                  known_transforms: Collection[str] | None = None) -> Mapping:
    """Validate parsed YAML ``data`` and build a :class:`Mapping`; errors name ``path``."""
    return _Parser(path, known_kinds, known_transforms).parse(data)
