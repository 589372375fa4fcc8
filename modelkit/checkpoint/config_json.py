"""Reading a checkpoint's config.json: strict JSON, non-finite floats as transformers writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .files import MAX_SIDE_FILE_BYTES, read_regular_file


def _decode_special_float(obj: dict[str, Any]) -> Any:
    # transformers 5 writes non-finite floats as {"__float__": "Infinity"}; called by the JSON
    # parser for every object, innermost first, so deep nesting needs no recursion of ours
    if len(obj) == 1 and isinstance(obj.get("__float__"), str):
        try:
            return float(obj["__float__"])
        except ValueError:
            return obj
    return obj


def _reject_constant(name: str) -> float:
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[name]


def read_config_json(path: Path) -> dict[str, Any]:
    """Read a config.json (a regular file of at most MAX_SIDE_FILE_BYTES); a missing,
    unreadable or malformed file is a :class:`ConfigError` naming it."""
    if not path.exists():
        raise ConfigError(f"{path}: config.json not found")
    raw = read_regular_file(path, MAX_SIDE_FILE_BYTES, ConfigError, "config.json")
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant, object_hook=_decode_special_float)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data
