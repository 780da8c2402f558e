"""The one percentile of the benchmarks and the load test: nearest rank."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["percentile"]


def percentile(values: Sequence[float] | Mapping[int, int] | Mapping[float, int], q: float) -> float:
    """The nearest-rank ``q`` quantile (``0 <= q <= 1``) of an already sorted sequence, or of a
    histogram ``value -> count``; NaN without samples."""
    if isinstance(values, Mapping):
        total = sum(values.values())
        if not total:
            return math.nan
        rank = min(total, max(1, math.ceil(q * total)))
        seen = 0
        for value, count in sorted(values.items()):
            seen += count
            if seen >= rank:
                return float(value)
        raise AssertionError("unreachable: the counts add up to total")
    if not values:
        return math.nan
    return float(values[min(len(values), max(1, math.ceil(q * len(values)))) - 1])
