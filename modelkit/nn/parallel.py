"""Independent pieces of one computation spread over the cores BLAS is allowed to use.

NumPy's elementwise passes (the exponentials of a softmax, its maxima and sums) run on one
core, while BLAS spreads each product over its threads. For work that splits into independent
pieces (the query blocks of a long prompt's attention), :func:`map_pieces` runs the pieces on
a pool of Python threads instead, each with BLAS held to one thread: NumPy releases the GIL
inside its loops and products, so every core works on the products *and* the elementwise
passes, and no two BLAS thread pools compete for the same cores. The pool has as many threads
as BLAS would use (``OPENBLAS_NUM_THREADS`` and the like, or threadpoolctl's limits, decide
both), so a one-thread setting keeps everything on one core.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

Piece = TypeVar("Piece")

_lock = threading.Lock()
_state: dict[str, Any] = {"controller": None, "pool": None, "pool_size": 0, "pid": None, "inside": 0,
                         "saved": None}
_worker = threading.local()  # set in the pool's threads: a piece that maps pieces runs them itself


def _controller() -> Any:
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController().select(user_api="blas")
    return _state["controller"]


def blas_threads() -> int:
    """How many threads BLAS uses for one product now (1 when it is not threaded)."""
    if _state["inside"]:  # the pieces of another caller hold BLAS at one thread
        return _state["saved"]
    libraries = _controller().lib_controllers
    return max([lib.get_num_threads() or 1 for lib in libraries], default=1)


def _pool(size: int) -> ThreadPoolExecutor:
    # a forked child inherits the pool object but not its threads: it makes its own
    if _state["pool_size"] != size or _state["pid"] != os.getpid():
        if _state["pool"] is not None and _state["pid"] == os.getpid():
            _state["pool"].shutdown(wait=False)
        _state["pool"] = ThreadPoolExecutor(size, thread_name_prefix="modelkit-piece",
                                            initializer=setattr, initargs=(_worker, "busy", True))
        _state["pool_size"], _state["pid"] = size, os.getpid()
    return _state["pool"]


def map_pieces(work: Callable[[Piece], None], pieces: Sequence[Piece]) -> None:
    """Call ``work(piece)`` for every piece, on as many threads as BLAS would use.

    The pieces must be independent (each writes only its own part of an output). Give the
    costliest first: the threads take pieces in order as they finish. An exception raised by
    one piece is raised here. With one BLAS thread, one piece, or from inside a piece, the
    pieces run in order on the calling thread.
    """
    if len(pieces) < 2 or getattr(_worker, "busy", False):
        for piece in pieces:
            work(piece)
        return
    with _lock:
        threads = blas_threads()
        if threads < 2:
            pool = None
        else:
            if not _state["inside"]:  # the first of concurrent callers holds BLAS at one thread
                _state["saved"] = threads
                _controller().limit(limits=1)
            _state["inside"] += 1
            pool = _pool(threads)
    if pool is None:
        for piece in pieces:
            work(piece)
        return
    try:
        for _ in pool.map(work, pieces):
            pass
    finally:
        with _lock:
            _state["inside"] -= 1
            if not _state["inside"]:  # the last one gives BLAS its threads back
                _controller().limit(limits=_state["saved"])


# a token-wise block is split into pieces of at least this many rows: below it, one product
# over every row reads the weights once and BLAS's own threads split it well enough
PIECE_ROWS = 128


def piece_spans(rows: int, pieces: int) -> list[tuple[int, int]]:
    """``rows`` split into at most ``pieces`` contiguous spans of at least PIECE_ROWS rows each
    (one span when there are too few)."""
    count = max(1, min(pieces, rows // PIECE_ROWS))
    edges = [rows * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def map_rows(forward: Callable[[Any], Any], x: Any) -> Any:
    """``forward(x)`` for a function whose every output row depends on its input row alone
    (a token-wise block over ``x [T, hidden]``), computed on spans of rows spread over the
    cores (see :func:`map_pieces`); the result is assembled in one new array."""
    spans = piece_spans(x.shape[0], blas_threads() if not getattr(_worker, "busy", False) else 1)
    if len(spans) == 1:
        return forward(x)
    out: list[Any] = [None]
    made = threading.Lock()

    def work(span: tuple[int, int]) -> None:
        a, b = span
        y = forward(x[a:b])
        with made:
            if out[0] is None:
                out[0] = np.empty((x.shape[0], *y.shape[1:]), y.dtype)
        out[0][a:b] = y

    map_pieces(work, spans)
    return out[0]
