"""What one request's choices produced, gathered from the scheduler's items, and its OpenAI JSON
(whole responses, streamed chunks, usage, logprobs in the completions and chat shapes)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

TokenText = Callable[[int], str]


@dataclass
class Prompt:
    """One prompt of a request, read: its ids, its text (for ``echo``) and, for a chat, the
    rendered conversation (the prefix cache's text key)."""

    ids: list[int]
    text: str
    rendered: str | None = None


@dataclass
class ChoiceResult:
    """Everything a choice produced so far."""

    index: int
    prompt: int  # which prompt of the request
    text: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tops: list[tuple[tuple[int, float], ...] | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    chars: int = 0
    cached: int = 0
    finish_reason: str | None = None
    done: bool = False
    error: str | None = None

    def add(self, text: str, token: int | None, logprob: float | None, top: Any) -> None:
        if token is not None:
            self.tokens.append(token)
            self.logprobs.append(logprob)
            self.tops.append(top)
            self.offsets.append(self.chars)
        self.text.append(text)
        self.chars += len(text)


def completion_logprobs(r: ChoiceResult, token_text: TokenText, start: int = 0) -> dict[str, Any]:
    """The completions ``logprobs`` object for tokens ``start`` and after."""
    sl = slice(start, None)
    return {"tokens": [token_text(t) for t in r.tokens[sl]],
            "token_logprobs": r.logprobs[sl],
            "top_logprobs": [None if top is None else _by_text(top, token_text) for top in r.tops[sl]],
            "text_offset": r.offsets[sl]}


def _by_text(top: tuple[tuple[int, float], ...], token_text: TokenText) -> dict[str, float]:
    """Alternatives keyed by their text; tokens with the same text keep the best one's value."""
    out: dict[str, float] = {}
    for i, lp in top:
        out.setdefault(token_text(i), lp)
    return out


def chat_logprobs(r: ChoiceResult, token_text: TokenText, start: int = 0) -> dict[str, Any]:
    """The chat ``logprobs`` object (``content`` entries) for tokens ``start`` and after."""
    def entry(token: int, lp: float, top: Any) -> dict[str, Any]:
        s = token_text(token)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")),
                "top_logprobs": [{"token": token_text(i), "logprob": v, "bytes": list(token_text(i).encode("utf-8"))}
                                 for i, v in (top or ())]}

    return {"content": [entry(t, lp, top) for t, lp, top in
                        zip(r.tokens[start:], r.logprobs[start:], r.tops[start:])], "refusal": None}


def usage(prompts: list[Prompt], results: list[ChoiceResult], echo: bool) -> dict[str, Any]:
    """Token counts: each prompt once (however many choices read it), every choice's tokens."""
    prompt_tokens = sum(len(p.ids) for p in prompts)
    skip = [len(prompts[r.prompt].ids) if echo else 0 for r in results]
    completion = sum(max(len(r.tokens) - s, 0) for r, s in zip(results, skip))
    cached = sum(r.cached for r in results if r.index == _first_choice(results, r.prompt))
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": cached}}


def _first_choice(results: list[ChoiceResult], prompt: int) -> int:
    return min(r.index for r in results if r.prompt == prompt)


def envelope(request_id: str, model: str, kind: str) -> dict[str, Any]:
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model}


def completion_body(request_id: str, model: str, prompts: list[Prompt], results: list[ChoiceResult],
                    *, echo: bool, logprobs: bool, token_text: TokenText) -> dict[str, Any]:
    """A whole /v1/completions response."""
    body = envelope(request_id, model, "text_completion")
    body["choices"] = [{"index": r.index, "text": "".join(r.text),
                        "logprobs": completion_logprobs(r, token_text) if logprobs else None,
                        "finish_reason": r.finish_reason} for r in results]
    body["usage"] = usage(prompts, results, echo)
    return body


def chat_body(request_id: str, model: str, prompts: list[Prompt], results: list[ChoiceResult],
              *, logprobs: bool, token_text: TokenText) -> dict[str, Any]:
    """A whole /v1/chat/completions response."""
    body = envelope(request_id, model, "chat.completion")
    body["choices"] = [{"index": r.index, "message": {"role": "assistant", "content": "".join(r.text)},
                        "logprobs": chat_logprobs(r, token_text) if logprobs else None,
                        "finish_reason": r.finish_reason} for r in results]
    body["usage"] = usage(prompts, results, False)
    return body
