"""`modelkit convert FOLDER OUT.gguf` under hostile conditions, as test_convert_safety.py checks
the other direction: it never writes into or over its own source, never writes a value its
tensor type cannot hold, never leaves a half-written OUT.gguf under its real name (an existing
file replaced with --force stays whole until the new one is; concurrent converts, SIGTERM,
Ctrl-C, a full disk, a file-size limit, a read-only folder), and says what went wrong in one
line."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import ROOT, cli_env, copy_fixture, fixture_path, read_tensors, write_tensors
from hostile_env import assert_one_line_error, make_public, modelkit, shared_dir, unprivileged

import modelkit as mk
from modelkit.cli import main as cli_main
from modelkit.errors import CheckpointError
from modelkit_gguf import export_write, output
from modelkit_gguf.export import export

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, locks and limits")
PARTIAL = f".*{output.PARTIAL_SUFFIX}"
DOWN = "model.layers.1.mlp.down_proj.weight"  # blk.1.ffn_down.weight in the file


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(PARTIAL)) if folder.is_dir() else []


def _assert_exported(out: Path, name: str = "llama_gqa") -> None:
    """``out`` is the whole GGUF file of fixture ``name``, and no temporary file is beside it."""
    assert _leftovers(out.parent) == []
    tensors = {t.name for t in gguf.GGUFReader(out).tensors}
    assert "blk.1.ffn_down.weight" in tensors
    ref = mk.load(fixture_path(name))
    ids = np.arange(1, 9)
    np.testing.assert_allclose(mk.load(out).forward(ids), ref.forward(ids), atol=1e-4)


# ---- never into or over its source -------------------------------------------------------------

def _inside_source(tmp: Path) -> tuple[Path, Path]:
    src = copy_fixture("llama_gqa", tmp / "m")
    return src, src / "m.gguf"


def _over_a_source_file(tmp: Path) -> tuple[Path, Path]:
    # a name ending in .gguf that is a link to the folder's own weights
    src = copy_fixture("llama_gqa", tmp / "m")
    (tmp / "weights.gguf").symlink_to(src / "model.safetensors")
    return src, tmp / "weights.gguf"


def _the_source_itself(tmp: Path) -> tuple[Path, Path]:
    src = copy_fixture("llama_gqa", tmp / "m.gguf")  # a folder whose name ends in .gguf
    return src, src


def _through_a_link_to_the_source(tmp: Path) -> tuple[Path, Path]:
    src = copy_fixture("llama_gqa", tmp / "m")
    (tmp / "link").symlink_to(src)
    return src, tmp / "link" / "m.gguf"


OVERLAPS = {"inside the source": _inside_source, "over a source file": _over_a_source_file,
            "the source itself": _the_source_itself, "through a link": _through_a_link_to_the_source}


@pytest.mark.parametrize("case", list(OVERLAPS))
def test_an_output_in_or_over_the_source_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    case: str) -> None:
    src, out = OVERLAPS[case](tmp_path)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    code = cli_main(["convert", str(src), str(out), "--force"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "being converted" in err, err
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    assert not (src / "m.gguf").exists() or case == "the source itself"


# ---- values the type cannot hold ----------------------------------------------------------------

def _with_values(tmp: Path, values: list[float]) -> Path:
    tensors = read_tensors(fixture_path("llama_gqa"))
    tensors[DOWN] = tensors[DOWN].copy()
    tensors[DOWN].flat[:len(values)] = values
    folder = copy_fixture("llama_gqa", tmp / "m", weights=False)
    write_tensors(folder, tensors)
    return folder


@pytest.mark.parametrize("dtype, values, count, words", [
    ("f16", [7e4], 1, "F16 ends at 65504"), ("f16", [-1e5, 65520.0, 3e38], 3, "F16 ends at 65504"),
    ("bf16", [3.4e38], 1, "BF16 ends at 3.3895e+38"), ("q8_0", [9e6, -1e7], 2, "Q8_0 ends at 8.319e+06"),
])
def test_values_beyond_the_type_are_refused_by_tensor(tmp_path: Path, capsys: pytest.CaptureFixture, dtype: str,
                                                      values: list[float], count: int, words: str) -> None:
    src = _with_values(tmp_path, values)
    out = tmp_path / "out" / "m.gguf"
    assert cli_main(["convert", str(src), str(out), "--dtype", dtype]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "blk.1.ffn_down.weight" in err and words in err, err
    assert f"{count} value(s) beyond" in err and "--clip" in err
    assert not (tmp_path / "out").exists()  # nothing left, not even the folder it made


@pytest.mark.parametrize("dtype, values, limit", [
    ("f16", [7e4, -1e5, 65519.0], 65504.0), ("q8_0", [9e6, -1e7], export_write.Q8_0_MAX),
])
def test_clip_clips_and_says_how_many(tmp_path: Path, capsys: pytest.CaptureFixture, dtype: str,
                                      values: list[float], limit: float) -> None:
    src = _with_values(tmp_path, values)
    out = tmp_path / "m.gguf"
    assert cli_main(["convert", str(src), str(out), "--dtype", dtype, "--clip"]) == 0
    err = capsys.readouterr().err
    over = sum(abs(v) > limit + (16 if dtype == "f16" else 0) for v in values)  # 65519 rounds to 65504
    assert f"clipped {over} value(s)" in err and "blk.1.ffn_down.weight" in err and f"±{limit:.5g}" in err
    (t,) = [t for t in gguf.GGUFReader(out).tensors if t.name == "blk.1.ffn_down.weight"]
    data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)[:len(values)]
    assert np.all(np.isfinite(data))
    np.testing.assert_allclose(np.abs(data), np.minimum(np.abs(values), limit), rtol=1e-2)


def test_in_range_values_are_not_clipped(tmp_path: Path) -> None:
    done = export(_with_values(tmp_path, [65519.0, -65504.0]), tmp_path / "m.gguf", dtype="f16")
    assert done["clipped"] == {}


# ---- one writer, whole files ------------------------------------------------------------------

@posix_only
def test_a_folder_locked_by_another_convert_is_refused(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "m.gguf"
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running convert holds it
        proc = modelkit("convert", fixture_path("llama_gqa"), out)
    finally:
        os.close(fd)
    assert_one_line_error(proc, "another modelkit convert is writing into this folder")
    assert not out.exists()
    assert cli_main(["convert", str(fixture_path("llama_gqa")), str(out)]) == 0
    _assert_exported(out)


@posix_only
def test_concurrent_converts_onto_one_file(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    procs = [subprocess.Popen([sys.executable, "-m", "modelkit", "convert", str(fixture_path(n)), str(out),
                               "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT)
             for n in ("llama_gqa", "llama_gqa")]
    results = [(p.wait(timeout=180), p.stderr.read().decode()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        if code:
            assert code == 1 and err.count("\n") == 1 and "another modelkit convert" in err, err
    _assert_exported(out)


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    with pytest.raises(CheckpointError, match="exists .use --force to replace it."):
        export(fixture_path("llama_gqa"), out)
    assert out.read_bytes() == b"old"
    (tmp_path / "other.txt").write_text("kept")  # files beside OUT are not OUT's business
    export(fixture_path("llama_gqa"), out, force=True)
    _assert_exported(out)
    assert (tmp_path / "other.txt").read_text() == "kept"


def test_a_folder_as_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").mkdir()
    with pytest.raises(CheckpointError, match="is a folder; give the name of the file"):
        export(fixture_path("llama_gqa"), tmp_path / "m.gguf", force=True)


def test_leftovers_of_a_killed_convert_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / f".m.gguf.k1ll3d{output.PARTIAL_SUFFIX}"
    stale.write_bytes(b"torn")
    export(fixture_path("llama_gqa"), tmp_path / "m.gguf")
    _assert_exported(tmp_path / "m.gguf")


def test_a_refused_model_leaves_nothing(tmp_path: Path) -> None:
    # refused after writing, when the file is read back: the temporary file and the folder go
    out = tmp_path / "new" / "m.gguf"
    with pytest.raises(CheckpointError, match="sliding window"):
        export(fixture_path("mistral_window"), out)
    assert not (tmp_path / "new").exists()


def test_the_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        export(fixture_path("llama_gqa"), tmp_path / "m.gguf")
    finally:
        os.umask(mask)
    assert (tmp_path / "m.gguf").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


# ---- signals ---------------------------------------------------------------------------------

SLOW_EXPORT = textwrap.dedent("""
    import sys, time
    import modelkit_gguf.export_write as w
    real = w._write_data
    def slow(f, data, alignment):  # a big model's pace, so a signal lands mid-file
        real(f, data, alignment)
        f.flush()
        time.sleep(0.2)
    w._write_data = slow
    from modelkit.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@posix_only
