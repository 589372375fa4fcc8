"""blas_held_to_one, map_pieces, map_rows: every piece once, on the pool only while BLAS is held to
one thread, BLAS given back after, errors raised."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from threadpoolctl import threadpool_limits

from modelkit.nn.parallel import blas_held_to_one, blas_threads, map_pieces


@pytest.fixture
def two_blas_threads():
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() < 2:
            pytest.skip("BLAS here is not threaded")
        yield


def test_every_piece_runs_once_on_the_pool(two_blas_threads) -> None:
    seen, names = [], set()

    def work(piece: int) -> None:
        seen.append(piece)
        names.add(threading.current_thread().name)

    with blas_held_to_one() as threads:
        assert threads == 2
        map_pieces(work, list(range(50)))
    assert sorted(seen) == list(range(50))
    assert all(name.startswith("modelkit-piece") for name in names)
    assert blas_threads() == 2  # given back


def test_blas_is_one_thread_inside_a_piece(two_blas_threads) -> None:
    from threadpoolctl import threadpool_info

    inside = []
    with blas_held_to_one():
        map_pieces(lambda _: inside.append([lib["num_threads"] for lib in threadpool_info()
                                            if lib["user_api"] == "blas"]), [0, 1, 2])
    assert inside and all(counts == [1] * len(counts) for counts in inside)
    assert all(lib["num_threads"] == 2 for lib in threadpool_info() if lib["user_api"] == "blas")


def test_an_error_in_a_piece_is_raised_and_blas_restored(two_blas_threads) -> None:
    def work(piece: int) -> None:
        if piece == 3:
            raise MemoryError("piece 3")

    with pytest.raises(MemoryError, match="piece 3"), blas_held_to_one():
        map_pieces(work, list(range(8)))
    assert blas_threads() == 2


def test_pieces_inside_a_piece_run_in_place() -> None:
    done = []

    def outer(i: int) -> None:
        map_pieces(lambda j: done.append((i, j)), [0, 1])  # from a pool thread: no deadlock

    with threadpool_limits(limits=2, user_api="blas"), blas_held_to_one():
        map_pieces(outer, [0, 1, 2])
    assert sorted(done) == [(i, j) for i in range(3) for j in range(2)]


def test_one_blas_thread_keeps_the_pieces_on_the_calling_thread() -> None:
    names = set()
    with threadpool_limits(limits=1, user_api="blas"), blas_held_to_one() as threads:
        assert threads == 1
        map_pieces(lambda _: names.add(threading.current_thread().name), [0, 1, 2])
    assert names == {threading.current_thread().name}


def test_outside_a_hold_the_pieces_run_on_the_calling_thread(two_blas_threads) -> None:
    names = set()
    map_pieces(lambda _: names.add(threading.current_thread().name), [0, 1, 2])
    assert names == {threading.current_thread().name}


def test_concurrent_callers_give_blas_its_threads_back(two_blas_threads) -> None:
    barrier = threading.Barrier(2)

    def caller() -> None:
        barrier.wait()
        for _ in range(20):
            with blas_held_to_one():
                map_pieces(lambda _: None, [0, 1, 2, 3])

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert blas_threads() == 2


def test_piece_spans_cover_the_rows_in_pieces_of_at_least_piece_rows() -> None:
    from modelkit.nn.parallel import PIECE_ROWS, piece_spans

    assert piece_spans(PIECE_ROWS * 2 - 1, 2) == [(0, PIECE_ROWS * 2 - 1)]
    for rows, pieces in [(256, 2), (1000, 2), (513, 3), (4096, 8)]:
        spans = piece_spans(rows, pieces)
        assert spans[0][0] == 0 and spans[-1][1] == rows and len(spans) <= pieces
        assert all(a == prev_b for (_, prev_b), (a, _) in zip(spans, spans[1:]))
        assert all(b - a >= PIECE_ROWS for a, b in spans)


def test_map_rows_equals_one_call(two_blas_threads) -> None:
    import numpy as np

    from modelkit.nn.parallel import map_rows

    x = np.random.default_rng(0).standard_normal((700, 24), dtype=np.float32)
    w = np.random.default_rng(1).standard_normal((24, 40), dtype=np.float32)
    with blas_held_to_one():
        pieces = map_rows(lambda rows: np.tanh(rows @ w), x)
    np.testing.assert_allclose(pieces, np.tanh(x @ w), atol=1e-5)


def test_a_long_prompt_gives_the_same_logits_on_one_thread_and_in_pieces() -> None:
    import numpy as np

    import modelkit
    from conftest import fixture_path

    model = modelkit.load(fixture_path("llama_gqa"))
    assert model.spreads
    ids = np.random.default_rng(0).integers(0, model.vocab_size, 600)
    with threadpool_limits(limits=2, user_api="blas"):
        pieces = model.forward(ids)
    with threadpool_limits(limits=1, user_api="blas"):
        serial = model.forward(ids)
    np.testing.assert_allclose(pieces, serial, atol=1e-5)


def test_a_forked_child_makes_its_own_pool(two_blas_threads) -> None:
    import os

    with blas_held_to_one():
        map_pieces(lambda _: None, [0, 1])  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: the inherited pool has no threads of its own
        try:
            done = []
            with blas_held_to_one():
                map_pieces(done.append, [0, 1, 2])
            os._exit(0 if sorted(done) == [0, 1, 2] else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("map_pieces hung in a forked child")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_model_with_a_kind_that_does_not_split_never_holds_blas() -> None:
    import modelkit
    from conftest import fixture_path

    assert not modelkit.load(fixture_path("gh_hybrid")).spreads  # Mamba2's scan runs whole


def test_product_layout_follows_the_blas_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread: [in, out]; two or more: what the machine measured ([out, in] here, where
    each thread's share of a one-row product is one contiguous block). Either way linear gives
    x @ w.T for any rows."""
    import numpy as np

    from modelkit.nn import layout
    from modelkit.nn.linear import linear, product_layout

    monkeypatch.setenv(layout.ENV, "measure")
    monkeypatch.setattr(layout, "_measured", {2: {"tall": layout.Choice("C", True), "wide": layout.Choice("C", True)}})

    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
    expected = np.concatenate([q, k])
    with threadpool_limits(limits=1, user_api="blas"):
        one = product_layout(q, k)
    assert one.flags.f_contiguous and not one.flags.c_contiguous
    layouts = [one]
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() >= 2:
            many = product_layout(q, k)
            assert many.flags.c_contiguous
            layouts.append(many)
            assert product_layout(q) is q  # one weight already so laid out: no copy
    for w in layouts:
        assert np.array_equal(w, expected)
        for rows in (1, 4, 300):
            x = rng.normal(size=(rows, 5)).astype(np.float32)
            y = linear(x, w)
            assert y.flags.c_contiguous and np.allclose(y, x @ expected.T, atol=1e-5)
