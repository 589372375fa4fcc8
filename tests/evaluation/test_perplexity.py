"""Perplexity by llama.cpp's chunks and by transformers' sliding window, against float64 NumPy
references computed here from logits (transformers' own where the window allows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import fixture_path, load_cached, reference

import modelkit
from modelkit.evaluation.perplexity import llama_cpp_windows, perplexity, sliding_windows


def nll64(logits: np.ndarray, ids: np.ndarray, rows: range) -> list[float]:
    """-log p(ids[r + 1]) from logits row r, in float64, for each r in rows."""
    z = logits.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    lp = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
    return [-lp[r, ids[r + 1]] for r in rows]


def test_llama_cpp_chunks_score_their_second_half() -> None:
    ids = np.arange(100, 121)  # 21 tokens, ctx 8: two chunks (16 tokens), the rest dropped
    windows = llama_cpp_windows(ids, 8, bos=None)
    assert [w.ids.tolist() for w in windows] == [list(range(100, 108)), list(range(108, 116))]
    assert [w.first_row for w in windows] == [4, 4]  # rows 4..6 predict tokens 5..7: ctx - ctx/2 - 1 each
    with_bos = llama_cpp_windows(ids, 8, bos=7)
    assert [w.ids[0] for w in with_bos] == [7, 7] and ids[8] == 108  # the text itself is untouched
    with pytest.raises(modelkit.EvaluationError, match="at least 2 x --ctx = 22"):
        llama_cpp_windows(ids, 11, bos=None)


@pytest.mark.parametrize("n, ctx, stride", [(20, 8, 4), (20, 8, 8), (21, 8, 3), (5, 8, 4), (9, 8, 1)])
def test_sliding_windows_score_every_token_but_the_first_once(n: int, ctx: int, stride: int) -> None:
    """... except, when stride == ctx (disjoint windows, the guide's "suboptimal" case), each
    window's first token, which has no context in its window."""
    ids = np.arange(n)
    scored: list[int] = []
    windows = sliding_windows(ids, ctx, stride)
    for w in windows:
        assert w.ids.size <= ctx
        begin = int(w.ids[0])
        scored += [begin + r + 1 for r in range(w.first_row, w.ids.size - 1)]
    starts = {int(w.ids[0]) for w in windows} if stride == ctx else {0}
    assert scored == [t for t in range(n) if t not in starts]


def test_sliding_window_bad_settings() -> None:
    with pytest.raises(modelkit.EvaluationError, match="--stride must be between 1 and --ctx"):
        sliding_windows(np.arange(20), 8, 9)
    with pytest.raises(modelkit.EvaluationError, match="at least 2"):
        sliding_windows(np.arange(1), 8, 4)


def test_one_window_equals_transformers_logits_in_float64() -> None:
    """A window as long as the text is one forward pass over the fixture ids: transformers'
    reference logits give the float64 answer."""
    model = load_cached("llama_gqa")
    ids, ref = reference("llama_gqa")
    want = math.exp(np.mean(nll64(ref, ids, range(ids.size - 1))))
    got = perplexity(model, ids, method="sliding", ctx=ids.size, stride=5)
    assert got.scored == ids.size - 1 and got.windows == 1
    assert got.value == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "gh_hybrid"])
def test_llama_cpp_method_against_float64(name: str) -> None:
    model = load_cached(name)
    ids, ref = reference(name)
    ctx = 8
    nll = []
    for c in range(ids.size // ctx):  # each chunk from scratch; chunk 0's rows are transformers'
        chunk = ids[c * ctx:(c + 1) * ctx]
        logits = ref[:ctx] if c == 0 else model.forward(chunk)
        nll += nll64(logits, chunk, range(ctx // 2, ctx - 1))
    got = perplexity(model, ids, method="llama.cpp", ctx=ctx)
    assert got.scored == len(nll) == (ids.size // ctx) * (ctx - ctx // 2 - 1)
    assert got.value == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
    var = np.mean(np.square(nll)) - np.mean(nll) ** 2
    assert got.stderr == pytest.approx(got.value * math.sqrt(var / (len(nll) - 1)), rel=1e-4)


def test_sliding_method_against_float64() -> None:
    model = load_cached("llama_gqa")
    ids, _ = reference("llama_gqa")
    nll = []
    for w in sliding_windows(ids, 8, 3):
        nll += nll64(model.forward(w.ids), w.ids, range(w.first_row, w.ids.size - 1))
    got = perplexity(model, ids, method="sliding", ctx=8, stride=3)
    assert got.scored == ids.size - 1 == len(nll) and got.stride == 3
    assert got.value == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)


@pytest.mark.parametrize("method", ["llama.cpp", "sliding"])
def test_batch_changes_nothing_and_progress_runs(method: str) -> None:
    model = load_cached("llama_gqa")
    ids, _ = reference("llama_gqa")
    seen = []
    whole = perplexity(model, ids, method=method, ctx=8, progress=lambda p: seen.append(p.value))
    pieced = perplexity(model, ids, method=method, ctx=8, batch=3)
    assert pieced.value == pytest.approx(whole.value, rel=1e-6)
    assert len(seen) == whole.windows and seen[-1] == whole.value


def test_llama_cpp_puts_bos_first_when_the_tokenizer_adds_one() -> None:
    model = modelkit.load(fixture_path("llama_gqa"))

    class AddsBos:
        bos_token = "<|endoftext|>"

        def token_id(self, token):
            return 0

        def encode(self, text):
            return [0, 5]

    model.tokenizer = AddsBos()
    ids, _ = reference("llama_gqa")
    ids = ids.copy()
    ids[0] = 0
    chunks = [ids[c * 8:(c + 1) * 8].copy() for c in range(2)]
    chunks[1][0] = 0
    want = [x for chunk in chunks for x in nll64(model.forward(chunk), chunk, range(4, 7))]
    assert perplexity(model, ids, ctx=8).value == pytest.approx(math.exp(np.mean(want)), rel=1e-5)


def test_context_and_settings_that_do_not_fit() -> None:
    gpt2 = load_cached("gpt2")  # 64 learned positions
    with pytest.raises(modelkit.EvaluationError, match="--ctx 100 is larger than this model's 64 learned"):
        perplexity(gpt2, np.arange(300) % 300, ctx=100)
    llama = load_cached("llama_gqa")  # max_position_embeddings 64
    with pytest.raises(modelkit.EvaluationError, match="64 positions this model was trained for"):
        perplexity(llama, np.arange(300) % 300, ctx=65)
    with pytest.raises(modelkit.EvaluationError, match="unknown perplexity method"):
        perplexity(llama, np.arange(30), method="mean", ctx=8)
    with pytest.raises(modelkit.EvaluationError, match="--stride belongs to the sliding method"):
        perplexity(llama, np.arange(30), ctx=8, stride=4)
    with pytest.raises(modelkit.EvaluationError, match="--batch must be at least 1"):
        perplexity(llama, np.arange(30), ctx=8, batch=0)
    with pytest.raises(modelkit.EvaluationError, match="--ctx must be at least 2"):
        perplexity(llama, np.arange(30), ctx=1)
