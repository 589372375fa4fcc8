"""Rendering a model's chat template (Jinja) in a sandbox, as transformers does.

Chat templates come from the model folder (tokenizer_config.json ``chat_template`` or
chat_template.jinja), so they are untrusted code. They run in jinja2's
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with the helpers transformers provides
(``raise_exception``, ``strftime_now``, a non-escaping ``tojson``, ``namespace``, ``dict``), and
rules stricter than transformers: touching an unsafe attribute (``__class__``,
``__globals__``, ...) fails at once instead of rendering as empty text; ``**``, ``*`` and ``%``
refuse results no prompt needs (a power of a thousand digits, a string of ten million
characters, a field a million wide); ``lipsum`` is gone; and the render runs under hard limits
of time, memory and output (:mod:`modelkit.text.bounded`, :data:`RENDER_LIMITS`). Every failure
is a :class:`TokenizerError`, so a command never silently generates without the template.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

from ..errors import TokenizerError
from .bounded import ChildFailed, LimitExceeded, Limits, run_bounded

Message = dict[str, Any]

# Real chat templates render in milliseconds, use a few MB and write about as much text as the
# messages hold plus some kilobytes per turn; these limits are far beyond that.
RENDER_SECONDS = 10.0
RENDER_MEMORY = 1 << 30  # bytes the render may allocate
RENDER_BASE_CHARS = 1_000_000  # output allowed beyond 4x the characters the messages hold
# the largest operands the operators may produce or take
MAX_POWER_DIGITS = 1000
MAX_SEQUENCE = 10_000_000
MAX_FORMAT_WIDTH = 100_000
MAX_JSON_INDENT = 64
_FORMAT_FIELD = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d+))?")


class TemplateFailure(Exception):
    """A template error, already worded for the user (travels back from the render process)."""


def _checked_binop(operator: str, left: Any, right: Any) -> Any:
    """``left operator right`` for the operators the sandbox intercepts, refusing operands whose
    result no prompt needs before computing it."""
    if operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            digits = right * math.log10(abs(left))
            if digits > MAX_POWER_DIGITS:
                raise TemplateFailure(f"{left} ** {right} would have about {digits:.3g} digits")
        return left ** right
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_SEQUENCE:
                raise TemplateFailure(f"repeating a {type(seq).__name__} of {len(seq)} {n} times would make "
                                      f"more than {MAX_SEQUENCE:,} items")
        return left * right
    if operator == "%":
        if isinstance(left, str):
            for width, precision in _FORMAT_FIELD.findall(left):
                if max(int(width or 0), int(precision or 0)) > MAX_FORMAT_WIDTH:
                    raise TemplateFailure(f"a %-format field wider than {MAX_FORMAT_WIDTH:,} characters")
        return left % right
    raise TemplateFailure(f"operator {operator!r} is not intercepted")  # not reached


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """The immutable sandbox, but an unsafe attribute is an error, not an empty value."""

        intercepted_binops = frozenset({"**", "*", "%"})

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            return _checked_binop(operator, left, right)

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers marks assistant text with it):
        rendered as its body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    class TemplateNamespace(jinja2.utils.Namespace):
        """``namespace(...)`` that refuses underscore names, so it cannot reach Python internals."""

        def __init__(*args: Any, **kwargs: Any):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise SecurityError(f"a namespace cannot hold the underscore name {name!r}")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # jinja's own tojson escapes HTML characters, which chat templates do not want
        if indent is not None and not (
                (isinstance(indent, int) and 0 <= indent <= MAX_JSON_INDENT)
                or (isinstance(indent, str) and len(indent) <= MAX_JSON_INDENT)):
            raise TemplateFailure(f"tojson: indent must be at most {MAX_JSON_INDENT}, got {indent!r}")
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True,
                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = TemplateNamespace
    env.globals["dict"] = lambda *a, **k: dict(*a, **k)
    env.globals.pop("lipsum", None)  # n paragraphs of filler text: no chat template needs it
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """A copy made of plain JSON types only, so the template sees no objects with methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    # subclasses (enums, numpy scalars) carry extra methods: strip them back to the base type
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    import numpy as np

    if isinstance(value, np.generic):
        return _plain(value.item())
    raise TokenizerError(f"chat messages may hold only JSON values, got {type(value).__name__}")


