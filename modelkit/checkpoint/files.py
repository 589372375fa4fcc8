"""Reading a checkpoint folder's small side files (JSON settings, templates), bounded.

Only regular files are read (a FIFO or a device named like a side file is refused, not waited
on) and never more than :data:`MAX_SIDE_FILE_BYTES`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelkitError, TokenizerError

# far above any real side file (a tokenizer_config.json with a long chat template is ~100 KB)
MAX_SIDE_FILE_BYTES = 16 << 20


def read_text_file(path: Path, limit: int, error: type[ModelkitError], what: str = "file") -> str:
    """A regular file's UTF-8 text, at most ``limit`` bytes; anything else (a FIFO or a device,
    a larger file, unreadable bytes, a missing file) is one ``error`` line naming ``path``."""
    if path.exists() and not path.is_file():
        raise error(f"{path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise error(f"{path}: larger than {limit} bytes; not a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None


def read_side_text(path: Path) -> str | None:
    """A side file's UTF-8 text, or None when it does not exist; errors are TokenizerErrors."""
    if not path.exists():
        return None
    return read_text_file(path, MAX_SIDE_FILE_BYTES, TokenizerError, "side file")


def read_json_if_present(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, {} when absent; a malformed file is a TokenizerError."""
    text = read_side_text(path)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise TokenizerError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return data
