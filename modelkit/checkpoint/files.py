"""Reading a checkpoint folder's small side files (JSON settings, templates), bounded.

Only regular files are read (a FIFO or a device named like a side file is refused, not waited
on) and never more than :data:`MAX_SIDE_FILE_BYTES`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import ModelkitError, TokenizerError

# far above any real side file (a tokenizer_config.json with a long chat template is ~100 KB)
MAX_SIDE_FILE_BYTES = 16 << 20


def read_regular_file(path: Path, limit: int, error: type[ModelkitError], what: str = "file") -> bytes:
    """A regular file's bytes, at most ``limit`` of them; anything else (a FIFO, a device, a
    folder, a larger file, a missing or unreadable file) is one ``error`` line naming ``path``.

    The file is opened without blocking and checked on the open descriptor, so a FIFO is
    refused, not waited on, even one that appears after a check by name.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path}: is a folder, not a {what}")
        if not stat.S_ISREG(mode):
            raise error(f"{path}: not a regular file (a FIFO or a device?); a {what} must be one")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise error(f"{path}: larger than {_size(limit)}; too large for a {what}")
    return data


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def read_text_file(path: Path, limit: int, error: type[ModelkitError], what: str = "file") -> str:
    """A regular file's UTF-8 text, at most ``limit`` bytes (see :func:`read_regular_file`);
    bytes that are not UTF-8 are an ``error`` too."""
    data = read_regular_file(path, limit, error, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None


def read_side_text(path: Path, error: type[ModelkitError] = TokenizerError) -> str | None:
    """A side file's UTF-8 text, or None when it does not exist; other problems are ``error``s."""
    if not path.exists() and not path.is_symlink():
        return None
    return read_text_file(path, MAX_SIDE_FILE_BYTES, error, "side file")


def read_json_if_present(path: Path, error: type[ModelkitError] = TokenizerError) -> dict[str, Any]:
    """A JSON object from ``path``, {} when absent; an unreadable or malformed file is an
    ``error`` (a TokenizerError unless told) naming it."""
    text = read_side_text(path, error)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise error(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data
