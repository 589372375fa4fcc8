"""A long prompt's work spread over the cores with BLAS held to one thread.

NumPy's elementwise passes (the exponentials of a softmax, its maxima and sums) run on one
core. BLAS spreads each product over its threads, and after each product OpenBLAS's other
threads keep spinning for a while (about a tenth of a second) before they sleep, so while the
softmax runs the second core is busy doing nothing. For a long prompt of a model whose blocks
all split into independent pieces (attention's query blocks, token-wise blocks' rows, a
product's rows), :func:`blas_held_to_one` holds BLAS to one thread for the whole forward and
the pieces run on a pool of as many Python threads as BLAS would have used (NumPy releases the
GIL inside its loops and products): every core works on the products *and* the elementwise
passes, and no BLAS thread spins beside them. ``OPENBLAS_NUM_THREADS=1`` (or a threadpoolctl
limit) keeps everything on one core. Decoding never takes this path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

Piece = TypeVar("Piece")

# a token-wise block or a product is split into spans of at least this many rows: below it,
# one product over every row reads the weights once
PIECE_ROWS = 128

_lock = threading.Lock()
_state: dict[str, Any] = {"controller": None, "pool": None, "pool_size": 0, "pid": None, "inside": 0,
                          "saved": 1}
# per thread: ``spread`` is the number of threads the pieces of this thread's forward may use
# (0 outside blas_held_to_one); ``worker`` is set in the pool's own threads
_local = threading.local()


def _controller() -> Any:
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController

        _state["controller"] = ThreadpoolController().select(user_api="blas")
    return _state["controller"]


def blas_threads() -> int:
    """How many threads BLAS uses for one product outside any held forward (1 when BLAS is
    not threaded)."""
    if _state["inside"]:  # a forward holds BLAS at one thread now
        return _state["saved"]
    libraries = _controller().lib_controllers
    return max([lib.get_num_threads() or 1 for lib in libraries], default=1)


def spread() -> int:
    """How many threads the pieces of the calling thread's work may use: 0 outside
    :func:`blas_held_to_one` and inside a piece."""
    return getattr(_local, "spread", 0)


@contextmanager
def blas_held_to_one() -> Iterator[int]:
    """Hold BLAS to one thread while the calling thread's pieces run on the pool; yields the
    pool's size (1: BLAS is not threaded, nothing is held). Nested or concurrent holds share
    one limit, given back when the last ends."""
    if spread() or getattr(_local, "worker", False):
        yield max(spread(), 1)
        return
    with _lock:
        threads = blas_threads()
        if threads >= 2:
            if not _state["inside"]:
                _state["saved"] = threads
                _controller().limit(limits=1)
            _state["inside"] += 1
    if threads < 2:
        yield 1
        return
    _local.spread = threads
    try:
        yield threads
    finally:
        _local.spread = 0
        with _lock:
            _state["inside"] -= 1
            if not _state["inside"]:
                _controller().limit(limits=_state["saved"])


def _pool(size: int) -> ThreadPoolExecutor:
    with _lock:
        # a forked child inherits the pool object but not its threads: it makes its own
        if _state["pool_size"] != size or _state["pid"] != os.getpid():
            if _state["pool"] is not None and _state["pid"] == os.getpid():
                _state["pool"].shutdown(wait=False)
            _state["pool"] = ThreadPoolExecutor(size, thread_name_prefix="modelkit-piece",
                                                initializer=setattr, initargs=(_local, "worker", True))
            _state["pool_size"], _state["pid"] = size, os.getpid()
        return _state["pool"]


def map_pieces(work: Callable[[Piece], None], pieces: Sequence[Piece]) -> None:
    """Call ``work(piece)`` for every piece: on the pool inside :func:`blas_held_to_one`, else
    in order on the calling thread.

    The pieces must be independent (each writes only its own part of an output). Give the
    costliest first: the threads take pieces in order as they finish. An exception raised by
    a piece is raised here.
    """
    threads = spread()
    if threads < 2 or len(pieces) < 2:
        for piece in pieces:
            work(piece)
        return
    for _ in _pool(threads).map(work, pieces):
        pass


def piece_spans(rows: int, pieces: int) -> list[tuple[int, int]]:
    """``rows`` split into at most ``pieces`` contiguous spans of at least PIECE_ROWS rows each
    (one span when there are too few)."""
    count = max(1, min(pieces, rows // PIECE_ROWS))
    edges = [rows * i // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def map_rows(forward: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """``forward(x)`` for a function whose every output row depends on its input row alone (a
    token-wise block, a product), on spans of rows spread over the pool inside
    :func:`blas_held_to_one`; the result is assembled in one new array."""
    spans = piece_spans(x.shape[0], spread())
    if len(spans) == 1:
        return forward(x)
    out: list[np.ndarray | None] = [None]
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
