"""Standard streams and files in the way: a closed stdin, stdout or stderr, stdout on a full
device, side files the process may not read or that are not regular files, prompt files that
never end. Each is one line on stderr and a non-zero exit, in bounded time, never a traceback."""

from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, copy_fixture
from hostile_env import assert_one_line_error, make_public, modelkit, shared_dir, unprivileged

from modelkit.checkpoint import files
from modelkit.cli import main as cli_main
from modelkit.cli.common import MAX_PROMPT_BYTES

LLAMA = FIXTURES / "llama_gqa"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors, FIFOs and devices")


def _closing(fd: int):
    return lambda: os.close(fd)


# ---- closed streams --------------------------------------------------------------------------

@posix_only
@pytest.mark.parametrize("args", [
    ["run", "--model", LLAMA, "--prompt", "hi", "-n", "2"],
    ["validate", "--model", LLAMA],
    ["archs"],
], ids=["run", "validate", "archs"])
def test_closed_stdout_is_one_line(args: list) -> None:
    proc = modelkit(*args, stdout=None, preexec=_closing(1))
    assert_one_line_error(proc, "standard output is closed")


@posix_only
@pytest.mark.parametrize("args, needle", [
    (["run", "--model", LLAMA, "--prompt", "-"], "--prompt TEXT"),
    (["run", "--model", LLAMA, "--prompt-file", "-", "--chat"], "--prompt-file PATH"),
    (["chat", "--model", LLAMA], "chat reads its messages there"),
], ids=["prompt -", "prompt-file -", "chat"])
def test_closed_stdin_is_one_line_when_it_is_read(args: list, needle: str) -> None:
    proc = modelkit(*args, preexec=_closing(0))
    assert_one_line_error(proc, "standard input is closed", needle)
    assert proc.stdout == b""


@posix_only
def test_closed_stdin_is_fine_when_nothing_reads_it() -> None:
    proc = modelkit("run", "--model", LLAMA, "--prompt", "hi", "-n", "3", "-q", preexec=_closing(0))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(b"\n")


@posix_only
def test_closed_stderr_keeps_the_exit_code_and_stdout_clean() -> None:
    bad = modelkit("run", "--model", LLAMA, "--prompt", "hi", "--top-p", "7", stderr=None, preexec=_closing(2))
    assert bad.returncode == 1 and bad.stdout == b""  # the error went nowhere, not into stdout
    good = modelkit("run", "--model", LLAMA, "--prompt", "hi", "-n", "2", stderr=None, preexec=_closing(2))
    assert good.returncode == 0 and good.stdout.endswith(b"\n")


@posix_only
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [
    ["run", "--model", LLAMA, "--prompt", "Once upon", "-n", "8"],
    ["validate", "--model", LLAMA],
    ["archs"],
    ["--version"],  # argparse prints it, then exits
    ["run", "--help"],
], ids=["run", "validate", "archs", "version", "help"])
def test_stdout_on_a_full_device(args: list) -> None:
    with open("/dev/full", "wb") as full:
        proc = modelkit(*args, stdout=full)
    err = assert_one_line_error(proc, "standard output: cannot write")
    assert os.strerror(errno.ENOSPC) in err


class _FailingStdout(io.StringIO):
    """A stdout whose device fails after ``ok`` writes."""

    def __init__(self, ok: int, code: int):
        super().__init__()
        self.ok, self.code = ok, code

    def write(self, text: str) -> int:
        if self.ok <= 0:
            raise OSError(self.code, os.strerror(self.code))
        self.ok -= 1
        return super().write(text)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("ok", [0, 2])
def test_stdout_failing_mid_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                   code: int, ok: int) -> None:
    monkeypatch.setattr(sys, "stdout", _FailingStdout(ok, code))
    assert cli_main(["run", "--model", str(LLAMA), "--prompt", "hi", "-n", "6", "-q"]) == 1
    err = capsys.readouterr().err
    assert err == f"modelkit: error: standard output: cannot write ({os.strerror(code)})\n"


# ---- side files the process may not read ---------------------------------------------------

SIDE_FILES = {
    "generation_config.json": None, "tokenizer_config.json": '{"eos_token": "<|endoftext|>"}',
    "special_tokens_map.json": '{"bos_token": "<|endoftext|>"}', "chat_template.jinja": "{{ messages }}",
    "config.json": None, "tokenizer.json": None, "model.safetensors": None,
    "model.safetensors.index.json": '{"weight_map": {"lm_head.weight": "model.safetensors"}}',
}


@posix_only
@pytest.mark.parametrize("name", list(SIDE_FILES))
def test_unreadable_file_in_the_model_folder(name: str) -> None:
    prefix = unprivileged()
    with shared_dir() as root:
        folder = copy_fixture("llama_gqa", root / "m")
        if SIDE_FILES[name] is not None:
            (folder / name).write_text(SIDE_FILES[name], encoding="utf-8")
        make_public(root)
        (folder / name).chmod(0)
        for args in (["run", "--model", folder, "--prompt", "hi", "-n", "2"],
                     ["run", "--model", folder, "--prompt", "hi", "--chat"]):
            if name in ("model.safetensors", "model.safetensors.index.json") and "--chat" in args:
                continue
            proc = modelkit(*args, cwd=root, prefix=prefix)
            assert_one_line_error(proc, name, "Permission denied")
            assert proc.stdout == b""


@posix_only
@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "chat_template.jinja", "chat_template.json", "config.json", "tokenizer.json",
                                  "model.safetensors.index.json"])
