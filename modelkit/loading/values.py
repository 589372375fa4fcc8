"""`validate --values`: reading every planned tensor and reporting NaN and infinite values."""

from __future__ import annotations

import numpy as np

from ..checkpoint.source import WeightSource
from .plan import Plan


def non_finite_values(source: WeightSource, plan: Plan) -> list[str]:
    """One line per planned tensor holding NaN or infinite values. Reads every tensor, so it
    takes as long as loading; ``load`` itself does not look (``modelkit validate --values`` does)."""
    out = []
    names = (n for t in plan.tensors.values() for n in (t.parts or (t.source,)) if n is not None)
    for name in dict.fromkeys(names):
        with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 are what we count
            array = source.read(name)  # float32 [...]
        nan = int(np.count_nonzero(np.isnan(array)))
        inf = int(np.count_nonzero(np.isinf(array)))
        if nan or inf:
            out.append(f"non-finite  {name}  ({nan} NaN, {inf} infinite of {array.size} values)")
    return out
