"""Reading OpenAI-style request bodies: every field checked, unknown ones refused, errors shaped
as OpenAI's (``{"error": {"message", "type", "param", "code"}}``).

Fields modelkit does not implement are refused unless they hold their neutral value
(``presence_penalty: 0``, ``logit_bias: {}``, ...), so a request never silently means less than
it says. ``top_k``, ``min_p`` and ``repetition_penalty`` are accepted as extensions (as other
OpenAI-compatible servers do).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import GenerationError
from ..generation.options import check_option

MAX_LOGPROBS = 20  # alternatives per position at most (OpenAI allows 20 in chat, 5 in completions)


class ApiError(Exception):
    """An error answered as OpenAI-shaped JSON with HTTP ``status``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """The server's caps (flags): tokens per choice, choices per request."""

    max_tokens: int
    max_n: int


@dataclass
class Params:
    """A checked request: what to read (``prompts`` or ``messages``) and how to generate."""

    model: str
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # alternatives per token, None when no logprobs are asked for
    echo: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)
    prompts: list[str | list[int]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)


def _bad(param: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, f"{param}: {message}", param=param, code="invalid_value")


def _int(name: str, v: Any, lo: int, hi: int, why: str = "") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise _bad(name, f"must be an integer, got {json.dumps(v)}")
    if not lo <= v <= hi:
        raise _bad(name, f"must be between {lo} and {hi}{why}, got {int(v)}")
    return int(v)


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, f"must be a number, got {json.dumps(v)}")
    return float(v)


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _bad(name, f"must be true or false, got {json.dumps(v)}")
    return v


def _neutral(value: Any) -> Callable[[str, Any], None]:
    """A field accepted only at its neutral value."""
    def check(name: str, v: Any) -> None:
        if v is not None and v != value:
            raise _bad(name, f"is not supported by this server (only {json.dumps(value)})")
    return check


def _stop(v: Any) -> list[str]:
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
        raise _bad("stop", "must be a non-empty string or a list of at most 16 of them")
    return stops


def _sampling(name: str, v: Any) -> Any:
    value = _int(name, v, 0, 2**63 - 1) if name in ("seed", "top_k") else _number(name, v)
    try:
        check_option(name, value)
    except GenerationError as exc:
        raise _bad(name, str(exc).removeprefix(f"{name} ")) from None
    return value


COMMON = {"model", "stream", "stream_options", "max_tokens", "n", "stop", "temperature", "top_p", "top_k",
          "min_p", "repetition_penalty", "seed", "user", "presence_penalty", "frequency_penalty", "logit_bias"}
COMPLETION_FIELDS = COMMON | {"prompt", "logprobs", "echo", "best_of", "suffix"}
CHAT_FIELDS = COMMON | {"messages", "logprobs", "top_logprobs", "max_completion_tokens", "response_format",
                        "tools", "tool_choice", "parallel_tool_calls"}
NEUTRAL = {"presence_penalty": _neutral(0), "frequency_penalty": _neutral(0), "logit_bias": _neutral({}),
           "suffix": _neutral(None), "tools": _neutral([]), "tool_choice": _neutral("none"),
           "response_format": _neutral({"type": "text"}), "parallel_tool_calls": lambda n, v: None}


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (400 otherwise)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def parse_common(body: dict[str, Any], allowed: set[str], limits: Limits) -> Params:
    """The fields completions and chat share."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0],
                       code="unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: give the model's name (see GET /v1/models)", param="model",
                       code="missing_required_parameter" if model is None else "invalid_value")
    p = Params(model=model)
    p.stream = _bool("stream", body["stream"]) if body.get("stream") is not None else False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _bad("stream_options", 'must be {"include_usage": true|false}')
        p.include_usage = _bool("stream_options.include_usage", options.get("include_usage", False))
    if body.get("n") is not None:
        p.n = _int("n", body["n"], 1, limits.max_n, " (the server's --max-n)")
    p.stop = _stop(body.get("stop"))
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed"):
        if body.get(name) is not None:
            p.sampling[name] = _sampling(name, body[name])
    for name, check in NEUTRAL.items():
        if name in body:
            check(name, body[name])
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("user", "must be a string")
    return p


def parse_completion(body: dict[str, Any], limits: Limits) -> Params:
    """A /v1/completions request: ``prompt`` is a string, a list of strings, a list of token
    ids or a list of such lists; ``max_tokens`` may be 0 with ``echo`` (prompt log-probabilities)."""
    p = parse_common(body, COMPLETION_FIELDS, limits)
    p.echo = _bool("echo", body["echo"]) if body.get("echo") is not None else False
    if body.get("max_tokens") is not None:
        p.max_tokens = _int("max_tokens", body["max_tokens"], 0, limits.max_tokens, " (the server's --max-tokens)")
    if body.get("logprobs") is not None:
        p.logprobs = _int("logprobs", body["logprobs"], 0, MAX_LOGPROBS)
    best_of = body.get("best_of")
    if best_of is not None and best_of != p.n:
        raise _bad("best_of", "is not supported by this server (only equal to n)")
    p.prompts = _prompts(body.get("prompt"))
    return p


def _prompts(v: Any) -> list[str | list[int]]:
    def ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)

    if isinstance(v, str):
        return [v]
    if ids(v):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, str) or ids(x) for x in v):
        if len(v) > 64:
            raise _bad("prompt", "at most 64 prompts per request")
        return list(v)
    raise _bad("prompt", "must be a string, a list of strings, a list of token ids or a list of such lists")


def parse_chat(body: dict[str, Any], limits: Limits) -> Params:
    """A /v1/chat/completions request: ``messages`` with string (or text-part) contents."""
    p = parse_common(body, CHAT_FIELDS, limits)
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            p.max_tokens = _int(name, body[name], 1, limits.max_tokens, " (the server's --max-tokens)")
            break
    if body.get("logprobs") is not None and _bool("logprobs", body["logprobs"]):
        p.logprobs = 0
        if body.get("top_logprobs") is not None:
            p.logprobs = _int("top_logprobs", body["top_logprobs"], 0, MAX_LOGPROBS)
    elif body.get("top_logprobs") is not None:
        raise _bad("top_logprobs", "needs logprobs: true")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "must be a non-empty list of {\"role\", \"content\"} objects")
    p.messages = [_message(i, m) for i, m in enumerate(messages)]
    return p


def _message(i: int, m: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise _bad(where, "must be an object with a string role")
    extra = set(m) - {"role", "content", "name"}
    if extra:
        raise _bad(where, f"unsupported field(s): {', '.join(sorted(extra))}")
    content = m.get("content")
    if isinstance(content, list):  # text parts: [{"type": "text", "text": ...}]
        if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                   for c in content):
            raise _bad(f"{where}.content", "only text parts are supported")
        content = "".join(c["text"] for c in content)
    if not isinstance(content, str):
        raise _bad(f"{where}.content", "must be a string or a list of text parts")
    out = {"role": m["role"], "content": content}
    if isinstance(m.get("name"), str):
        out["name"] = m["name"]
    return out
