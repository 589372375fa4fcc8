"""Chat templates (sandboxed Jinja), chat prompts, and multi-turn chat with cache reuse.

The fixtures' tokenizer has one special token, <|endoftext|> (id 0, bos = eos), so the chat
templates here write their role markers as plain text, Granite style.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, copy_fixture, run_cli

import modelkit
from modelkit.generation.chat import ChatSession
from modelkit.text.chat_template import apply_chat_template, chat_prompt_ids, render_chat
from modelkit.errors import TokenizerError
from modelkit.generation.loop import GenerationStats
from modelkit.text.tokenizer import Tokenizer
from chat_models import GRANITE_STYLE, chat_model_folder  # noqa: E402

ESCAPES = [
    "{{ messages.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{% set ns = namespace(__class__=1) %}x",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
]


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory) -> Path:
    return chat_model_folder(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def chat_model(chat_folder):
    return modelkit.load(chat_folder)


# ---- rendering ---------------------------------------------------------------------------
def test_render_with_special_tokens_and_generation_prompt():
    msgs = [{"role": "user", "content": "Hi"}]
    out = render_chat(GRANITE_STYLE, msgs, add_generation_prompt=True,
                      special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    assert out == ("<s><|start_of_role|>system<|end_of_role|>You are a helpful assistant.</s>\n"
                   "<|start_of_role|>user<|end_of_role|>Hi</s>\n<|start_of_role|>assistant<|end_of_role|>")
    out = render_chat(GRANITE_STYLE, msgs, add_generation_prompt=False,
                      special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    assert not out.endswith("<|end_of_role|>")


def test_jinja_environment_matches_transformers():
    # trim_blocks / lstrip_blocks: block tags leave no newline or indentation behind
    tpl = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}"
    assert render_chat(tpl, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "[a]\n[b]\n"
    # tojson does not escape HTML and keeps non-ASCII
    assert render_chat("{{ x | tojson }}", [], x={"k": "<b>é</b>"}) == '{"k": "<b>é</b>"}'
    assert render_chat("{{ x | tojson(indent=2) }}", [], x=[1]) == "[\n  1\n]"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", render_chat("{{ strftime_now('%Y-%m-%d') }}", []))
    # loop controls, namespace, the {% generation %} tag
    tpl = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
           "{% set ns.n = ns.n + 1 %}{% endfor %}{% generation %}{{ ns.n }}{% endgeneration %}")
    assert render_chat(tpl, [{"role": "user", "content": str(i)} for i in range(5)]) == "2"
    # extra variables reach the template
    assert render_chat("{{ 'T' if enable_thinking else 'F' }}", [], enable_thinking=True) == "T"


def test_raise_exception_and_syntax_errors_are_tokenizer_errors():
    tpl = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    with pytest.raises(TokenizerError, match="Conversation must start with user"):
        render_chat(tpl, [{"role": "system", "content": "x"}])
    with pytest.raises(TokenizerError, match="syntax error"):
        render_chat("{% for %}", [])


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_blocks_python_internals(template):
    with pytest.raises(TokenizerError, match="sandbox|unsafe|underscore"):
        render_chat(template, [{"role": "user", "content": "hi"}])


def test_messages_are_passed_as_plain_data():
    class Sneaky(str):
        def danger(self):  # pragma: no cover - must be unreachable
            return "called"

    with pytest.raises(TokenizerError):
        render_chat("{{ messages[0].content.danger() }}", [{"role": "user", "content": Sneaky("x")}])
    with pytest.raises(TokenizerError, match="JSON"):
        render_chat("x", [{"role": "user", "content": object()}])


# ---- the tokenizer's template and chat prompt ids ----------------------------------------
def test_template_sources_and_special_tokens(tmp_path):
    folder = chat_model_folder(tmp_path)
    tok = Tokenizer.from_folder(folder)
    assert tok.chat_template == GRANITE_STYLE
    assert tok.special_tokens() == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "json {{ eos_token }}"}))
    assert apply_chat_template(Tokenizer.from_folder(folder), []) == "json <|endoftext|>"
    (folder / "chat_template.jinja").write_text("jinja {{ bos_token }}", encoding="utf-8")
    tok = Tokenizer.from_folder(folder)
    assert apply_chat_template(tok, []) == "jinja <|endoftext|>"
    assert tok.chat_template_file.endswith("chat_template.jinja")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<|endoftext|>"}, "pad_token": "<|endoftext|>",
         "additional_special_tokens": ["<|endoftext|>"]}))
    tok = Tokenizer.from_folder(folder)
    assert tok.special_tokens() == {"bos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                                    "additional_special_tokens": ["<|endoftext|>"]}


def test_chat_text_is_encoded_without_a_second_bos(tmp_path):
    tok = Tokenizer.from_folder(chat_model_folder(tmp_path, bos_post_processor=True))
    msgs = [{"role": "user", "content": "Hi"}]
    text = apply_chat_template(tok, msgs)
    assert text.startswith("<|endoftext|>")
    assert tok.encode(text)[:2] == [0, 0]  # what a naive encode would do
    ids = chat_prompt_ids(tok, msgs)
    assert ids[0] == 0 and ids[1] != 0
    assert ids == tok.encode(text, add_special_tokens=False)
    assert tok.encode("Hi")[0] == 0  # raw prompts keep the tokenizer's BOS


def test_missing_template_is_a_clear_error():
    tok = Tokenizer.from_folder(ROOT / "tests" / "fixtures" / "llama_gqa")
    with pytest.raises(TokenizerError, match="no chat template"):
        chat_prompt_ids(tok, [{"role": "user", "content": "hi"}])


# ---- the chat session (library) ----------------------------------------------------------
def test_second_turn_prefills_only_new_tokens_and_matches_a_fresh_run(chat_model):
    session = ChatSession(chat_model, max_new_tokens=12)
    s1, s2 = GenerationStats(), GenerationStats()
    reply1 = "".join(p.text for p in session.send("hello there", stats=s1))
    assert s1.cached_tokens == 0 and s1.prompt_tokens > 0
    cache_before = session.cache
    held = len(session.cache.tokens)
    pieces = list(session.send("and now?", stats=s2))
    assert session.cache is cache_before  # reused, not rebuilt
    assert s2.cached_tokens == held
    ids_all = session.cache.tokens[:s2.cached_tokens + s2.prompt_tokens]
    assert s2.prompt_tokens < len(ids_all)
    # the reused cache gives exactly what a fresh run over the same ids gives
    assert [i for p in pieces for i in p.ids] == chat_model.generate(ids_all, 12)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"] == reply1
    # the next turn's text extends the text the cache stands for
    rendered = apply_chat_template(chat_model.tokenizer, session.messages + [{"role": "user", "content": "x"}])
    assert session.cache_text and rendered.startswith(session.cache_text)


def test_reset_drops_the_cache_and_keeps_the_system_message(chat_model):
    session = ChatSession(chat_model, system="Be brief.", max_new_tokens=4)
    list(session.send("hi"))
    session.reset()
    assert session.cache is None and session.messages == [{"role": "system", "content": "Be brief."}]
    stats = GenerationStats()
    list(session.send("hi", stats=stats))
    assert stats.cached_tokens == 0


def test_a_reply_the_caller_stops_reading_stays_in_the_conversation(chat_model):
    # find a reply whose first tokens are whole characters (random bytes often are not)
    tok = chat_model.tokenizer
    for k in range(100):
        session = ChatSession(chat_model, max_new_tokens=50, temperature=1.0, seed=k)
        reply = session.send("hello")
        kept = [next(reply) for _ in range(4)]
        fed = tok.decode([i for p in kept[:-1] for i in p.ids])  # the last token is never fed
        if "\ufffd" not in fed and "".join(p.text for p in kept).startswith(fed):
            break
        reply.close()
    else:
        pytest.skip("no clean reply start in this fixture")
    reply.close()  # the caller stops between tokens: the cache is still consistent
    assert session.messages[-1] == {"role": "assistant", "content": "".join(p.text for p in kept)}
    stats = GenerationStats()
    list(session.send("more", stats=stats))
    assert stats.cached_tokens == len(session.cache.tokens) - stats.prompt_tokens - (stats.new_tokens - 1)
    assert stats.cached_tokens > 0


def test_history_rewriting_template_rebuilds_the_cache(tmp_path):
    # the header counts the messages, so each turn's text diverges early from the cached one
    tpl = "{{ messages | length }} messages\n" + GRANITE_STYLE
    model = modelkit.load(chat_model_folder(tmp_path, tpl))
    session = ChatSession(model, max_new_tokens=4)
    list(session.send("hello"))
    first = session.cache
    stats = GenerationStats()
    list(session.send("again", stats=stats))
    assert session.cache is not first  # a new cache: nothing is ever truncated
    assert stats.cached_tokens == 0
    assert stats.prompt_tokens == len(session.cache.tokens) - (stats.new_tokens - 1)


def test_a_diverging_prefix_gets_a_fresh_cache(chat_model):
    session = ChatSession(chat_model, max_new_tokens=4)
    list(session.send("hello"))
    old = session.cache
    ids, new = session.prompt_ids("something else entirely")
    assert new == ids and session.cache is not old and session.cache.length == 0
    assert old.length > 0  # the old cache was dropped, not truncated


def test_sandbox_escape_in_chat_fails_before_generating(tmp_path):
    model = modelkit.load(chat_model_folder(tmp_path, "{{ messages.__class__.__mro__ }}"))
    session = ChatSession(model)
    with pytest.raises(TokenizerError, match="sandbox"):
        session.send("hi")
    assert session.messages == []


# ---- the CLI -----------------------------------------------------------------------------
def test_run_chat_uses_the_template(chat_folder, chat_model):
    proc = run_cli("run", "--model", chat_folder, "--chat", "--system", "Be brief.", "--prompt", "Hi",
                   "--max-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    ids = chat_prompt_ids(chat_model.tokenizer, [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi"}])
    assert f"[{len(ids)} prompt tokens" in proc.stderr
    expected = "".join(p.text for p in chat_model.stream(ids, max_new_tokens=6))
    assert proc.stdout == expected + "\n"


def test_run_chat_does_not_double_bos(tmp_path):
    folder = chat_model_folder(tmp_path, bos_post_processor=True)
    tok = Tokenizer.from_folder(folder)
    n = len(chat_prompt_ids(tok, [{"role": "user", "content": "Hi"}]))
    proc = run_cli("run", "--model", folder, "--chat", "--prompt", "Hi", "--max-tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"[{n} prompt tokens" in proc.stderr


@pytest.mark.parametrize("template", ESCAPES[:3])
def test_run_chat_with_an_escaping_template_fails(tmp_path, template):
    proc = run_cli("run", "--model", chat_model_folder(tmp_path, template), "--chat", "--prompt", "hi")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("modelkit: error: ") and len(proc.stderr.splitlines()) == 1
    assert "sandbox" in proc.stderr and "Traceback" not in proc.stderr


def test_chat_without_template_fails(tmp_path):
    proc = run_cli("chat", "--model", ROOT / "tests" / "fixtures" / "llama_gqa")
    assert proc.returncode == 1 and "no chat template" in proc.stderr


TURN = re.compile(r"\[turn (\d+): reused (\d+) cached tokens, prefilled (\d+) \|")


def turn_stats(stderr: str) -> list[tuple[int, int, int]]:
    return [tuple(map(int, m)) for m in TURN.findall(stderr)]


def test_chat_session_over_stdin_reuses_the_cache(chat_folder):
    script = "hello there\nhow are you\n/reset\nhello there\n/exit\nnever read\n"
    proc = subprocess.run([sys.executable, "-m", "modelkit", "chat", "--model", str(chat_folder), "-n", "8",
                           "--verbose"], input=script, capture_output=True, text=True, env=cli_env(),
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    turns = turn_stats(proc.stderr)
    assert [t[0] for t in turns] == [1, 2, 3]
    (_, reused1, pre1), (_, reused2, pre2), (_, reused3, pre3) = turns
    assert reused1 == 0
    assert reused2 == pre1 + 7  # the first prompt and the 7 reply tokens fed back (the 8th never is)
    assert pre2 < reused2 + pre2 and pre2 < pre1 + 30
    assert (reused3, pre3) == (0, pre1)  # after /reset the same first turn again
    assert "[conversation cleared]" in proc.stderr
    replies = proc.stdout.split("\n")
    assert replies[0] == replies[2] and len(replies) == 4  # three replies, same greedy first reply



def _wait_for(proc: subprocess.Popen, *, stdout: bool = False, stderr_text: str = "",
              timeout: float = 60) -> str:
    """Read the child's pipes until stdout shows bytes or stderr shows ``stderr_text``;
    returns the stderr read meanwhile."""
    err = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout, proc.stderr], [], [], 1.0)
        for stream in ready:
            data = os.read(stream.fileno(), 65536)
            if stream is proc.stdout and data and stdout:
                return err.decode()
            if stream is proc.stderr:
                err += data
                if stderr_text and stderr_text in err.decode(errors="replace"):
                    return err.decode()
    raise AssertionError(f"child did not get there in time; stderr so far: {err!r}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child needs POSIX")
def test_ctrl_c_stops_the_reply_not_the_session(chat_folder):
    # greedy replies of this fixture never reach EOS, so only Ctrl-C ends them
    proc = subprocess.Popen([sys.executable, "-m", "modelkit", "chat", "--model", str(chat_folder),
                             "--max-tokens", "100000", "--verbose"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(), cwd=ROOT)
    try:
        err = ""
        for turn in (1, 2):
            proc.stdin.write(f"message {turn}\n".encode())
            proc.stdin.flush()
            err += _wait_for(proc, stdout=True)           # the reply is streaming
            proc.send_signal(signal.SIGINT)
            err += _wait_for(proc, stderr_text=f"[turn {turn}:")  # ... and stopped; the session goes on
        out, rest = proc.communicate(b"/exit\n", timeout=60)
        err += rest.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    turns = turn_stats(err)
    assert [t[0] for t in turns] == [1, 2]
    assert err.count("(interrupted)") == 2
    assert turns[1][1] > turns[0][2]  # turn 2 reused turn 1's cache, partial reply included
