"""What a new user meets: Ctrl-C mid-reply, a flag out of range, a folder without a tokenizer,
a path that does not exist, a file where a folder belongs, an architecture modelkit does not
know. Each message says what happened and what to do, in one line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, cli_env, copy_fixture, edit_config
from hostile_env import assert_one_line_error, modelkit

from modelkit.cli import main as cli_main

LLAMA = FIXTURES / "llama_gqa"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
PARTIAL_TIMING = re.compile(r"^\[\d+ prompt tokens \| load [\d.]+ s \| prefill [\d.]+ tok/s \| decode [\d.]+ tok/s \| "
                            r"\d+ tokens \(interrupted\)\]$")


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- Ctrl-C and SIGTERM during run -----------------------------------------------------------

def _signal_mid_reply(sig: int, *extra: str) -> tuple[int, bytes, str]:
    # rotary positions have no end and greedy decoding of this fixture never reaches its
    # end-of-sequence token (20000 tokens checked): 100000 tokens take minutes, so the signal
    # lands mid-reply however late it is sent (a sampled reply ended after 14 tokens, and a
    # signal sent after the process had finished killed it on its way out)
    proc = subprocess.Popen([sys.executable, "-m", "modelkit", "run", "--model", str(LLAMA), "--prompt", "Once",
                             "-n", "100000", "--temperature", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT)
    first = proc.stdout.read(1)  # some text is out
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, first + out, err.decode()


@posix_only
def test_ctrl_c_during_run_ends_the_line_then_times_then_says_so() -> None:
    code, out, err = _signal_mid_reply(signal.SIGINT)
    assert code == 130
    assert out.endswith(b"\n")  # the partial reply ends its line, so the next lines start clean
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert PARTIAL_TIMING.match(lines[0]), lines[0]
    assert lines[1] == "modelkit: error: interrupted"


@posix_only
def test_ctrl_c_during_run_with_quiet_prints_only_the_message() -> None:
    code, out, err = _signal_mid_reply(signal.SIGINT, "-q")
    assert code == 130 and out.endswith(b"\n") and err == "modelkit: error: interrupted\n"


@posix_only
def test_sigterm_during_run_is_one_line() -> None:
    code, _, err = _signal_mid_reply(signal.SIGTERM)
    assert code == 143 and err == "modelkit: error: terminated (SIGTERM)\n"


# ---- flag errors name the flag --------------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--top-p", "-0.5"], "--top-p must be in (0, 1]"),
    (["--min-p", "-1"], "--min-p must be in [0, 1]"),
    (["--temperature", "1e39"], "--temperature must be >= 0 and at most 3.403e+38"),
    (["--repetition-penalty", "1e-40"], "--repetition-penalty must be > 0"),
    (["--top-k", "-3"], "--top-k must be an integer >= 0"),
    (["--seed", "-7"], "--seed must be an integer >= 0"),
])
@pytest.mark.parametrize("command", ["run", "chat"])
def test_flag_errors_name_the_flag(capsys: pytest.CaptureFixture, command: str, flags: list[str],
                                   needle: str) -> None:
    prompt = ["--prompt", "hi"] if command == "run" else []
    code, out, err = _cli(capsys, command, "--model", LLAMA, *prompt, *flags)
    assert code == 1 and out == ""
    assert err.startswith(f"modelkit: error: {needle}") and err.count("\n") == 1, err


@pytest.mark.parametrize("config, needle", [
    ({"do_sample": True, "top_p": 2.0}, "generation_config.json: top_p must be in (0, 1]"),
    ({"do_sample": True, "temperature": -1}, "generation_config.json: temperature must be >= 0"),
    ({"repetition_penalty": 0}, "generation_config.json: repetition_penalty must be > 0"),
    ({"do_sample": True, "top_k": 2.5}, "generation_config.json: top_k must be an integer"),
])
def test_bad_values_from_generation_config_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         config: dict, needle: str) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 0, **config}))
    code, _, err = _cli(capsys, "run", "--model", folder, "--prompt", "hi", "-n", "2")
    assert code == 1 and needle in err and err.count("\n") == 1, err


def test_a_flag_overrides_a_bad_file_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_p": 2.0}))
    code, out, _ = _cli(capsys, "run", "--model", folder, "--prompt", "hi", "-n", "2", "--top-p", "0.9", "-q")
    assert code == 0 and out.endswith("\n")


# ---- validate says when run could not work ------------------------------------------------------

def test_validate_warns_when_the_folder_has_no_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    code, out, _ = _cli(capsys, "validate", "--model", folder)
    assert code == 0  # the weights fit: a warning, not a failure
    warning = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "no tokenizer (tokenizer.json)" in warning[0] and "modelkit run" in warning[0]
    assert out.splitlines()[-1].startswith("ok: ")


def test_validate_warns_when_the_tokenizer_is_broken(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "tokenizer.json").write_text('{"model": 7}')
    code, out, _ = _cli(capsys, "validate", "--model", folder)
    assert code == 0 and "warning: the tokenizer cannot be used" in out and "tokenizer.json" in out


def test_validate_is_quiet_about_a_good_tokenizer(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _cli(capsys, "validate", "--model", LLAMA)
    assert code == 0 and "warning" not in out


# ---- paths: local first, and the hub only for what can be a repo id --------------------------------

@pytest.mark.parametrize("model, needle", [
    ("./not-here", "no such file or folder"),
    ("../not/here", "no such file or folder"),
    ("models/SmolLM2.gguf", "no such file or folder"),
    ("models/config.json", "no such file or folder"),
    ("m/typo", "no such file or folder (as 'm' is a folder here, this is read as a path, not as a hub repo id)"),
])
def test_a_missing_local_path_says_so_without_the_hub(tmp_path: Path, model: str, needle: str) -> None:
    copy_fixture("llama_gqa", tmp_path / "m")
    # the hub is reachable in principle here (not offline), at an address nothing answers:
    # a look-up would show up as a connection error instead of the message
    env = cli_env(HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "cache"))
    proc = modelkit("run", "--model", model, "--prompt", "hi", cwd=tmp_path, env=env, timeout=60)
    line = assert_one_line_error(proc, f"{model}: {needle}")
    assert "hub" not in line.replace("hub repo id", "")


def test_a_repo_id_that_is_not_here_says_so_before_the_hub(tmp_path: Path) -> None:
    env = cli_env(HF_HUB_CACHE=str(tmp_path / "cache"))  # offline: nothing cached, nothing fetched
    proc = modelkit("run", "--model", "someorg/some-model", "--prompt", "hi", cwd=tmp_path, env=env, timeout=60)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and len(lines) == 2, lines
    assert lines[0] == "modelkit: someorg/some-model: no such file or folder here; looking for the hub repo " \
                       "someorg/some-model"
    assert lines[1].startswith("modelkit: error: someorg/some-model: no such file or folder here; as a hub repo id: ")


# ---- a file where the folder belongs; an architecture modelkit does not know -----------------------

@pytest.mark.parametrize("name, needle", [
    ("config.json", "give the folder holding it and its config.json (--model {folder})"),
    ("model.safetensors", "give the folder holding it and its config.json (--model {folder})"),
    ("tokenizer.json", "give the folder holding it and its config.json (--model {folder})"),
])
def test_a_file_of_the_folder_given_as_model(capsys: pytest.CaptureFixture, name: str, needle: str) -> None:
    code, _, err = _cli(capsys, "run", "--model", LLAMA / name, "--prompt", "hi")
    assert code == 1 and needle.format(folder=LLAMA) in err and err.count("\n") == 1, err


def test_a_mapping_given_as_model(capsys: pytest.CaptureFixture) -> None:
    code, _, err = _cli(capsys, "validate", "--model", ROOT / "mappings" / "llama.yaml")
    assert code == 1 and "a mapping file goes to --mapping FILE" in err


@pytest.mark.parametrize("model_type", ["frobnicator", "llama4_text", ""])
def test_an_unknown_model_type_points_to_the_fix_first(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       model_type: str) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    edit_config(folder, model_type=model_type)
    code, _, err = _cli(capsys, "run", "--model", folder, "--prompt", "hi")
    assert code == 1 and err.count("\n") == 1
    fix = err.index("--mapping FILE, see docs/adding-an-architecture.md")
    assert fix < err.index("known architectures")  # read before the long lists
    assert (ROOT / "docs" / "adding-an-architecture.md").is_file()


def test_an_unknown_arch_points_to_the_fix(capsys: pytest.CaptureFixture) -> None:
    code, _, err = _cli(capsys, "validate", "--model", LLAMA, "--arch", "llama9")
    assert code == 1 and "`modelkit archs` lists them" in err and "docs/adding-an-architecture.md" in err
