"""The one backoff (nak delays, model retries, restarts): equal jitter inside [ceiling/2, ceiling],
exponential, capped."""

from __future__ import annotations

import pytest

from agentbus.backoff import Backoff


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8, 20, 31, 32, 1000])
def test_delay_is_within_half_ceiling_and_ceiling(attempt: int) -> None:
    policy = Backoff(0.5, 10.0)
    ceiling = min(10.0, 0.5 * 2 ** min(attempt - 1, 30))
    delays = [policy.delay_s(attempt) for _ in range(300)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays), (min(delays), max(delays), ceiling)


def test_delays_grow_exponentially_until_the_cap() -> None:
    policy = Backoff(1.0, 8.0)
    # ceilings 1, 2, 4, 8, 8: the lower bound of one attempt passes the upper bound of the one before
    assert max(policy.delay_s(1) for _ in range(200)) <= 1.0
    assert min(policy.delay_s(3) for _ in range(200)) >= 2.0
    assert max(policy.delay_s(3) for _ in range(200)) <= 4.0
    assert min(policy.delay_s(10) for _ in range(200)) >= 4.0


def test_delay_never_exceeds_max() -> None:
    policy = Backoff(0.05, 0.2)
    assert max(policy.delay_s(a) for a in range(1, 200) for _ in range(20)) <= 0.2


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(1.0, 60.0).delay_s(10**9) <= 60.0


def test_delays_are_jittered() -> None:
    policy = Backoff(1.0, 60.0)
    assert len({policy.delay_s(4) for _ in range(50)}) > 1


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    backoff = Backoff(0.5, 10.0, jitter=False)
    assert [backoff.delay_s(a) for a in (1, 2, 3, 4, 5, 6, 100)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_zero_base_means_immediate_retry() -> None:
    assert Backoff(0.0, 0.0).delay_s(3) == 0.0
