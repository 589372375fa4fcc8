"""A tiny, safe expression language for mapping files.

Mappings derive config values (``hidden_size // num_heads``) and block options
(``$attention_multiplier``) from config.json. Expressions are parsed with :mod:`ast` and
evaluated over a whitelist of node types: arithmetic, comparisons, boolean logic, conditional
expressions, indexing, literals and a few pure functions. Names resolve to config values.
Nothing can call into Python objects, so a mapping from a stranger cannot run code.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
from typing import Any, Mapping

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not,
}


def _str(value: Any) -> str:
    # str() of a list made with * ([[1] * 10000] * 10000) would be hundreds of megabytes of text
    if not isinstance(value, (str, int, float)):
        raise ExprError("str() takes a number, a string or a boolean")
    return str(value)


_FUNCS = {
    "min": min, "max": max, "abs": abs, "int": int, "float": float, "bool": bool, "len": len,
    "sqrt": math.sqrt, "round": round, "str": _str,
    "all": all, "any": any, "list": list,
}


class ExprError(ValueError):
    """The expression is malformed, uses a forbidden construct, or names an unknown value."""


# results a mapping could blow up to exhaust memory or time (config values never come close)
_MAX_INT_BITS = 4096
_MAX_REPEAT = 10_000
# every list, tuple, dict or string an expression builds holds at most this many items and
# characters in all, counted through its nesting: [[[1] * 10000] * 10000] * 10000 is 10^12
# items however short its outer list is, and comparing or hashing it would never end
MAX_ELEMENTS = 100_000


def total_size(value: Any, limit: int = MAX_ELEMENTS) -> int:
    """Items and characters in ``value``, counted through nested containers (a list repeated
    by reference counts every time it appears); counting stops past ``limit``."""
    memo: dict[int, int] = {}

    def size(v: Any) -> int:
        if isinstance(v, str):
            return len(v)
        if not isinstance(v, (list, tuple, dict)):
            return 1
        key = id(v)
        if key not in memo:
            memo[key] = limit + 1  # a container that holds itself is past any limit
            items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
            total = len(items)
            for item in items:
                if total > limit:
                    break
                total += size(item)
            memo[key] = total
        return memo[key]

    return size(value)


def _bounded(value: Any) -> Any:
    """``value``, if what it holds in all stays within :data:`MAX_ELEMENTS`."""
    if isinstance(value, (str, list, tuple, dict)) and total_size(value) > MAX_ELEMENTS:
        raise ExprError(f"result too large (more than {MAX_ELEMENTS:,} items in all)")
    return value


def _limit_pow(a: Any, b: Any) -> Any:
    if isinstance(b, (int, float)) and abs(b) > 64:
        raise ExprError("exponent too large")
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() * abs(b) > _MAX_INT_BITS:
        raise ExprError("result too large")
    return operator.pow(a, b)


def _limit_mul(a: Any, b: Any) -> Any:
    # 'x' * n and [..] * n build n copies
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and (
                len(seq) * n > _MAX_REPEAT or total_size(seq) * n > MAX_ELEMENTS):
            raise ExprError("result too large")
    return operator.mul(a, b)


class _Evaluator:
    def __init__(self, names: Mapping[str, Any]):
        self.names = names

    def eval(self, node: ast.AST) -> Any:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise ExprError(f"'{type(node).__name__}' is not allowed in an expression")
        return method(node)

    def _Expression(self, node: ast.Expression) -> Any:
        return self.eval(node.body)

    def _Constant(self, node: ast.Constant) -> Any:
        return node.value

    def _Name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return self.names[node.id]
        if node.id in ("true", "True"):
            return True
        if node.id in ("false", "False"):
            return False
        if node.id in ("null", "None"):
            return None
        if node.id in ("inf", "infinity"):
            return math.inf
        raise ExprError(f"unknown name '{node.id}'")

    def _List(self, node: ast.List) -> Any:
        return _bounded([self.eval(e) for e in node.elts])

    def _Tuple(self, node: ast.Tuple) -> Any:
        return _bounded(tuple(self.eval(e) for e in node.elts))

    def _Dict(self, node: ast.Dict) -> Any:
        return _bounded({self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values) if k is not None})

    def _BinOp(self, node: ast.BinOp) -> Any:
        op = type(node.op)
        if op not in _BINOPS:
            raise ExprError(f"operator '{op.__name__}' is not allowed")
        fn = _limit_pow if op is ast.Pow else _limit_mul if op is ast.Mult else _BINOPS[op]
        left, right = self.eval(node.left), self.eval(node.right)
        if op is ast.Mod and isinstance(left, str):
            # '%0999999999d' % 1 would build a gigabyte string
            raise ExprError("string formatting with % is not allowed")
        try:
            return _bounded(fn(left, right))
        except (TypeError, ZeroDivisionError, OverflowError) as exc:
            raise ExprError(str(exc)) from None

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.eval(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        if isinstance(node.op, ast.USub):
            return -value
        if isinstance(node.op, ast.UAdd):
            return +value
        raise ExprError("operator not allowed")

    def _BoolOp(self, node: ast.BoolOp) -> Any:
        if isinstance(node.op, ast.And):
            result: Any = True
            for v in node.values:
                result = self.eval(v)
                if not result:
                    return result
            return result
        result = False
        for v in node.values:
            result = self.eval(v)
            if result:
                return result
        return result

    def _Compare(self, node: ast.Compare) -> Any:
        left = self.eval(node.left)
        for op, comp in zip(node.ops, node.comparators):
            right = self.eval(comp)
            try:
                if not _CMPOPS[type(op)](left, right):
                    return False
            except TypeError as exc:
                raise ExprError(str(exc)) from None
            left = right
        return True

    def _IfExp(self, node: ast.IfExp) -> Any:
        return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)

    def _Subscript(self, node: ast.Subscript) -> Any:
        value = self.eval(node.value)
        index = self.eval(node.slice)
        try:
            return value[index]
        except (KeyError, IndexError, TypeError) as exc:
            raise ExprError(f"cannot index: {exc}") from None

    def _Attribute(self, node: ast.Attribute) -> Any:
        # dotted access into nested dicts only (rope_parameters.rope_theta); never object attributes
        value = self.eval(node.value)
        if isinstance(value, dict):
            if node.attr in value:
                return value[node.attr]
            raise ExprError(f"no key '{node.attr}'")
        raise ExprError("attribute access is only allowed on mappings")

    def _Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise ExprError("only min, max, abs, int, float, bool, len, sqrt, round, str, all, any, list may be called")
        args = [self.eval(a) for a in node.args]
        try:
            return _bounded(_FUNCS[node.func.id](*args))
        except (TypeError, ValueError) as exc:
            raise ExprError(str(exc)) from None


def compile_expr(text: str) -> ast.Expression:
    """Parse ``text`` (cached: a load evaluates the same few expressions for every layer and
    tensor); raises :class:`ExprError` for syntax errors."""
    if not isinstance(text, str) or len(text) > 2000:
        raise ExprError("an expression must be a string of at most 2000 characters")
    return _parse(text)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> ast.Expression:
    # the evaluator never mutates the tree, so one parsed tree can serve every call
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error in '{text}': {exc.msg}") from None


def evaluate(expr: str | ast.Expression, names: Mapping[str, Any]) -> Any:
    """Evaluate an expression over ``names`` (config values). Raises :class:`ExprError`."""
    tree = compile_expr(expr) if isinstance(expr, str) else expr
    try:
        return _Evaluator(names).eval(tree)
    except ExprError:
        raise
    except RecursionError:
        raise ExprError("expression nested too deeply") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        # what an operation not checked above raises on wrong operands: -'text', {[1]: 2}, int(inf)
        raise ExprError(str(exc)) from None


def names_in(expr: str) -> set[str]:
    """The bare names an expression refers to (used to validate mappings up front)."""
    return {n.id for n in ast.walk(compile_expr(expr)) if isinstance(n, ast.Name)}