@pytest.mark.parametrize("sig, code, message", [(signal.SIGTERM, 143, "terminated"),
                                                (signal.SIGINT, 130, "interrupted")])
@pytest.mark.parametrize("existing", [False, True])
def test_a_signal_mid_write_removes_the_temporary_file(tmp_path: Path, sig: int, code: int, message: str,
                                                       existing: bool) -> None:
    out = tmp_path / "m.gguf"
    if existing:  # a file from an earlier convert, replaced with --force: kept whole
        export(fixture_path("llama_mqa_tied"), out)
        before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, "convert", str(fixture_path("llama_gqa")), str(out),
                             "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT)
    deadline = time.monotonic() + 120
    while not _leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _leftovers(tmp_path), "the temporary file never appeared"
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.decode() == f"modelkit: error: {message}" + (
        " (SIGTERM)\n" if sig == signal.SIGTERM else "\n"), err
    assert _leftovers(tmp_path) == []
    assert out.read_bytes() == before if existing else not out.exists()


# ---- filesystem errors -----------------------------------------------------------------------

def _limit_file_size(ignore_sigxfsz: bool):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the file needs 160 KB
        if ignore_sigxfsz:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return preexec


@posix_only
@pytest.mark.parametrize("ignore_sigxfsz", [True, False])
def test_a_file_size_limit_is_one_line(tmp_path: Path, ignore_sigxfsz: bool) -> None:
    out = tmp_path / "m.gguf"
    proc = modelkit("convert", fixture_path("llama_gqa"), out, preexec=_limit_file_size(ignore_sigxfsz))
    assert_one_line_error(proc, "m.gguf", "File too large", "ulimit -f")
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_a_full_disk_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                 code: int, where: str) -> None:
    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    target = {"write": (export_write, "_write_data"), "fsync": (output.os, "fsync"),
              "rename": (output.os, "replace")}[where]
    monkeypatch.setattr(*target, fail)
    out = tmp_path / "m.gguf"
    assert cli_main(["convert", str(fixture_path("llama_gqa")), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and os.strerror(code) in err and "cannot write" in err and "m.gguf" in err
    if code == errno.ENOSPC:
        assert "the disk is full" in err
    assert not out.exists() and _leftovers(tmp_path) == []


@posix_only
@pytest.mark.parametrize("layout", ["read-only folder", "inside a read-only folder", "read-only existing file"])
def test_permission_denied_is_one_line(layout: str) -> None:
    prefix = unprivileged()
    with shared_dir() as root:
        src = copy_fixture("llama_gqa", root / "m")
        ro = root / "ro"
        ro.mkdir()
        if layout == "read-only existing file":
            (ro / "m.gguf").write_bytes(b"old")
        make_public(root)
        ro.chmod(0o555)
        out = ro / "sub" / "m.gguf" if layout == "inside a read-only folder" else ro / "m.gguf"
        proc = modelkit("convert", src, out, "--force", prefix=prefix, cwd=root)
        assert_one_line_error(proc, str(ro), "Permission denied")
        assert _leftovers(ro) == []
        if layout == "read-only existing file":
            assert (ro / "m.gguf").read_bytes() == b"old"
