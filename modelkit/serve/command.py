"""The `serve` command: its flags, and running the app under uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

from ..errors import ModelkitError

DEFAULT_PORT = 8000
DEFAULT_MAX_TOKENS = 4096
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30


def configure(p: argparse.ArgumentParser) -> None:
    """The flags of `modelkit serve`."""
    from ..cli.common import add_model_args

    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model's name in the API (default: --model as given)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="sequences decoded together at most (default 16)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="sequences waiting for a place in the batch at most; more get HTTP 429 (default 64)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"largest max_tokens a request may ask for, and chat's default (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--max-n", type=int, default=8, metavar="N", help="largest n (choices per request) (default 8)")
    p.add_argument("--context", type=int, metavar="N",
                   help="tokens a sequence may hold (default: the model's max_position_embeddings, if any)")
    p.add_argument("--prefix-cache-bytes", type=int, default=DEFAULT_PREFIX_CACHE_BYTES, metavar="BYTES",
                   help="memory for cached prompt and reply states, least recently used dropped first; "
                        "0 turns prefix caching off (default 1 GiB)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM, let running requests finish for up to S seconds, then cancel them (default 30)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default warning)")


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        least = 0 if name in ("prefix_cache_bytes", "shutdown_timeout") else 1
        if value is not None and value < least:
            raise ModelkitError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")


def context_of(model: Any, flag: int | None) -> int | None:
    """Tokens a sequence may hold: the flag, else the model's learned positions, else config.json's
    max_position_embeddings (rotary models have no hard limit, but read no further well)."""
    if flag is not None:
        return flag
    if model.max_positions is not None:
        return model.max_positions
    value = model.config.raw.get("max_position_embeddings")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def build_state(model: Any, args: argparse.Namespace) -> Any:
    """The app's shared state from a loaded model and the parsed flags."""
    from .app import ServeState
    from .prefix_cache import PrefixCache
    from .protocol import Limits
    from .scheduler import Scheduler

    scheduler = Scheduler(model, max_batch=args.max_batch, queue_size=args.queue_size,
                          prefix_cache=PrefixCache(args.prefix_cache_bytes))
    return ServeState(model, args.served_model_name or args.model, scheduler,
                      Limits(args.max_tokens, args.max_n), context_of(model, args.context))


def run(args: argparse.Namespace) -> int:
    """`modelkit serve`: load the model, serve until SIGTERM or Ctrl-C, exit 0."""
    _positive(args, "port", "max_batch", "queue_size", "max_tokens", "max_n", "context", "prefix_cache_bytes",
              "shutdown_timeout")
    try:
        import uvicorn

        from .app import build_app
    except ImportError as exc:
        raise ModelkitError(f"modelkit serve needs the serve extra ({exc.name} is missing): "
                            f"pip install 'modelkit[serve]'") from None
    from ..cli.common import load_model

    model, load_s = load_model(args)
    state = build_state(model, args)
    config = uvicorn.Config(build_app(state), host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout, access_log=False)
    server = _uvicorn_server()(config)
    print(f"modelkit serve: {state.name} loaded in {load_s:.1f} s; listening on http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    server.run()
    return 0


def _uvicorn_server() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a SIGTERM or Ctrl-C is a graceful stop and nothing more: uvicorn
        re-raises the signal after shutting down, which would end the process with 143 or 130."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server