def render_chat(template: str, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                special_tokens: dict[str, Any] | None = None, where: str = "chat template",
                **variables: Any) -> str:
    """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...]).

    ``special_tokens`` (bos_token, eos_token, ...) and ``variables`` (tools, documents,
    enable_thinking, ...) are visible to the template; ``where`` names the template's file in
    errors. Raises :class:`TokenizerError` for syntax errors, ``raise_exception`` calls, blocked
    sandbox escapes, any other failure of the template and a render past :data:`RENDER_SECONDS`,
    :data:`RENDER_MEMORY` or its output limit.
    """
    context = dict(_plain(special_tokens or {}))
    context.update(_plain(variables))
    context["messages"] = _plain([{k: v for k, v in m.items() if v is not None} for m in messages])
    context["add_generation_prompt"] = bool(add_generation_prompt)
    compiled = _compiled(template, where)
    input_chars = len(json.dumps(context, ensure_ascii=False))
    limits = Limits(RENDER_SECONDS, RENDER_MEMORY, RENDER_BASE_CHARS + 4 * input_chars)
    try:
        return run_bounded(lambda: _render(compiled, context), limits)
    except TemplateFailure as exc:  # raised in-process where there is no fork
        raise TokenizerError(f"{where}: {exc}") from None
    except LimitExceeded as exc:
        raise TokenizerError(f"{where}: stopped: {exc} (a chat template may use {RENDER_SECONDS:g} s, "
                             f"{RENDER_MEMORY >> 20} MiB and {limits.output_chars:,} characters)") from None
    except ChildFailed as exc:
        detail = str(exc) if exc.kind == "TemplateFailure" else f"the template failed: {exc.kind}: {exc}"
        raise TokenizerError(f"{where}: {detail}") from None
    except Exception as exc:  # noqa: BLE001 - in-process: any failure of template code is the template's
        raise TokenizerError(f"{where}: the template failed: {type(exc).__name__}: {exc}") from None


def _compiled(template: str, where: str) -> Any:
    """The compiled template; compiling is bounded by the template's size (files are read
    bounded), but deep nesting can still fail inside Python's own compiler."""
    import jinja2

    try:
        return _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TokenizerError(f"{where}: Jinja syntax error at line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TokenizerError(f"{where}: the template cannot be compiled: {exc}") from None
    except (RecursionError, MemoryError, SyntaxError, ValueError, TypeError, OverflowError) as exc:
        # SyntaxError: "too many statically nested blocks" from Python's compiler
        raise TokenizerError(f"{where}: the template cannot be compiled ({type(exc).__name__}: {exc}); "
                             f"it nests too deeply") from None


def _render(compiled: Any, context: dict[str, Any]) -> str:
    """Render, with jinja's errors worded for the user (this runs in the render process)."""
    import jinja2
    from jinja2.sandbox import SecurityError

    try:
        return compiled.render(**context)
    except SecurityError as exc:
        raise TemplateFailure(f"blocked by the sandbox ({exc}); refusing to run it") from None
    except jinja2.TemplateError as exc:
        raise TemplateFailure(f"the template failed: {exc}") from None


def apply_chat_template(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                        **variables: Any) -> str:
    """Render ``messages`` with the tokenizer's chat template and its special tokens."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise TokenizerError("the model has no chat template (no chat_template.jinja, chat_template.json or "
                             "chat_template in tokenizer_config.json); only raw prompts can be continued")
    where = getattr(tokenizer, "chat_template_file", None) or "chat template"
    return render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                       special_tokens=tokenizer.special_tokens(), where=where, **variables)


def chat_prompt_ids(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    **variables: Any) -> list[int]:
    """Token ids of the rendered chat. The template writes any BOS itself, so the text is
    encoded without the tokenizer's own special tokens (as transformers does)."""
    text = apply_chat_template(tokenizer, messages, add_generation_prompt=add_generation_prompt, **variables)
    return tokenizer.encode(text, add_special_tokens=False)
