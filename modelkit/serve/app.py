"""The HTTP side: an ASGI app (Starlette) with OpenAI's completions, chat and models endpoints,
``/health`` and ``/metrics``.

Handlers check the request (:mod:`modelkit.serve.protocol`), encode prompts (chat templates in
the sandboxed, bounded renderer), hand choices to the :class:`~modelkit.serve.scheduler.Scheduler`
and turn its items into JSON or server-sent events. Every failure is OpenAI-shaped JSON; none
shows a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import ModelkitError
from ..text.chat_template import apply_chat_template
from ..text.decoding import IncrementalDecoder
from .protocol import ApiError, Limits, Params, parse_chat, parse_completion, parse_json
from .results import ChoiceResult, Prompt, chat_body, chat_logprobs, completion_body, completion_logprobs, usage
from .scheduler import Choice, QueueFull, Scheduler, ShuttingDown

if TYPE_CHECKING:
    from ..model import Model

log = logging.getLogger("modelkit.serve")
MAX_BODY_BYTES = 16 << 20  # as `modelkit run` refuses a larger prompt file
DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks its client is there


@dataclass
class ServeState:
    """What the handlers share: the model, its served name, the scheduler and the caps."""

    model: Model
    name: str
    scheduler: Scheduler
    limits: Limits
    context: int | None  # tokens a sequence may hold, None for no limit
    started: float = field(default_factory=time.time)
    _token_text: dict[int, str] = field(default_factory=dict)

    def token_text(self, token: int) -> str:
        """One token as text (special tokens shown), for logprobs; a token that is part of a
        character (a lone UTF-8 byte) shows as its vocabulary entry, so alternatives stay apart."""
        text = self._token_text.get(token)
        if text is None:
            tok = self.model.tokenizer
            text = tok.decode([token], skip_special_tokens=False)
            if "\ufffd" in text:
                text = tok.id_to_token(token) or text
            if len(self._token_text) < 200_000:
                self._token_text[token] = text
        return text


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


# ---- reading prompts -------------------------------------------------------------------------
def _encode_completion(state: ServeState, prompt: str | list[int]) -> Prompt:
    tok = state.model.tokenizer
    if isinstance(prompt, str):
        return Prompt(tok.encode(prompt), prompt)
    bad = next((i for i in prompt if not 0 <= i < state.model.vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"prompt: token id {bad} is outside the vocabulary (0..{state.model.vocab_size - 1})",
                       param="prompt", code="invalid_value")
    return Prompt(list(prompt), tok.decode(prompt))


def _encode_chat(state: ServeState, messages: list[dict[str, Any]]) -> Prompt:
    tok = state.model.tokenizer
    rendered = apply_chat_template(tok, messages, add_generation_prompt=True)
    hit = state.scheduler.prefix_cache.continuation(rendered)
    if hit is not None:  # the cached conversation's own tokens, then the new text
        ids, text = hit
        ids = ids + tok.encode(rendered[len(text):], add_special_tokens=False)
    else:
        ids = tok.encode(rendered, add_special_tokens=False)
    return Prompt(ids, rendered, rendered)


def _check_length(state: ServeState, prompt: Prompt) -> None:
    if not prompt.ids:
        raise ApiError(400, "prompt: it encodes to no tokens", param="prompt", code="invalid_value")
    if state.context is not None and len(prompt.ids) >= state.context:
        raise ApiError(400, f"the prompt has {len(prompt.ids)} tokens; this model's context is {state.context} "
                            f"tokens, so at most {state.context - 1} can be read before a reply",
                       param="prompt", code="context_length_exceeded")


def _max_new(state: ServeState, params: Params, prompt: Prompt, default: int) -> int:
    n = params.max_tokens if params.max_tokens is not None else default
    if state.context is not None:
        n = min(n, state.context - len(prompt.ids))
    return n


# ---- running a request -----------------------------------------------------------------------
class Run:
    """One request's choices in the scheduler, and the items coming back for them."""

    def __init__(self, state: ServeState, params: Params, prompts: list[Prompt], default_max: int):
        self.state, self.params, self.prompts = state, params, prompts
        self.queue: asyncio.Queue[tuple[int, tuple]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.results: list[ChoiceResult] = []
        self.choices: list[Choice] = []
        for p_index, prompt in enumerate(prompts):
            for j in range(params.n):
                index = len(self.choices)
                sampling = dict(params.sampling)
                if "seed" in sampling and j:  # choices of one seeded request differ, reproducibly
                    sampling["seed"] += j
                options = dict(sampling, max_new_tokens=_max_new(state, params, prompt, default_max),
                               top_logprobs=params.logprobs or 0)
                sink = (lambda i: lambda item: loop.call_soon_threadsafe(self.queue.put_nowait, (i, item)))(index)
                echo_k = (params.logprobs or 0) if params.echo else None
                self.choices.append(Choice(prompt.ids, options, sink, params.stop, echo_k, prompt.rendered))
                self.results.append(ChoiceResult(index, p_index))
        self.open = len(self.choices)

    def submit(self) -> None:
        try:
            self.state.scheduler.submit(self.choices)
        except QueueFull as exc:
            raise ApiError(429, str(exc), type="rate_limit_exceeded", code="queue_full") from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), type="server_error", code="shutting_down") from None

    def cancel(self) -> None:
        for choice in self.choices:
            choice.cancel()

    def take(self, index: int, item: tuple) -> None:
        """Record one scheduler item for choice ``index``."""
        r = self.results[index]
        kind = item[0]
        if kind == "prompt":
            info, r.cached = item[1], item[2]
            if info is not None:  # echo: the prompt's tokens come first
                self._echo(r, info)
        elif kind == "token":
            r.add(item[1], item[2], item[3], item[4] if self.params.logprobs is not None else None)
        elif kind == "end":
            r.finish_reason, r.done = item[1], True
            self.open -= 1
        elif kind == "error":
            r.error, r.done = item[1], True
            self.open -= 1

    def _echo(self, r: ChoiceResult, info: list) -> None:
        ids = self.prompts[r.prompt].ids
        decoder = IncrementalDecoder(self.state.model.tokenizer)
        for k, (token, entry) in enumerate(zip(ids, info)):
            text = decoder.add(token) + (decoder.flush() if k == len(ids) - 1 else "")
            if entry is None:
                r.add(text, token, None, None)
            else:
                r.add(text, token, entry.logprob, entry.top if self.params.logprobs is not None else None)

    async def items(self, request: Request) -> AsyncIterator[tuple[int, tuple]]:
        """Items until every choice ended; cancels the choices when the client is gone."""
        try:
            while self.open:
                try:
                    index, item = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.cancel()
                        return
                    continue
                self.take(index, item)
                yield index, item
        finally:
            if self.open:
                self.cancel()


