"""The checks every model meets against its golden fixture, as plain functions that raise
AssertionError with the numbers, so a plugin's test (and modelkit's own contract test) is a few
lines::

    from modelkit.testing import assert_matches_reference

    def test_my_family():
        assert_matches_reference("tests/fixtures/my_family")   # built by modelkit.testing.build_fixture

A reference is the fixture's ``ref.npz``: ``ids`` [T], transformers' ``logits`` [T, vocab] and,
when recorded, ``logits_step`` (transformers' own cached decoding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

ATOL = 1e-4       # logits against the transformers reference
SELF_ATOL = 2e-5  # the same model by two routes (cache or not, pieces or not)
PREFILLS = (1, 2, 5, 8)
CUTS = (1, 3, 4, 10, "half")  # shorter than a conv kernel, on a scan-chunk boundary, inside one, mid-way
GREEDY_TOKENS = 8  # tokens check_greedy_tokens generates


class FixtureReference(NamedTuple):
    """What a fixture's ref.npz holds."""

    ids: np.ndarray                 # int64 [T]
    logits: np.ndarray              # float32 [T, vocab]
    logits_step: np.ndarray | None  # float32 [T, vocab], transformers' cached decoding


def read_reference(path: str | Path) -> FixtureReference:
    """A fixture's reference: ``path`` is the ref.npz or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "ref.npz"
    with np.load(path, allow_pickle=False) as ref:
        step = ref["logits_step"].copy() if "logits_step" in ref.files else None
        return FixtureReference(ref["ids"].astype(np.int64), ref["logits"].astype(np.float32), step)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference of two arrays of the same shape (in float64)."""
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _close(what: str, got: np.ndarray, want: np.ndarray, atol: float) -> float:
    diff = max_abs(got, want)
    assert diff < atol, f"{what}: max |difference| {diff:.3g} >= {atol:g}"
    return diff


def check_full_forward(model: Any, ref: FixtureReference, atol: float = ATOL) -> float:
    """One forward pass over the reference ids: float32 logits of the right shape, equal to
    transformers' (and to its cached decoding, where recorded). Returns the max |difference|."""
    logits = model.forward(ref.ids)
    assert logits.dtype == np.float32, f"logits are {logits.dtype}, not float32"
    assert logits.shape == ref.logits.shape == (ref.ids.size, model.vocab_size), \
        f"logits shape {logits.shape}, reference {ref.logits.shape}, vocabulary {model.vocab_size}"
    diff = _close("full forward vs reference logits", logits, ref.logits, atol)
    if ref.logits_step is not None:
        _close("full forward vs the reference's cached decoding", logits, ref.logits_step, atol)
    return diff


def check_cached_decoding(model: Any, ref: FixtureReference, prefill: int, atol: float = ATOL,
                          self_atol: float = SELF_ATOL) -> float:
    """Prefill ``prefill`` tokens, then decode the rest one token at a time through the cache:
    equal to the full forward (``self_atol``) and to the reference (``atol``); the cache holds
    every token."""
    ids = ref.ids
    full = model.forward(ids)
    cache = model.make_cache()
    rows = [model.forward(ids[:prefill], cache)]
    rows += [model.forward([int(t)], cache) for t in ids[prefill:]]
    stepped = np.concatenate(rows)
    assert cache.length == ids.size and list(cache.tokens) == [int(t) for t in ids], \
        f"the cache holds {cache.length} tokens after {ids.size}"
    diff = _close(f"token-by-token decoding after a prefill of {prefill} vs full forward", stepped, full, self_atol)
    _close(f"token-by-token decoding after a prefill of {prefill} vs reference", stepped, ref.logits, atol)
    return diff


def check_prefill_in_pieces(model: Any, ref: FixtureReference, cut: int | str,
                            self_atol: float = SELF_ATOL) -> float:
    """The reference ids in two pieces through one cache (cut after ``cut`` tokens, or "half"):
    equal to one full forward."""
    ids = ref.ids
    at = ids.size // 2 + 1 if cut == "half" else int(cut)
    full = model.forward(ids)
    cache = model.make_cache()
    pieces = np.concatenate([model.forward(ids[:at], cache), model.forward(ids[at:], cache)])
    return _close(f"prefill in two pieces (cut at {at}) vs full forward", pieces, full, self_atol)


def check_greedy_tokens(model: Any, prompt: Sequence[int], n: int = GREEDY_TOKENS) -> list[int]:
    """Greedy generation picks the argmax of a full forward at every step (stopping after an EOS,
    which it includes). Returns the tokens."""
    ids = [int(t) for t in prompt]
    for _ in range(n):
        ids.append(int(np.argmax(model.forward(ids)[-1])))
    expected = ids[len(prompt):]
    stops = model.eos_token_ids
    for i, token in enumerate(expected):
        if token in stops:
            expected = expected[:i + 1]
            break
    got = model.generate(list(prompt), max_new_tokens=n, temperature=0.0)
    assert got == expected, f"greedy generation gave {got}, the full forward's argmaxes are {expected}"
    return got


def assert_matches_reference(model: Any, reference: str | Path | None = None, *, atol: float = ATOL,
                             self_atol: float = SELF_ATOL, **load_options: Any) -> dict[str, float]:
    """Every check against a fixture: the full forward, token-by-token decoding after each of
    :data:`PREFILLS`, prefill in two pieces at each of :data:`CUTS`, and greedy tokens.

    ``model`` is a loaded :class:`modelkit.Model` or a path to load (with ``load_options``);
    ``reference`` a ref.npz or its folder (default: the model's folder). Returns the largest
    difference each check measured; raises AssertionError naming the first that fails.
    """
    if not hasattr(model, "forward"):
        import modelkit

        folder = Path(model)
        model = modelkit.load(folder, **load_options)
        reference = folder if reference is None else reference
    if reference is None:
        reference = Path(model.source)
    ref = read_reference(reference)
    measured = {"full_forward": check_full_forward(model, ref, atol)}
    for prefill in PREFILLS:
        if prefill < ref.ids.size:
            measured[f"decode_after_{prefill}"] = check_cached_decoding(model, ref, prefill, atol, self_atol)
    for cut in CUTS:
        if cut == "half" or int(cut) < ref.ids.size:
            measured[f"pieces_cut_{cut}"] = check_prefill_in_pieces(model, ref, cut, self_atol)
    check_greedy_tokens(model, ref.ids[:6])
    return measured
