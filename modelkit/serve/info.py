"""The endpoints that describe the server rather than generate: the model list, health and
metrics, and the tokenizer (``/tokenize``, ``/detokenize``, ``/tokenizer_info``, in the shape
other OpenAI-compatible servers give them, which evaluation harnesses use as a remote
tokenizer)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import ModelkitError
from .protocol import ApiError, parse_json

if TYPE_CHECKING:
    from .app import ServeState


def _model_card(state: ServeState) -> dict[str, Any]:
    return {"id": state.name, "object": "model", "created": int(state.started), "owned_by": "modelkit"}


async def list_models(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    return JSONResponse({"object": "list", "data": [_model_card(state)]})


async def get_model(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    if request.path_params["name"] != state.name:
        raise ApiError(404, f"the model '{request.path_params['name']}' does not exist", param="model",
                       code="model_not_found")
    return JSONResponse(_model_card(state))


async def health(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    return JSONResponse({"status": "ok", "model": state.name, "context": state.context,
                         "uptime_s": round(time.time() - state.started, 1), **state.scheduler.stats()})


async def metrics(request: Request) -> Response:
    """The same counts in Prometheus' text format."""
    stats = request.app.state.serve.scheduler.stats()
    flat = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
    flat.update({f"prefix_cache_{k}": v for k, v in stats["prefix_cache"].items()})
    lines = [f"modelkit_{k} {v}" for k, v in flat.items()]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def tokenize(request: Request) -> Response:
    """``{"prompt": text, "add_special_tokens": bool}`` -> ``{"tokens", "count", "max_model_len"}``."""
    state: ServeState = request.app.state.serve
    body = parse_json(await request.body())
    unknown = sorted(set(body) - {"model", "prompt", "add_special_tokens"})
    if unknown:
        raise ApiError(400, f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0],
                       code="unknown_parameter")
    text, special = body.get("prompt"), body.get("add_special_tokens", True)
    if not isinstance(text, str) or not isinstance(special, bool):
        raise ApiError(400, "prompt must be a string and add_special_tokens true or false", param="prompt",
                       code="invalid_value")
    try:
        ids = await run_in_threadpool(state.model.tokenizer.encode, text, special)
    except ModelkitError as exc:
        raise ApiError(400, str(exc).splitlines()[0], param="prompt", code="invalid_prompt") from None
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": state.context})


async def detokenize(request: Request) -> Response:
    """``{"tokens": [ids]}`` -> ``{"prompt": text}``."""
    state: ServeState = request.app.state.serve
    body = parse_json(await request.body())
    ids = body.get("tokens")
    vocab = state.model.vocab_size
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab
                                            for i in ids):
        raise ApiError(400, f"tokens must be a list of ids in 0..{vocab - 1}", param="tokens", code="invalid_value")
    return JSONResponse({"prompt": state.model.tokenizer.decode(ids)})


async def tokenizer_info(request: Request) -> Response:
    """The special tokens and the chat template."""
    state: ServeState = request.app.state.serve
    tok = state.model.tokenizer
    special = tok.special_tokens()
    return JSONResponse({"eos_token": special.get("eos_token"), "bos_token": special.get("bos_token"),
                         "pad_token": special.get("pad_token"), "chat_template": tok.chat_template,
                         "model_max_length": state.context})


ROUTES = [Route("/v1/models", list_models, methods=["GET"]),
          Route("/v1/models/{name:path}", get_model, methods=["GET"]),
          Route("/health", health, methods=["GET"]),
          Route("/metrics", metrics, methods=["GET"]),
          Route("/tokenize", tokenize, methods=["POST"]),
          Route("/detokenize", detokenize, methods=["POST"]),
          Route("/tokenizer_info", tokenizer_info, methods=["GET"])]