async def _prepare(state: ServeState, request: Request, chat: bool) -> tuple[Params, list[Prompt]]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MB", code="too_large")
    body = parse_json(raw)
    params = (parse_chat if chat else parse_completion)(body, state.limits)
    if params.model != state.name:
        raise ApiError(404, f"the model '{params.model}' does not exist; this server serves '{state.name}'",
                       param="model", code="model_not_found")
    try:
        if chat:
            prompts = [await run_in_threadpool(_encode_chat, state, params.messages)]
        else:
            prompts = [await run_in_threadpool(_encode_completion, state, p) for p in params.prompts]
    except ModelkitError as exc:  # a template or tokenizer failure is about this request's text
        raise ApiError(400, str(exc).splitlines()[0], code="invalid_prompt") from None
    for prompt in prompts:
        _check_length(state, prompt)
    return params, prompts


def _failed(run: Run) -> ApiError | None:
    errors = [r.error for r in run.results if r.error]
    return ApiError(500, errors[0], type="server_error", code="generation_failed") if errors else None


async def completions(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    params, prompts = await _prepare(state, request, chat=False)
    run = Run(state, params, prompts, default_max=16)
    run.submit()
    rid = f"cmpl-{uuid.uuid4().hex[:24]}"
    if params.stream:
        return _sse(_completion_chunks(run, request, rid))
    async for _ in run.items(request):
        pass
    failure = _failed(run)
    if failure:
        return error_response(failure)
    return JSONResponse(completion_body(rid, state.name, prompts, run.results, echo=params.echo,
                                        logprobs=params.logprobs is not None, token_text=state.token_text))


async def chat_completions(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    params, prompts = await _prepare(state, request, chat=True)
    run = Run(state, params, prompts, default_max=state.limits.max_tokens)
    run.submit()
    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if params.stream:
        return _sse(_chat_chunks(run, request, rid))
    async for _ in run.items(request):
        pass
    failure = _failed(run)
    if failure:
        return error_response(failure)
    return JSONResponse(chat_body(rid, state.name, prompts, run.results, logprobs=params.logprobs is not None,
                                  token_text=state.token_text))


# ---- streaming -------------------------------------------------------------------------------
def _sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _chunk(run: Run, rid: str, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": run.state.name, "choices": choices}


async def _completion_chunks(run: Run, request: Request, rid: str) -> AsyncIterator[dict[str, Any]]:
    kind, want = "text_completion", run.params.logprobs is not None
    async for index, item in run.items(request):
        r = run.results[index]
        if item[0] == "prompt" and item[1] is not None:
            start = 0
        elif item[0] == "token":
            start = len(r.tokens) - 1
        elif item[0] == "end":
            yield _chunk(run, rid, kind, [{"index": index, "text": "", "logprobs": None,
                                           "finish_reason": r.finish_reason}])
            continue
        elif item[0] == "error":
            yield {"error": ApiError(500, r.error, type="server_error", code="generation_failed").body()["error"]}
            continue
        else:
            continue
        text = "".join(r.text[len(r.text) - (len(r.tokens) - start):])
        if text or want:
            yield _chunk(run, rid, kind, [{"index": index, "text": text, "finish_reason": None,
                                           "logprobs": completion_logprobs(r, run.state.token_text, start)
                                           if want else None}])
    if run.params.include_usage:
        yield dict(_chunk(run, rid, kind, []), usage=usage(run.prompts, run.results, run.params.echo))


async def _chat_chunks(run: Run, request: Request, rid: str) -> AsyncIterator[dict[str, Any]]:
    kind, want = "chat.completion.chunk", run.params.logprobs is not None
    for r in run.results:
        yield _chunk(run, rid, kind, [{"index": r.index, "delta": {"role": "assistant", "content": ""},
                                       "logprobs": None, "finish_reason": None}])
    async for index, item in run.items(request):
        r = run.results[index]
        if item[0] == "token" and (item[1] or want):
            logprobs = chat_logprobs(r, run.state.token_text, len(r.tokens) - 1) if want else None
            yield _chunk(run, rid, kind, [{"index": index, "delta": {"content": item[1]}, "logprobs": logprobs,
                                           "finish_reason": None}])
        elif item[0] == "end":
            yield _chunk(run, rid, kind, [{"index": index, "delta": {}, "logprobs": None,
                                           "finish_reason": r.finish_reason}])
        elif item[0] == "error":
            yield {"error": ApiError(500, r.error, type="server_error", code="generation_failed").body()["error"]}
    if run.params.include_usage:
        yield dict(_chunk(run, rid, kind, []), usage=usage(run.prompts, run.results, False))


# ---- the app ---------------------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)  # type: ignore[arg-type]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    kind = "not_found" if status == 404 else "method_not_allowed" if status == 405 else "http_error"
    messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"{request.method} is not allowed on {request.url.path}"}
    message = messages.get(status, str(getattr(exc, "detail", "")))
    return error_response(ApiError(status, message, code=kind))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(ApiError(500, f"internal error ({type(exc).__name__}); the server keeps running",
                                   type="server_error", code="internal_error"))


def build_app(state: ServeState) -> Starlette:
    """The ASGI app serving ``state``; its scheduler starts and stops with the app."""
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(state.scheduler.stop, 0.0)

    from . import info

    routes = [Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]), *info.ROUTES]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected})
    app.state.serve = state
    return app
