"""`modelkit convert` under hostile conditions: it never overwrites its own input, never writes
a value its dtype cannot hold, never leaves a half-written model.safetensors under its real
name (concurrent converts, SIGTERM, Ctrl-C, a full disk, a file-size limit, a read-only
folder), and says what went wrong in one line."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_env, copy_fixture, fixture_path, read_tensors, write_tensors
from gguf_files import fixture_as_gguf
from hostile_env import assert_one_line_error, make_public, modelkit, shared_dir, unprivileged
from safetensors import safe_open

import modelkit as mk
from modelkit.cli import main as cli_main
from modelkit.errors import CheckpointError
from modelkit_gguf import output
from modelkit_gguf.convert import convert

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, locks and limits")
PARTIAL = f"*{output.PARTIAL_SUFFIX}"


@pytest.fixture
def gguf_gqa(tmp_path: Path) -> Path:
    return fixture_as_gguf("llama_gqa", tmp_path / "gqa.gguf")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f".{PARTIAL}")) if folder.is_dir() else []


def _assert_converted(folder: Path, name: str = "llama_gqa") -> None:
    """``folder`` holds the complete, loadable conversion of fixture ``name``, no temporary file."""
    original = read_tensors(fixture_path(name))
    converted = read_tensors(folder)
    assert set(converted) == set(original)
    for key, array in original.items():
        np.testing.assert_array_equal(converted[key], array, err_msg=key)
    assert _leftovers(folder) == []
    assert mk.load(folder).name == "llama"


# ---- never onto its own source ---------------------------------------------------------------

def _same_folder(tmp: Path) -> tuple[Path, Path]:
    src = copy_fixture("llama_gqa", tmp / "m")
    return src, src


def _inside_source(tmp: Path) -> tuple[Path, Path]:
    src = copy_fixture("llama_gqa", tmp / "m")
    return src, src / "converted"


def _symlink_to_source(tmp: Path) -> tuple[Path, Path]:
    src = copy_fixture("llama_gqa", tmp / "m")
    (tmp / "link").symlink_to(src)
    return src, tmp / "link"


def _gguf_inside_target(tmp: Path) -> tuple[Path, Path]:
    (tmp / "out").mkdir()
    return fixture_as_gguf("llama_gqa", tmp / "out" / "m.gguf"), tmp / "out"


def _target_holds_a_linked_shard(tmp: Path) -> tuple[Path, Path]:
    # the Hugging Face cache layout: the snapshot's files link to blobs in another folder
    blobs, snap = tmp / "blobs", tmp / "snap"
    copy_fixture("llama_gqa", blobs)
    snap.mkdir()
    for f in blobs.iterdir():
        (snap / f.name).symlink_to(f)
    return snap, blobs


OVERLAPS = {"same folder": _same_folder, "inside the source": _inside_source, "symlink to it": _symlink_to_source,
            "target holds the gguf": _gguf_inside_target, "target holds a linked shard": _target_holds_a_linked_shard}


@pytest.mark.parametrize("case", list(OVERLAPS))
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_target_that_is_holds_or_lies_in_the_source_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                case: str, dtype: str) -> None:
    src, out = OVERLAPS[case](tmp_path)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    code = cli_main(["convert", str(src), str(out), "--force", "--dtype", dtype])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "being converted" in err, err
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    assert not (tmp_path / "m" / "converted").exists()


# ---- values the dtype cannot hold --------------------------------------------------------------

def _with_values(tmp: Path, values: list[float], name: str = "model.layers.1.mlp.down_proj.weight") -> Path:
    tensors = read_tensors(fixture_path("llama_gqa"))
    tensors[name] = tensors[name].copy()
    tensors[name].flat[:len(values)] = values
    folder = copy_fixture("llama_gqa", tmp / "m", weights=False)
    write_tensors(folder, tensors)
    return folder


@pytest.mark.parametrize("dtype, values, count", [
    ("f16", [7e4], 1), ("f16", [-1e5, 65520.0, 3e38], 3), ("bf16", [3.4e38], 1), ("bfloat16", [-3.4e38, 3.4e38], 2),
])
def test_values_beyond_the_dtype_are_refused_by_tensor(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       dtype: str, values: list[float], count: int) -> None:
    src = _with_values(tmp_path, values)
    assert cli_main(["convert", str(src), str(tmp_path / "hf"), "--dtype", dtype]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.layers.1.mlp.down_proj.weight" in err
    assert f"{count} value(s) beyond" in err and "--clip" in err
    assert not (tmp_path / "hf").exists()  # nothing written, not even the folder


@pytest.mark.parametrize("dtype, values, clipped, limit", [
    ("f16", [7e4, -1e5, 3e38, 65519.0], [True, True, True, False], 65504.0),  # 65519 rounds to 65504
    ("bf16", [3.4e38, -3.4e38, 1e38], [True, True, False], 3.3895313892515355e38),
])
def test_clip_clips_and_says_how_many(tmp_path: Path, capsys: pytest.CaptureFixture, dtype: str,
                                      values: list[float], clipped: list[bool], limit: float) -> None:
    src = _with_values(tmp_path, values)
    assert cli_main(["convert", str(src), str(tmp_path / "hf"), "--dtype", dtype, "--clip"]) == 0
    out, err = capsys.readouterr()
    assert f"clipped {sum(clipped)} value(s)" in err and "model.layers.1.mlp.down_proj.weight" in err
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="numpy") as f:
        got = f.get_tensor("model.layers.1.mlp.down_proj.weight").astype(np.float32).flat[:len(values)]
    assert np.all(np.isfinite(got))
    for v, g, c in zip(values, got, clipped):
        assert g == (np.float32(np.sign(v) * limit) if c else g)
        assert c or abs(g - v) <= abs(v) * 2 ** -8
    assert "float16" in out or "bfloat16" in out


def test_values_that_round_into_range_are_kept(tmp_path: Path) -> None:
    src = _with_values(tmp_path, [65519.0, -65504.0])  # 65519 rounds down to float16's 65504
    done = convert(src, tmp_path / "hf", dtype="f16")
    assert done["clipped"] == {}


def test_non_finite_source_values_are_not_clipped(tmp_path: Path) -> None:
    # infinity fits every dtype: it is copied as it is (modelkit validate --values finds it)
    src = _with_values(tmp_path, [np.inf, -np.inf])
    done = convert(src, tmp_path / "hf", dtype="f16", clip=True)
    assert done["clipped"] == {}


# ---- one writer at a time, through unique temporary files ---------------------------------------

@posix_only
def test_a_folder_locked_by_another_convert_is_refused(tmp_path: Path, gguf_gqa: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    import fcntl

    out = tmp_path / "hf"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running convert holds it
        proc = modelkit("convert", gguf_gqa, out, "--force")
    finally:
        os.close(fd)
    assert_one_line_error(proc, "another modelkit convert is writing into this folder")
    assert list(out.iterdir()) == []
    assert cli_main(["convert", str(gguf_gqa), str(out)]) == 0  # the lock went with its holder
    _assert_converted(out)


@posix_only
@pytest.mark.parametrize("force", [True, False])
@pytest.mark.parametrize("sources", ["same", "different"])
def test_concurrent_converts_into_one_folder(tmp_path: Path, force: bool, sources: str) -> None:
    srcs = [fixture_as_gguf("llama_gqa", tmp_path / "a.gguf"),
            fixture_as_gguf("llama_gqa" if sources == "same" else "llama_mqa_tied", tmp_path / "b.gguf")]
    out = tmp_path / "hf"
    args = ["--force"] if force else []
    procs = [subprocess.Popen([sys.executable, "-m", "modelkit", "convert", str(s), str(out), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT)
             for s in srcs]
    results = [(p.wait(timeout=180), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert winners, results
    for code, err in results:
        if code:  # the loser: one line, no traceback
            assert code == 1 and "Traceback" not in err and err.count("\n") == 1, err
            assert "another modelkit convert" in err or "not empty" in err, err
    # the folder is one whole conversion by a winner (the last to publish), never a mix or torn
    names = ["llama_gqa", "llama_gqa" if sources == "same" else "llama_mqa_tied"]
    name = "llama_mqa_tied" if json.loads((out / "config.json").read_text())["tie_word_embeddings"] else "llama_gqa"
    assert name in {names[i] for i in winners}
    _assert_converted(out, name)


def test_temporary_files_are_unique_and_private_to_their_writer(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    with output.OutputFolder(out) as a:
        a.write("model.safetensors", lambda f: f.write(b"one"))
        a.write("model.safetensors", lambda f: f.write(b"two"))
        names = _leftovers(out)
        assert len(names) == 2 and not (out / "model.safetensors").exists()
        a.publish()
    assert (out / "model.safetensors").read_bytes() == b"two" and _leftovers(out) == []


def test_leftovers_of_a_killed_convert_do_not_block_the_next(tmp_path: Path, gguf_gqa: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / f".model.safetensors.k1ll3d{output.PARTIAL_SUFFIX}").write_bytes(b"torn")
    convert(gguf_gqa, out)  # no --force needed: the folder held only a dead writer's file
    _assert_converted(out)


def test_written_files_get_the_usual_permissions(tmp_path: Path, gguf_gqa: Path) -> None:
    mask = os.umask(0o022)
    try:
        convert(gguf_gqa, tmp_path / "hf")
    finally:
        os.umask(mask)
    for f in (tmp_path / "hf").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f.name  # not mkstemp's 0600


# ---- signals ---------------------------------------------------------------------------------

SLOW_CONVERT = textwrap.dedent("""
    import sys, time
    import modelkit_gguf.convert as c
    real = c._write_array
    def slow(f, array):  # a big model's pace, so a signal lands mid-file
        real(f, array)
        f.flush()
        time.sleep(0.2)
    c._write_array = slow
    from modelkit.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@posix_only
