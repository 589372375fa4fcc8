"""The core transforms' inverses (``modelkit convert`` writes a tensor back in the form a
mapping reads it from): undoing a transform gives back the stored tensor, and the pieces a
transform takes out of one fused tensor, placed back, give that tensor."""

from __future__ import annotations

import numpy as np
import pytest

import modelkit
from modelkit import Inverse, hookimpl
from modelkit.loading.inverses import CORE_INVERSES
from modelkit.loading.transforms import CORE_TRANSFORMS
from modelkit.plugins import manager as plugins

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("name,shape,args", [
    ("transpose", (3, 5), {}),
    ("reshape", (6, 1, 4), {"to": [-1, 4], "from": [-1, 1, 4]}),
    ("scale", (4, 3), {"factor": 0.5}),
    ("scale_segments", (5, 2), {"sizes": [2, 3], "factors": [2.0, 0.25]}),
    ("add", (7,), {"value": 1.0}),
])
def test_an_inverse_gives_back_the_stored_tensor(name: str, shape: tuple, args: dict) -> None:
    stored = RNG.standard_normal(shape).astype(np.float32)
    apply, _ = CORE_TRANSFORMS[name]
    inverse = CORE_INVERSES[name]
    loaded = apply(stored, **args)
    back = inverse.apply(loaded, **args)
    assert back.dtype == np.float32 and back.shape == stored.shape
    assert inverse.shape is None or tuple(inverse.shape(loaded.shape, **args)) == stored.shape
    np.testing.assert_allclose(back, stored, rtol=1e-6, atol=0)


FALCON = {"num_heads": 4, "head_dim": 2}


@pytest.mark.parametrize("name,shape,pieces", [
    ("split", (6, 4), [{"parts": 3, "index": i} for i in range(3)]),
    ("split", (2, 8, 3), [{"parts": 2, "index": i, "axis": 1} for i in range(2)]),
    ("slice", (7, 3), [{"start": 0, "stop": 4}, {"start": 4, "stop": 5}, {"start": 5, "stop": 7}]),
    *[("falcon_qkv", ((4 + 2 * kv) * 2, 3), [{"part": p, "num_kv_heads": nkv, "layout": layout, **FALCON}
                                             for p in "qkv"])
      for layout, kv, nkv in [("grouped", 2, 2), ("multi_query", 1, 1), ("interleaved", 4, 4)]],
])
def test_pieces_placed_back_give_the_fused_tensor(name: str, shape: tuple, pieces: list[dict]) -> None:
    fused = RNG.standard_normal(shape).astype(np.float32)
    apply, _ = CORE_TRANSFORMS[name]
    inverse = CORE_INVERSES[name]
    taken = [apply(fused, **args) for args in pieces]
    least = [tuple(inverse.shape(t.shape, **args)) for t, args in zip(taken, pieces)]
    assert tuple(np.max(least, axis=0)) == fused.shape
    whole = np.zeros(fused.shape, np.float32)
    for t, args in zip(taken, pieces):
        inverse.place(whole, t, **args)
    np.testing.assert_array_equal(whole, fused)


class _BadInverse:
    def __init__(self, inverse):
        self.inverse = inverse

    @hookimpl
    def register_transforms(self, register):
        register("bad_inverse", lambda a: a, inverse=self.inverse)


@pytest.mark.parametrize("inverse", [lambda a: a, Inverse(), Inverse(place=lambda w, p: None)])
def test_an_inverse_is_a_modelkit_inverse(inverse) -> None:
    plugins.register_plugin(_BadInverse(inverse), "bad-inverse")
    try:
        with pytest.raises(modelkit.PluginError, match="transform 'bad_inverse' .plugin bad-inverse.: inverse "
                                                       "must be a modelkit.Inverse with one of apply or place"):
            plugins.registry()
    finally:
        plugins.unregister_plugin("bad-inverse")


def test_every_core_transform_has_an_inverse() -> None:
    transforms = plugins.registry().transforms
    assert all(isinstance(transforms[name].inverse, Inverse) for name in CORE_TRANSFORMS)
    assert all(isinstance(transforms[name].inverse, Inverse) for name in ("unpermute_rope", "undo_neg_exp"))
