"""The one percentile (loadtest.stats): nearest rank, of a sorted sequence or of a histogram."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from loadtest.stats import percentile


def test_nearest_rank_of_a_sequence() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))


def test_a_histogram_gives_what_its_samples_give() -> None:
    assert percentile({10.0: 98, 500.0: 2}, 0.98) == 10.0
    assert percentile({10.0: 98, 500.0: 2}, 0.99) == 500.0
    assert math.isnan(percentile({}, 0.5))


@given(st.lists(st.integers(0, 50), min_size=1, max_size=200), st.floats(0.0, 1.0))
def test_sequence_and_histogram_agree(samples: list[int], q: float) -> None:
    histogram: dict[float, int] = {}
    for s in samples:
        histogram[float(s)] = histogram.get(float(s), 0) + 1
    assert percentile(sorted(float(s) for s in samples), q) == percentile(histogram, q)
