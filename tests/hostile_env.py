"""Hostile surroundings for CLI subprocesses: closed or full standard streams, files the
process may not read or folders it may not write, a file-size limit.

Permissions do not stop root, and the test suite may run as root (in a container): then the
subprocess runs as the `nobody` user (through setpriv), in a folder that user can reach, so a
chmod bites.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import ROOT, cli_env

NOBODY = 65534


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply ([] when they already do), or skip."""
    if not hasattr(os, "geteuid"):
        pytest.skip("file permissions as POSIX has them are needed")
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, without setpriv to drop privileges")
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import modelkit, numpy"], capture_output=True,
                           cwd="/", timeout=120)
    if probe.returncode != 0:
        pytest.skip("running as root, and the unprivileged user cannot import modelkit here")
    return prefix


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A fresh folder every user can enter and write (pytest's own tmp folders are private)."""
    path = Path(tempfile.mkdtemp(prefix="modelkit-hostile-"))
    try:
        path.chmod(0o777)
        yield path
    finally:
        for p in path.rglob("*"):  # make every leftover removable again
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o777)
        shutil.rmtree(path, ignore_errors=True)


def make_public(path: Path) -> None:
    """Everyone may read ``path`` (and enter it and everything below, for a folder)."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            p.chmod(0o777 if p.is_dir() else 0o666)


def modelkit(*args: Any, cwd: Path | None = None, preexec: Callable[[], None] | None = None,
             prefix: list[str] | None = None, timeout: float = 120, env: dict[str, str] | None = None,
             **kw: Any) -> subprocess.CompletedProcess:
    """``python -m modelkit ARGS`` with bytes output (stdout/stderr captured unless given);
    ``prefix`` runs it through another command (:func:`unprivileged`)."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([*(prefix or []), sys.executable, "-m", "modelkit", *map(str, args)], cwd=cwd or ROOT,
                          env=env or cli_env(), preexec_fn=preexec, timeout=timeout, **kw)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """The process failed with ``code`` and exactly one ``modelkit: error:`` line holding every needle."""
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelkit: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]
