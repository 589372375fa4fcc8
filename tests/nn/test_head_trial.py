"""The head's layout trial (modelkit.nn.trial): the copy holds the same values in the other
layout, the trial keeps the layout timed faster (a tie keeps the original) and drops the other,
and a model decoding through a trial gives the logits it gives without one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ATOL, fixture_path, max_abs, reference

import modelkit
from modelkit.nn import trial
from modelkit.nn.layout import ENV
from modelkit.nn.linear import linear


@pytest.mark.parametrize("order", ["C", "F"])
def test_the_copy_holds_the_weight_in_the_other_layout(order: str) -> None:
    w = np.asarray(np.random.default_rng(0).standard_normal((1000, 24)), np.float32, order=order)
    copy = trial.other_layout(w)
    assert np.array_equal(copy, w) and copy.shape == w.shape
    assert copy.flags.f_contiguous if order == "C" else copy.flags.c_contiguous


class FakeClock:
    """perf_counter for the trial: each product advances it by its layout's cost."""

    def __init__(self, costs: dict[str, float]):
        self.now, self.costs = 0.0, costs

    def perf_counter(self) -> float:
        return self.now

    def linear(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        self.now += self.costs["C" if w.flags.c_contiguous else "F"]
        return linear(x, w)


@pytest.mark.parametrize(("costs", "view", "kept"), [
    ({"C": 1.0, "F": 0.5}, False, "F"), ({"C": 0.5, "F": 1.0}, False, "C"),
    ({"C": 1.0, "F": 0.95}, False, "F"),  # both copies: the faster, however little
    ({"C": 1.0, "F": 0.95}, True, "C"),  # the original a view (a mapped file's): within MARGIN, a tie
    ({"C": 1.0, "F": 0.5}, True, "F")])
def test_the_trial_keeps_the_layout_timed_faster(costs: dict[str, float], view: bool, kept: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock(costs)
    monkeypatch.setattr(trial, "_decided", {})
    monkeypatch.setattr(trial, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(trial, "linear", clock.linear)
    w = np.random.default_rng(1).standard_normal((600 if view else 300, 16)).astype(np.float32)
    w = w[:300] if view else w
    assert w.flags.owndata != view and w.flags.c_contiguous
    x = np.random.default_rng(2).standard_normal((1, 16)).astype(np.float32)
    run = trial.LayoutTrial(w, calls=3, after=4)
    for call in range(4 + 1 + 2 * 3):  # four before it, the uncounted first, then three of each layout
        assert run.kept is None and (run.weights[1] is None) == (call <= 4)  # no copy before it begins
        assert max_abs(run.product(x), x @ w.T) < 1e-5
    assert run.kept is not None and ("C" if run.kept.flags.c_contiguous else "F") == kept
    assert run.weights == [None, None]  # the other layout is dropped
    assert run.report() == {"C": costs["C"] * 1e3, "F": costs["F"] * 1e3, "kept": kept}
    assert max_abs(run.product(x), x @ w.T) < 1e-5  # after the trial: the kept layout


def test_a_trial_runs_only_for_large_heads_when_measuring_with_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    big = np.empty((trial.TRIAL_MIN_ELEMENTS // 64, 64), np.float32)
    monkeypatch.setattr(trial, "blas_threads", lambda: 2)
    monkeypatch.setenv(ENV, "measure")
    assert trial.wants_trial(big) and trial.wants_trial(np.asfortranarray(big))
    strided = np.empty((trial.TRIAL_MIN_ELEMENTS // 32, 64), np.float32)[:, ::2]
    assert strided.size == trial.TRIAL_MIN_ELEMENTS and not trial.wants_trial(strided)
    assert not trial.wants_trial(big[: big.shape[0] // 2])  # below the size
    monkeypatch.setenv(ENV, "rows")
    assert not trial.wants_trial(big)
    monkeypatch.setenv(ENV, "measure")
    monkeypatch.setattr(trial, "blas_threads", lambda: 1)
    assert not trial.wants_trial(big)


@pytest.mark.parametrize(("name", "faster"), [("llama_gqa", "F"), ("gpt2", "F"), ("llama_gqa", "C")])
def test_a_model_decodes_through_the_trial_to_the_same_logits(name: str, faster: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ids, ref = reference(name)
    model = modelkit.load(fixture_path(name))
    tied = model.embed is model.head
    clock = FakeClock({"C": 1.0, "F": 0.5} if faster == "F" else {"C": 0.5, "F": 1.0})
    monkeypatch.setattr(trial, "_decided", {})
    monkeypatch.setattr(trial, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(trial, "linear", clock.linear)
    model.head_trial = trial.LayoutTrial(model.head, calls=2, after=1)
    cache = model.make_cache()
    rows = [model.forward(ids[:1].tolist(), cache)[-1]]
    rows += [model.forward([int(t)], cache)[-1] for t in ids[1:]]
    assert len(ids) > 1 + 1 + 2 * 2 and max_abs(np.stack(rows), ref) < ATOL
    assert model.head_trial.report()["kept"] == faster
    assert model.head.flags.f_contiguous if faster == "F" else model.head.flags.c_contiguous
    assert (model.embed is model.head) == tied  # a tied embedding follows the head
    assert max_abs(model.forward(ids.tolist()), ref) < ATOL  # and a prompt reads it alike


def test_a_head_loaded_after_a_trial_starts_in_the_layout_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trial, "_decided", {})
    monkeypatch.setattr(trial, "blas_threads", lambda: 2)
    monkeypatch.setattr(trial, "TRIAL_MIN_ELEMENTS", 64)
    monkeypatch.setenv(ENV, "measure")
    w = np.random.default_rng(3).standard_normal((40, 8)).astype(np.float32)
    head, run = trial.start_head(w)
    assert head is w and run is not None
    clock = FakeClock({"C": 1.0, "F": 0.5})
    monkeypatch.setattr(trial, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(trial, "linear", clock.linear)
    for _ in range(run.waiting + 1 + 2 * run.calls):
        run.product(np.ones((1, 8), np.float32))
    head, again = trial.start_head(w.copy())
    assert again is None and head.flags.f_contiguous and np.array_equal(head, w)
    monkeypatch.setattr(trial, "blas_threads", lambda: 4)  # another thread count: its own trial
    assert trial.start_head(w)[1] is not None
