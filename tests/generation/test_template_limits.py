"""Chat templates are code from the model folder: bounded in time, memory and output, every
failure one TokenizerError, and real templates of the supported families unaffected."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelkit.errors import TokenizerError
from modelkit.text import chat_template
from modelkit.text.bounded import Limits, LimitExceeded, run_bounded
from modelkit.text.chat_template import render_chat

# real chat templates of supported families, as their tokenizer_config.json ship them
REAL_TEMPLATES = sorted((FIXTURES / "chat_templates").glob("*.jinja"))
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? " + "Answer with one word. " * 200},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def _plain_sandbox_render(template: str, **context: object) -> str:
    """The template rendered as transformers does (its environment, no limits), for comparison."""
    import json

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
        json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(**context)


@pytest.mark.parametrize("path", REAL_TEMPLATES, ids=[p.stem for p in REAL_TEMPLATES])
@pytest.mark.parametrize("tools", [None, TOOLS], ids=["chat", "tools"])
def test_real_templates_render_as_transformers_renders_them(path: Path, tools: object) -> None:
    template = path.read_text()
    messages = CONVERSATION[1:] if "gemma" in path.stem else CONVERSATION  # gemma's refuses a system turn
    variables = {"tools": tools} if tools else {}
    try:
        want = _plain_sandbox_render(template, messages=messages, add_generation_prompt=True, **SPECIAL, **variables)
    except Exception as exc:  # a template that wants its tools in another shape (Command R's)
        with pytest.raises(TokenizerError, match=str(exc)):
            render_chat(template, messages, special_tokens=SPECIAL, **variables)
        return
    t0 = time.perf_counter()
    got = render_chat(template, messages, special_tokens=SPECIAL, **variables)
    took = time.perf_counter() - t0
    assert got == want
    assert "Paris." in got and took < 2.0  # the limits are far away: 10 s


HOSTILE = {
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loops over a list": "{% set l = [1] * 1000 %}{% for a in l %}{% for b in l %}{% for c in l %}"
                         "{% endfor %}{% endfor %}{% endfor %}",
    "a huge power": "{{ 9 ** (9 ** 9) }}",
    "lipsum": "{{ lipsum(10 ** 7) }}",
    "a huge repeat": "{{ 'x' * 10 ** 10 }}",
    "a list repeat": "{{ ([0] * 100000) * 100000 }}",
    "output past the limit": "{% for i in range(100) %}{{ 'x' * 100000 }}{% endfor %}",
    "tojson indent": "{{ messages | tojson(indent=10 ** 9) }}",
    "a wide %-field": "{{ '%0999999999d' % 1 }}",
    "a wide format field": "{{ '{:0999999999d}'.format(1) }}",
    "recursive macro": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "assertion in a filter": "{{ 'abc' | truncate(-5) }}",
    "nested blocks": "{% if 1 %}" * 200 + "x" + "{% endif %}" * 200,
    "nested parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "overflow": "{{ (10 ** 400) | float }}",
    "memory": "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
              "{% set ns.l = ns.l + ['x' * 1000000] %}{% endfor %}",
    "division by zero": "{{ 1 // 0 }}",
    "unknown filter": "{{ 1 | nonesuch }}",
}


@pytest.fixture
def short_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same limits with a 2 s clock, so the loops end quickly."""
    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 2.0)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_templates_end_in_one_error_quickly(name: str, short_limits: None) -> None:
    t0 = time.perf_counter()
    with pytest.raises(TokenizerError) as info:
        render_chat(HOSTILE[name], CONVERSATION, where="tokenizer_config.json")
    assert time.perf_counter() - t0 < 8.0
    message = str(info.value)
    assert message.startswith("tokenizer_config.json: ") and "\n" not in message


def test_a_template_past_the_clock_is_stopped_and_says_so(short_limits: None) -> None:
    with pytest.raises(TokenizerError, match=r"stopped: it ran for more than 2 s"):
        render_chat(HOSTILE["nested ranges"], CONVERSATION)


def test_output_may_grow_with_the_messages() -> None:
    # a long document is echoed whole: the output limit is 1M characters plus 4x the input
    long = [{"role": "user", "content": "y" * 2_000_000}]
    assert len(render_chat("{{ messages[0].content }}", long)) == 2_000_000


def test_the_child_leaves_no_trace_and_the_parent_keeps_working(capsys: pytest.CaptureFixture[str]) -> None:
    print("buffered", end="")  # a child that flushed the parent's buffers would print this twice
    for _ in range(3):
        assert render_chat("{{ messages[0].content }}", CONVERSATION[1:]) == CONVERSATION[1]["content"]
    assert capsys.readouterr().out == "buffered"


def test_run_bounded_passes_failures_back_as_data() -> None:
    limits = Limits(5.0, 256 << 20, 100)
    assert run_bounded(lambda: "ok", limits) == "ok"
    with pytest.raises(LimitExceeded, match="more than 100 characters"):
        run_bounded(lambda: "x" * 101, limits)
    with pytest.raises(Exception, match="boom"):
        run_bounded(lambda: (_ for _ in ()).throw(ValueError("boom")), limits)


TEMPLATE_PIECES = st.sampled_from([
    "{{ messages[0].content }}", "{% for m in messages %}{{ m.role }}{% endfor %}", "{{ 'a' * 3 }}",
    "{{ 2 ** 10 }}", "{% if add_generation_prompt %}x{% endif %}", "{{ bos_token }}", "{{ '%5d' % 3 }}",
    "{% for i in range(50) %}", "{% endfor %}", "{% if 1 %}", "{% endif %}", "{{", "}}", "{%", "%}",
    "{{ range(10 ** 6) | list | length }}", "{{ 9 ** 99999 }}", "{{ (messages | tojson) * 3 }}",
    "{% macro m(x) %}{{ m(x) }}{% endmacro %}", "{{ m(1) }}", "{{ raise_exception('no') }}", "plain text",
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(TEMPLATE_PIECES, min_size=1, max_size=8))
def test_any_template_renders_or_fails_cleanly(short_limits: None, pieces: list[str]) -> None:
    t0 = time.perf_counter()
    try:
        out = render_chat("".join(pieces), CONVERSATION, special_tokens=SPECIAL)
    except TokenizerError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(out, str)
    assert time.perf_counter() - t0 < 8.0
