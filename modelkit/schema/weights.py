"""Validating a mapping's ``weights`` entries: checkpoint names, stacks, the forms a parameter
may be stored in, and their transforms.

Mixed into the mapping parser (:mod:`modelkit.schema.parse`), whose helpers (``fail``,
``expect``, ``check_keys``, ``check_value``, ``check_pattern``) it uses, so its errors name the
file and the key as every other.
"""

from __future__ import annotations

from typing import Any, Collection

from .spec import PLACEHOLDER, STACK_PLACEHOLDER, WeightSpec

WEIGHT_KEYS = {"from", "transform", "optional", "stack", "when"}


class WeightsSection:
    """The ``weights`` part of the mapping parser."""

    transforms: Collection[str] | None  # the registered transform names; None: not checked

    def parse_weights(self, data: Any, names: set[str]) -> list[WeightSpec]:
        self.expect(data, dict, "weights", "an object: canonical name -> checkpoint name")
        out = []
        for target, spec in data.items():
            key = f"weights.{target}"
            self.expect(target, str, "weights", "canonical names")
            self.check_pattern(target, key)
            if isinstance(spec, list) and any(isinstance(item, dict) for item in spec):
                # forms stored differently, each with its own transforms and stack: the first is
                # the entry, the others its fallbacks, tried in order
                forms = [self.parse_form(item if isinstance(item, dict) else {"from": item}, target,
                                         f"{key}[{n}]", names, whole=False) for n, item in enumerate(spec)]
                forms[0].fallbacks = forms[1:]
                out.append(forms[0])
                continue
            if isinstance(spec, (str, list)):
                spec = {"from": spec}
            out.append(self.parse_form(spec, target, key, names))
        return out

    def parse_form(self, spec: Any, target: str, key: str, names: set[str], whole: bool = True) -> WeightSpec:
        """One form of a weights entry: checkpoint names, transforms, stack (and, for a whole
        entry, optional)."""
        self.expect(spec, dict, key, "a checkpoint name or {from, transform, optional, stack}")
        if not whole and "optional" in spec:
            raise self.fail(key, "optional belongs to a whole entry; a list of forms, each with its own "
                                 "transforms, is required")
        if whole and "when" in spec:
            raise self.fail(key, "when belongs to one of a list of forms (a YAML list of objects)")
        self.check_keys(spec, WEIGHT_KEYS if whole else WEIGHT_KEYS - {"optional"}, key)
        when = spec.get("when")
        if when is not None:
            if not (isinstance(when, str) and when.startswith("$")):
                raise self.fail(f"{key}.when", f"expected a $expression, got {when!r}")
            self.check_value(when, f"{key}.when", names)
        stack = spec.get("stack")
        if stack is not None:
            if not (isinstance(stack, int) and not isinstance(stack, bool) and stack >= 1
                    or isinstance(stack, str) and stack.startswith("$") and not stack.startswith("$$")):
                raise self.fail(f"{key}.stack", f"expected a positive count or a $expression, got {stack!r}")
            self.check_value(stack, f"{key}.stack", names)
        sources = spec.get("from")
        if isinstance(sources, str):
            sources = [sources]
        self.expect(sources, list, f"{key}.from", "a checkpoint tensor name or a list of alternatives")
        if not sources:
            raise self.fail(f"{key}.from", "needs at least one checkpoint tensor name")
        for source in sources:
            self.expect(source, str, f"{key}.from", "checkpoint tensor names")
            self.check_pattern(source, f"{key}.from", stacked=stack is not None)
            if PLACEHOLDER in source and PLACEHOLDER not in target:
                raise self.fail(key, f"{PLACEHOLDER} in the checkpoint name needs {PLACEHOLDER} in the "
                                     f"canonical name")
            if stack is not None and STACK_PLACEHOLDER not in source:
                raise self.fail(f"{key}.from", f"a stacked entry names its pieces with {STACK_PLACEHOLDER} "
                                               f"(0 .. stack - 1); '{source}' has none")
        optional = spec.get("optional", False)
        self.expect(optional, bool, f"{key}.optional", "true or false")
        transforms = self.parse_transforms(spec.get("transform", []), f"{key}.transform", names)
        return WeightSpec(target, sources, transforms, optional, stack, when=when)

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
