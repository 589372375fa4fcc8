"""Reading a checkpoint folder's small side files (JSON settings, templates), bounded.

Only regular files are read (a FIFO or a device named like a side file is refused, not waited
on) and never more than :data:`MAX_SIDE_FILE_BYTES`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TokenizerError

# far above any real side file (a tokenizer_config.json with a long chat template is ~100 KB)
MAX_SIDE_FILE_BYTES = 16 << 20


def read_side_text(path: Path) -> str | None:
    """A side file's UTF-8 text, or None when it does not exist; errors are TokenizerErrors."""
    if not path.exists():
        return None
    if not path.is_file():
        raise TokenizerError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIDE_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_SIDE_FILE_BYTES:
        raise TokenizerError(f"{path}: larger than {MAX_SIDE_FILE_BYTES} bytes; refusing it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: not UTF-8 text") from None


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