def test_fifo_named_like_a_model_file_is_refused_not_waited_on(tmp_path: Path, name: str) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    proc = modelkit("run", "--model", folder, "--prompt", "hi", "-n", "2", timeout=60)
    assert_one_line_error(proc, name, "not a regular file")


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json", "config.json"])
def test_side_file_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / name).unlink(missing_ok=True)
    (folder / name).mkdir()
    assert cli_main(["run", "--model", str(folder), "--prompt", "hi", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelkit: error: ") and name in err and "is a folder" in err and err.count("\n") == 1


@pytest.mark.parametrize("name, limit", [("generation_config.json", "MAX_SIDE_FILE_BYTES"),
                                         ("chat_template.jinja", "MAX_SIDE_FILE_BYTES"),
                                         ("tokenizer.json", "MAX_TOKENIZER_BYTES")])
def test_oversized_side_files(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                              name: str, limit: str) -> None:
    import modelkit.text.tokenizer as tokenizer_module

    monkeypatch.setattr(files if limit == "MAX_SIDE_FILE_BYTES" else tokenizer_module, limit, 4096)
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    with open(folder / name, "ab") as f:
        f.write(b" " * 20000)
    assert cli_main(["run", "--model", str(folder), "--prompt", "hi", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert name in err and "larger than 4096 bytes" in err and err.count("\n") == 1


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"eos_token_id": 0'])
def test_malformed_generation_config_is_an_error_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             text: str) -> None:
    # it may name the EOS ids that end generation: ignoring it would change the output
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "generation_config.json").write_text(text)
    assert cli_main(["run", "--model", str(folder), "--prompt", "hi", "-n", "2"]) == 1
    err = capsys.readouterr().err
    assert "generation_config.json" in err and err.count("\n") == 1


# ---- prompt files ---------------------------------------------------------------------------

@posix_only
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom", "folder"])
def test_prompt_file_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "prompt.txt"
        os.mkfifo(path)  # nobody ever writes it: reading would wait forever
    elif kind == "folder":
        path = tmp_path
    else:
        path = Path(kind)
    proc = modelkit("run", "--model", LLAMA, "--prompt-file", path, timeout=60)
    assert_one_line_error(proc, str(path), "folder" if kind == "folder" else "not a regular file")


def test_huge_prompt_file_is_refused_before_it_is_read_whole(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "huge.txt"
    with open(path, "wb") as f:
        f.truncate(64 * MAX_PROMPT_BYTES)  # sparse: a gigabyte on paper, nothing on disk
    assert cli_main(["run", "--model", str(LLAMA), "--prompt-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"modelkit: error: {path}: larger than {MAX_PROMPT_BYTES >> 20} MB; too large for a prompt file\n"


def test_a_prompt_file_at_the_limit_is_read(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import modelkit.cli.common as common

    monkeypatch.setattr(common, "MAX_PROMPT_BYTES", 64)
    path = tmp_path / "p.txt"
    path.write_bytes(b"a" * 64)
    assert cli_main(["run", "--model", str(LLAMA), "--prompt-file", str(path), "-n", "1", "-q"]) == 0
    path.write_bytes(b"a" * 65)
    assert cli_main(["run", "--model", str(LLAMA), "--prompt-file", str(path), "-n", "1", "-q"]) == 1
    assert "larger than 64 bytes" in capsys.readouterr().err


@posix_only
def test_endless_stdin_is_bounded() -> None:
    with open("/dev/zero", "rb") as zero:
        proc = modelkit("run", "--model", LLAMA, "--prompt", "-", stdin=zero, timeout=60)
    assert_one_line_error(proc, "standard input", f"larger than {MAX_PROMPT_BYTES >> 20} MB")


@posix_only
def test_unreadable_prompt_file() -> None:
    prefix = unprivileged()
    with shared_dir() as root:
        path = root / "secret.txt"
        path.write_text("hello")
        path.chmod(0)
        proc = modelkit("run", "--model", LLAMA, "--prompt-file", path, prefix=prefix)
    assert_one_line_error(proc, str(path), "Permission denied")


def test_symlink_to_a_regular_prompt_file_is_fine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "real.txt").write_text("Once upon a time\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    assert cli_main(["run", "--model", str(LLAMA), "--prompt-file", str(tmp_path / "link.txt"), "-n", "2", "-q"]) == 0


@posix_only
@pytest.mark.parametrize("kind", ["fifo.gguf", "/dev/null", "fifo weights"])
def test_model_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "fifo.gguf":
        model = tmp_path / "m.gguf"
        os.mkfifo(model)
    elif kind == "fifo weights":
        model = tmp_path / "m"
        model.mkdir()
        (model / "config.json").write_bytes((LLAMA / "config.json").read_bytes())
        os.mkfifo(model / "model.safetensors")
    else:
        model = Path(kind)
    proc = modelkit("validate", "--model", model, timeout=60)
    assert_one_line_error(proc, "not a regular file")


@posix_only
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_chat_on_a_full_device_ends_the_session(tmp_path: Path) -> None:
    # not a failed turn that the next one could survive: one line, exit 1
    folder = copy_fixture("llama_gqa", tmp_path / "m")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with open("/dev/full", "wb") as full:
        proc = modelkit("chat", "--model", folder, "-n", "4", input=b"hello\nagain\n", stdout=full)
    assert_one_line_error(proc, "standard output: cannot write")
