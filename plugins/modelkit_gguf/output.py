"""`modelkit convert`'s output, a folder or one ``.gguf`` file, written safely.

- One writer at a time: the folder is locked (``flock``) while a convert writes into it, so a
  second convert into the same folder fails at once instead of mixing files; the lock goes
  with the process, however it ends.
- Every file is written to a temporary file of its own in the folder (``.NAME.XXXX.modelkit-partial``,
  created exclusively, so two writers never share one), flushed to disk, and renamed over its
  final name only once every file is complete: a folder never holds a half-written
  model.safetensors under its real name. Temporary files are removed on any error,
  Ctrl-C or SIGTERM; those a killed process left behind are removed by the next convert.
- Filesystem errors (a read-only folder, a full disk, a file-size limit, permission denied)
  are one :class:`CheckpointError` line naming the file.
- A single output file (``OUT.gguf``, :class:`OutputFile`) is the same with its folder: the
  folder holding it is locked, its temporary file lies beside it, and it replaces an existing
  file (``--force``) only once complete.
- Never onto the source (:func:`refuse_overlap`): an output that is, holds or lies inside the
  checkpoint being converted is refused before anything is written.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from modelkit import CheckpointError, WeightSource

PARTIAL_SUFFIX = ".modelkit-partial"
# what an errno means for someone writing a model folder
_ADVICE = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "larger than the file-size limit (ulimit -f)",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EDQUOT: "the disk quota is used up",
}


def write_error(path: Path, exc: OSError, doing: str = "cannot write") -> CheckpointError:
    """One line for an OSError met while writing ``path``."""
    reason = exc.strerror or type(exc).__name__
    advice = _ADVICE.get(exc.errno or 0)
    return CheckpointError(f"{path}: {doing} ({reason}{': ' + advice if advice else ''})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputFolder:
    """A folder being filled with files, all published at once by :meth:`publish`.

    Use as a context manager: entering creates (when needed), locks and checks the folder;
    leaving removes every temporary file not yet published, and the folder itself when this
    writer created it and left it empty.
    """

    def __init__(self, path: Path, force: bool = False):
        self.path = path
        self.force = force
        self._created = False
        self._owner = False  # holds the folder (locked, or no locks on this platform)
        self._lock_fd: int | None = None
        self._pending: list[tuple[Path, Path]] = []  # (temporary file, final file)
        self._mode = 0o666 & ~_umask()  # what a plain open() would have given the files

    def __enter__(self) -> "OutputFolder":
        try:
            self._prepare()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cleanup()

    def _prepare(self) -> None:
        out = self.path
        try:
            if out.exists() and not out.is_dir():
                raise CheckpointError(f"{out}: exists and is not a folder")
            if not out.exists():
                out.mkdir(parents=True)
                self._created = True
        except FileExistsError:  # another process made it just now: fine, the lock decides
            pass
        except OSError as exc:
            raise write_error(out, exc, "cannot create the output folder") from None
        if self._lock():
            self._remove_stale()
        self._owner = True
        self._check_contents()

    def _check_contents(self) -> None:
        """Refuse a folder with files in it, unless ``force``."""
        out = self.path
        try:
            busy = any(out.iterdir())
        except OSError as exc:
            raise write_error(out, exc, "cannot read the output folder") from None
        if busy and not self.force:
            raise CheckpointError(f"{out}: folder is not empty (use --force to overwrite its files)")

    def _remove_stale(self) -> None:
        # temporary files a killed convert left: no writer can own them while we hold the lock
        for stale in self.path.glob(f".*{PARTIAL_SUFFIX}"):
            try:
                stale.unlink()
            except OSError as exc:
                raise write_error(stale, exc, "cannot remove a leftover temporary file") from None

    def _lock(self) -> bool:
        """Lock the folder for this writer; False where the platform has no locks."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the temporary files are still unique
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise write_error(self.path, exc, "cannot open the output folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(f"{self.path}: another modelkit convert is writing into this "
                                      f"folder; wait for it to finish, or choose another folder") from None
            raise write_error(self.path, exc, "cannot lock the output folder") from None
        self._lock_fd = fd
        return True

    def _temporary(self, name: str) -> tuple[int, Path]:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX, dir=self.path)
        except OSError as exc:
            raise write_error(self.path / name, exc) from None
        path = Path(tmp)
        self._pending.append((path, self.path / name))
        try:
            os.fchmod(fd, self._mode)  # mkstemp makes the file private (0600)
        except (OSError, AttributeError):
            pass
        return fd, path

    def write(self, name: str, fill: Callable[[BinaryIO], Any]) -> Any:
        """Write file ``name`` through ``fill(f)`` into a temporary file, flushed to disk;
        returns what ``fill`` returns. The file appears under ``name`` at :meth:`publish`."""
        fd, tmp = self._temporary(name)
        try:
            with os.fdopen(fd, "wb") as f:
                result = fill(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise write_error(self.path / name, exc) from None
        return result

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Write ``data`` as indented UTF-8 JSON to file ``name`` (published later)."""
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        self.write(name, lambda f: f.write(text.encode("utf-8")))

    def write_path(self, name: str, fill: Callable[[Path], Any]) -> Path:
        """Write file ``name`` through ``fill(path)``, a writer that opens the path itself, then
        flush it to disk; returns the temporary file, to be read back before :meth:`publish`.
        Only filesystem errors are translated: ``fill``'s own errors pass through."""
        fd, tmp = self._temporary(name)
        os.close(fd)
        try:
            fill(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise write_error(self.path / name, exc) from None
        return tmp

    def write_by_path(self, name: str, save: Callable[[str], Any]) -> None:
        """Write file ``name`` with a writer that takes a path (tokenizers' ``save``)."""
        fd, tmp = self._temporary(name)
        os.close(fd)
        try:
            save(str(tmp))
        except OSError as exc:
            raise write_error(self.path / name, exc) from None
        except Exception as exc:  # the tokenizers library raises a bare Exception
            raise CheckpointError(f"{self.path / name}: cannot write ({str(exc).splitlines()[0][:200]})") from None

    def publish(self) -> None:
        """Rename every temporary file over its final name (each rename is atomic)."""
        while self._pending:
            tmp, final = self._pending[0]
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise write_error(final, exc) from None
            self._pending.pop(0)

    def _cleanup(self) -> None:
        for tmp, _ in self._pending:
            try:
                tmp.unlink()
            except OSError:
                pass
        self._pending.clear()
        if self._created and self._owner:
            try:
                self.path.rmdir()  # only when still empty: a failed first convert leaves nothing
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


class OutputFile(OutputFolder):
    """One file ``path`` written safely: its folder (created when needed) is locked as an
    :class:`OutputFolder` is, the file is written beside it through :meth:`write_path` under
    its own name and renamed over ``path`` at :meth:`publish`. An existing file is replaced
    only with ``force``; other files in the folder are left alone."""

    def __init__(self, path: Path, force: bool = False):
        super().__init__(path.parent, force)
        self.file = path

    def _check_contents(self) -> None:
        file = self.file
        if file.is_dir():
            raise CheckpointError(f"{file}: is a folder; give the name of the file to write")
        if (file.exists() or file.is_symlink()) and not self.force:
            raise CheckpointError(f"{file}: exists (use --force to replace it)")


def refuse_overlap(source: WeightSource, out: Path, what: str = "folder") -> None:
    """Refuse an output (a ``folder``, or a ``file``) that is the source, holds it, or lies
    inside it (also through symbolic links): writing there could overwrite the very files
    being read."""
    try:
        target = out.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (before Python 3.13)
        raise CheckpointError(f"{out}: cannot resolve the output path ({exc})") from None
    given = Path(source.path).resolve()
    files = {given} | {Path(info.file).resolve() for info in source.tensor_infos().values()}
    if given.is_dir():
        files |= {p.resolve() for p in given.iterdir()}
    if given == target:
        raise CheckpointError(f"{out}: is the checkpoint being converted; choose a new {what}")
    for path in sorted(files):
        if path == target or path.is_relative_to(target):
            noun = "is a file of" if path == target and what == "file" else "holds"
            raise CheckpointError(f"{out}: {noun} the checkpoint being converted ({path}); choose a new "
                                  f"{what}, outside the source")
    if given.is_dir() and target.is_relative_to(given):
        raise CheckpointError(f"{out}: inside the checkpoint folder being converted ({given}); choose a "
                              f"{what} outside it")