@pytest.mark.parametrize("sig, code, message", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_signal_mid_write_removes_the_temporary_file(tmp_path: Path, gguf_gqa: Path, sig: int, code: int,
                                                       message: str, existing: bool) -> None:
    out = tmp_path / "hf"
    if existing:  # a folder from an earlier convert, overwritten with --force: kept whole
        convert(fixture_as_gguf("llama_mqa_tied", tmp_path / "old.gguf"), out)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, "convert", str(gguf_gqa), str(out), "--force"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT)
    deadline = time.monotonic() + 120
    while not _leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _leftovers(out), "the temporary file never appeared"
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.decode() == f"modelkit: error: {message}" + (
        " (SIGTERM)\n" if sig == signal.SIGTERM else "\n"), err
    assert _leftovers(out) == []
    if existing:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()  # it made the folder and took it away again


# ---- filesystem errors -----------------------------------------------------------------------

def _limit_file_size(ignore_sigxfsz: bool):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the weights need 158 KB
        if ignore_sigxfsz:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return preexec


@posix_only
@pytest.mark.parametrize("ignore_sigxfsz", [True, False])
def test_a_file_size_limit_is_one_line(tmp_path: Path, gguf_gqa: Path, ignore_sigxfsz: bool) -> None:
    # without the parent ignoring SIGXFSZ the kernel would kill the process: convert ignores it
    out = tmp_path / "hf"
    proc = modelkit("convert", gguf_gqa, out, preexec=_limit_file_size(ignore_sigxfsz))
    assert_one_line_error(proc, "model.safetensors", "File too large", "ulimit -f")
    assert not out.exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_a_full_disk_is_one_line(tmp_path: Path, gguf_gqa: Path, capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch, code: int, where: str) -> None:
    import modelkit_gguf.convert as convert_module

    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    target = {"write": (convert_module, "_write_array"), "fsync": (output.os, "fsync"),
              "rename": (output.os, "replace")}[where]
    monkeypatch.setattr(*target, fail)
    out = tmp_path / "hf"
    assert cli_main(["convert", str(gguf_gqa), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and os.strerror(code) in err and "cannot write" in err
    if code == errno.ENOSPC:
        assert "the disk is full" in err
    assert not out.exists() or (_leftovers(out) == [] and not (out / "model.safetensors").exists())


@posix_only
@pytest.mark.parametrize("layout", ["read-only folder", "inside a read-only folder", "read-only existing file"])
def test_permission_denied_is_one_line(gguf_gqa: Path, layout: str) -> None:
    prefix = unprivileged()
    with shared_dir() as root:
        src = root / "m.gguf"
        src.write_bytes(gguf_gqa.read_bytes())
        ro = root / "ro"
        ro.mkdir()
        if layout == "read-only existing file":
            (ro / "model.safetensors").write_bytes(b"old")
        make_public(root)
        ro.chmod(0o555)
        out = ro / "sub" if layout == "inside a read-only folder" else ro
        proc = modelkit("convert", src, out, "--force", prefix=prefix, cwd=root)
        assert_one_line_error(proc, str(out), "Permission denied")
        assert _leftovers(ro) == []
        if layout == "read-only existing file":
            assert (ro / "model.safetensors").read_bytes() == b"old"


def test_a_target_that_is_a_file_is_refused(tmp_path: Path, gguf_gqa: Path) -> None:
    (tmp_path / "hf").write_text("a file")
    with pytest.raises(CheckpointError, match="exists and is not a folder"):
        convert(gguf_gqa, tmp_path / "hf")
    assert (tmp_path / "hf").read_text() == "a file"


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
def test_a_symlink_loop_as_target_is_one_line(tmp_path: Path, gguf_gqa: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for out in (tmp_path / "loop", tmp_path / "loop" / "hf"):
        assert cli_main(["convert", str(gguf_gqa), str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot resolve the output path" in err
