"""Reading config.json and resolving it into the values a mapping declares."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import ConfigError


class Config(dict):
    """Resolved config values by canonical name, readable as keys or attributes.

    ``raw`` keeps config.json as it was read, for fields no mapping names.
    """

    def __init__(self, values: dict[str, Any], raw: dict[str, Any] | None = None):
        super().__init__(values)
        self.raw = raw or {}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


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
    """Read a config.json; a missing or malformed file is a :class:`ConfigError` naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: config.json not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text, parse_constant=_reject_constant, object_hook=_decode_special_float)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data
