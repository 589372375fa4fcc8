"""Core weight transforms whose arithmetic the fixtures do not pin down on their own."""

from __future__ import annotations

import numpy as np
import pytest

from modelkit import CheckpointError
from modelkit.loading.transforms import scale_segments, scale_segments_shape


def test_scale_segments_multiplies_each_run_of_rows() -> None:
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    out = scale_segments(a, sizes=[1, 3, 2], factors=[2.0, 0.5, -1.0])
    expected = a * np.array([2.0, 0.5, 0.5, 0.5, -1.0, -1.0], np.float32)[:, None]
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    bias = np.ones(6, np.float32)  # a bias: the same factors along its only axis
    assert np.array_equal(scale_segments(bias, sizes=[1, 3, 2], factors=[2, 0.5, -1]),
                          [2.0, 0.5, 0.5, 0.5, -1.0, -1.0])
    cols = scale_segments(a, sizes=[1, 1], factors=[3.0, 0.0], axis=1)
    assert np.array_equal(cols, a * np.array([3.0, 0.0], np.float32))
    assert scale_segments_shape((6, 2), [1, 3, 2], [1, 1, 1]) == (6, 2)


@pytest.mark.parametrize("shape, sizes, factors, axis", [
    ((6, 2), [1, 3], [1.0, 1.0], 0),            # segments cover 4 of 6 rows
    ((6, 2), [1, 3, 2], [1.0, 1.0], 0),         # a factor short
    ((6, 2), [6], [1.0], 2),                    # no such axis
    ((6, 2), [3, 3], ["a", 1.0], 0),            # not a number
    ((6, 2), [-1, 7], [1.0, 1.0], 0),           # negative size
])
def test_scale_segments_that_do_not_fit_are_refused(shape, sizes, factors, axis) -> None:
    with pytest.raises(CheckpointError, match="scale_segments"):
        scale_segments_shape(shape, sizes, factors, axis)
