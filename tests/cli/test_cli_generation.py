"""`modelkit run` and its generation flags: output equals the library's stream, stop strings,
prompts from files and stdin, the timing line, the progress bar, and one-line errors."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, cli_env, load_cached, run_cli

from modelkit.cli import main as cli_main

LLAMA = FIXTURES / "llama_gqa"
TIMING = re.compile(r"^\[(\d+) prompt tokens \| load [\d.]+ s \| prefill [\d.]+ tok/s \| decode [\d.]+ tok/s \| "
                    r"(\d+) tokens \((eos|length|stop_string)\)\]$")


def expected_text(prompt: str, **options) -> str:
    model = load_cached("llama_gqa")
    return "".join(p.text for p in model.stream(model.tokenizer.encode(prompt), **options))


def run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    code = cli_main(["run", "--model", str(LLAMA), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- output and flags --------------------------------------------------------------------
def test_greedy_output_and_timing_line(capsys):
    code, out, err = run_in_process(capsys, "--prompt", "Hello world", "--max-tokens", "12")
    assert code == 0
    assert out == expected_text("Hello world", max_new_tokens=12) + "\n"
    lines = err.strip().splitlines()
    assert len(lines) == 1
    m = TIMING.match(lines[0])
    assert m, lines[0]
    assert int(m.group(1)) == len(load_cached("llama_gqa").tokenizer.encode("Hello world"))
    assert (int(m.group(2)), m.group(3)) == (12, "length")


def test_quiet_drops_the_timing_line(capsys):
    code, out, err = run_in_process(capsys, "--prompt", "Hello", "-n", "3", "--quiet")
    assert code == 0 and err == "" and out


@pytest.mark.parametrize("flags,options", [
    (["--temperature", "0.9", "--seed", "5"], dict(temperature=0.9, seed=5)),
    (["-t", "1.2", "--top-k", "20", "--seed", "1"], dict(temperature=1.2, top_k=20, seed=1)),
    (["-t", "1", "--top-p", "0.8", "--min-p", "0.05", "--seed", "2"], dict(temperature=1, top_p=0.8, min_p=0.05,
                                                                          seed=2)),
    (["--repetition-penalty", "1.5"], dict(repetition_penalty=1.5)),
])
def test_sampling_flags_match_the_library(capsys, flags, options):
    code, out, _ = run_in_process(capsys, "--prompt", "Once upon a time", "-n", "16", "-q", *flags)
    assert code == 0
    assert out == expected_text("Once upon a time", max_new_tokens=16, **options) + "\n"
    # the same seed gives the same text again
    assert run_in_process(capsys, "--prompt", "Once upon a time", "-n", "16", "-q", *flags)[1] == out


def test_stop_strings_are_repeatable_and_not_printed(capsys):
    full = expected_text("Hello world", max_new_tokens=40)
    clean = [full[i:i + 2] for i in range(8, len(full) - 2) if "\ufffd" not in full[i:i + 2]]
    stop = clean[0]
    code, out, err = run_in_process(capsys, "--prompt", "Hello world", "-n", "40", "--stop", "never-there",
                                    "--stop", stop)
    assert code == 0
    assert out == full[:full.find(stop)] + "\n"
    assert "(stop_string)" in err


def test_special_tokens_are_not_printed(capsys, monkeypatch):
    import modelkit.loading

    real_load = modelkit.loading.load

    def load_emitting_endoftext(*args, **kwargs):
        model = real_load(*args, **kwargs)
        model.head_bias = np.zeros(model.vocab_size, np.float32)
        model.head_bias[0] = 1e4  # <|endoftext|> (special) always wins...
        model.generation_config = {"eos_token_id": 7}  # ...and is not an EOS any more
        model.config.raw = {}
        return model

    monkeypatch.setattr(modelkit.loading, "load", load_emitting_endoftext)
    code, out, err = run_in_process(capsys, "--prompt", "Hi", "-n", "5")
    assert code == 0 and out == "\n"
    assert "5 tokens (length)" in err


# ---- prompts -----------------------------------------------------------------------------
def test_prompt_file_and_stdin(tmp_path, capsys):
    expected = expected_text("Héllo wörld", max_new_tokens=6) + "\n"
    f = tmp_path / "prompt.txt"
    f.write_text("Héllo wörld\n", encoding="utf-8")  # one trailing newline is dropped
    code, out, _ = run_in_process(capsys, "--prompt-file", str(f), "-n", "6", "-q")
    assert code == 0 and out == expected
    for flag in ("--prompt", "--prompt-file"):
        proc = subprocess.run([sys.executable, "-m", "modelkit", "run", "--model", str(LLAMA), flag, "-", "-n", "6",
                               "-q"], input="Héllo wörld\n".encode(), capture_output=True, env=cli_env(), cwd=ROOT,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode("utf-8") == expected


@pytest.mark.parametrize("setup,needle", [
    ("latin1", "not UTF-8 text (byte 0xe9 at offset 1)"),
    ("missing", "prompt file not found"),
    ("folder", "is a folder"),
])
def test_prompt_file_errors_are_one_line(tmp_path, capsys, setup, needle):
    path = tmp_path / "p.txt"
    if setup == "latin1":
        path.write_bytes("Héllo".encode("latin-1"))
    elif setup == "folder":
        path.mkdir()
    code, out, err = run_in_process(capsys, "--prompt-file", str(path))
    assert code == 1 and out == ""
    assert err.startswith("modelkit: error: ") and len(err.splitlines()) == 1
    assert needle in err and str(path) in err


def test_non_utf8_stdin_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "modelkit", "run", "--model", str(LLAMA), "--prompt", "-"],
                          input=b"\xff\xfe bad", capture_output=True, env=cli_env(), cwd=ROOT, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.decode().strip() == "modelkit: error: standard input: the prompt is not UTF-8 text " \
                                           "(byte 0xff at offset 0)"


@pytest.mark.parametrize("args,needle", [
    (["--prompt", "hi", "--max-tokens", "0"], "--max-tokens must be at least 1"),
    (["--prompt", "hi", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
    (["--prompt", "hi", "--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    (["--prompt", "hi", "--stop", ""], "stop strings must be non-empty"),
    (["--prompt", "hi", "--system", "x"], "--system needs --chat"),
    (["--prompt", ""], "encodes to no tokens"),
])
def test_bad_values_are_one_line_errors(capsys, args, needle):
    code, out, err = run_in_process(capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith("modelkit: error: ") and len(err.splitlines()) == 1
    assert needle in err


def test_prompt_and_prompt_file_are_exclusive(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli_main(["run", "--model", str(LLAMA), "--prompt", "a", "--prompt-file", str(tmp_path / "x")])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli_main(["run", "--model", str(LLAMA)])


# ---- a terminal and streaming ------------------------------------------------------------
def _read_all(fd: int, timeout: float = 60) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        out += data
    return out


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bar_only_on_a_terminal():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "modelkit", "run", "--model", str(LLAMA), "-p", "Hi", "-n", "2"],
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=cli_env(), cwd=ROOT)
    os.close(slave)
    try:
        tty_err = _read_all(master).decode(errors="replace")
        proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "loading:" in tty_err and "tensor" in tty_err
    piped = run_cli("run", "--model", LLAMA, "-p", "Hi", "-n", "2")
    assert "loading" not in piped.stderr and TIMING.match(piped.stderr.strip())


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child needs POSIX")
def test_text_streams_before_generation_ends_and_ctrl_c_is_one_line():
    # greedy output of this prompt never reaches EOS: only the interrupt ends it
    proc = subprocess.Popen([sys.executable, "-m", "modelkit", "run", "--model", str(LLAMA), "-p", "Hello world",
                             "-n", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
                            cwd=ROOT)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no text streamed"
        first = os.read(proc.stdout.fileno(), 65536)
        assert first and proc.poll() is None  # text arrived while still generating
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.decode().strip().splitlines()[-1] == "modelkit: error: interrupted"
    assert "Traceback" not in err.decode()
