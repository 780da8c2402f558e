"""Policy replay: metric traces through the pure :func:`scaler.policy.decide`, in microseconds.

Each trace is a function of time and of the current size (closed loop: a per-replica
CPU reading falls as replicas are added, as it would in a real pool), evaluated every
``period_s`` with a perfect actuator. What must hold: a step scales up at the first
evaluation that sees it; a ramp down waits out the window; +-15 % noise makes at most
one change per 5 minutes; an outage holds; min/max always hold; reasons are right.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from scaler.policy import Decision, PolicyState, Reading, Reason, decide
from scaler.spec import MetricKind, MetricTarget, PolicySpec

CPU = MetricTarget(name="cpu", target=0.7, kind=MetricKind.AVERAGE)
QUEUE = MetricTarget(name="queue_depth", target=10.0, kind=MetricKind.TOTAL)
SPEC = PolicySpec(metrics=(CPU, QUEUE), min_replicas=1, max_replicas=20)

Trace = Callable[[float, int], dict[str, float | None]]
"""``trace(t, current) -> {metric: value or None}``."""


def replay(
    spec: PolicySpec, trace: Trace, *, start: int, until_s: float, period_s: float = 15.0
) -> list[Decision]:
    """Evaluate ``trace`` every ``period_s`` from t=0 to ``until_s``; the pool follows every decision."""
    state, current, out = PolicyState(), start, []
    t = 0.0
    while t <= until_s:
        readings = {
            name: Reading(v, t, "" if v is not None else "outage") for name, v in trace(t, current).items()
        }
        d, state = decide(spec, state, readings, current=current, now_s=t)
        out.append(d)
        state = state.scaled(t, current, d.desired)
        current = d.desired
        t += period_s
    return out


def changes(ds: list[Decision]) -> list[Decision]:
    return [d for d in ds if d.changed]


def one(readings: dict[str, float | None], *, current: int, spec: PolicySpec = SPEC) -> Decision:
    state = PolicyState()
    return decide(spec, state, {k: Reading(v, 0.0) for k, v in readings.items()}, current=current, now_s=0.0)[
        0
    ]


def test_step_load_scales_up_at_the_first_evaluation_that_sees_it_within_step_limits() -> None:
    def trace(t: float, current: int) -> dict[str, float | None]:
        backlog = 0.0 if t < 300 else 400.0  # 40 replicas' worth, capped by max=20
        return {"cpu": 0.1, "queue_depth": backlog}

    ds = replay(SPEC, trace, start=2, until_s=600)
    first_seen = next(d for d in ds if d.at_s >= 300)
    assert first_seen.reason is Reason.SCALE_UP
    assert first_seen.desired > 2
    assert not changes([d for d in ds if d.at_s < 300])  # idle, but a fresh scaler waits out its window
    ups = changes([d for d in ds if d.at_s >= 300])
    assert [d.desired for d in ups] == [6, 12, 20]  # +4 (more than +100 % of 2), then +100 %, then max
    for d in ups:
        assert d.desired <= max(d.current + 4, 2 * d.current)  # HPA default: +4 or +100 % per 15 s
    assert ds[-1].desired == 20
    assert ds[-1].reason is Reason.AT_MAX


def test_ramp_down_waits_out_the_window_then_steps_down_one_replica_per_period() -> None:
    def trace(t: float, current: int) -> dict[str, float | None]:
        backlog = 100.0 if t < 600 else max(0.0, 100.0 - (t - 600) / 3)  # empty 300 s after t=600
        return {"cpu": 0.05, "queue_depth": backlog}

    ds = replay(SPEC, trace, start=10, until_s=1800)
    downs = changes(ds)
    assert downs, "never scaled down"
    first_low = next(d.at_s for d in ds if max(v.desired or 0 for v in d.metrics) < d.current)
    assert downs[0].at_s >= first_low + 300 - 15  # the window (the evaluation grid is 15 s)
    assert all(d.current - d.desired == 1 for d in downs)  # -1 per period
    assert all(b.at_s - a.at_s >= 15 for a, b in itertools.pairwise(downs))
    held = [d for d in ds if first_low <= d.at_s < downs[0].at_s]
    assert held
    assert all(d.reason is Reason.STABILIZING for d in held)
    assert ds[-1].desired == 1  # min_replicas


@pytest.mark.parametrize("seed", range(20))
def test_noise_of_15_percent_around_target_changes_at_most_once_per_5_minutes(seed: int) -> None:
    rng = random.Random(seed)
    demand_cores = 4 * CPU.target  # exactly 4 replicas' worth of CPU

    def trace(t: float, current: int) -> dict[str, float | None]:
        noise = rng.uniform(-0.15, 0.15)
        return {
            "cpu": demand_cores / current * (1 + noise),
            "queue_depth": 40.0 * (1 + rng.uniform(-0.15, 0.15)),
        }

    ds = replay(SPEC, trace, start=4, until_s=3600)
    times = [d.at_s for d in changes(ds)]
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 300) <= 1, f"changes at {times}"


def test_metric_outage_holds_the_size_and_never_reads_as_zero() -> None:
    def trace(t: float, current: int) -> dict[str, float | None]:
        if 300 <= t < 1200:  # a 15-minute Prometheus outage at peak (KEDA #3065)
            return {"cpu": None, "queue_depth": None}
        return {"cpu": 0.7 * 8 / current, "queue_depth": 80.0}

    ds = replay(SPEC, trace, start=8, until_s=1800)
    during = [d for d in ds if 300 <= d.at_s < 1200]
    assert all(d.desired == 8 and d.reason is Reason.METRIC_MISSING for d in during)
    assert "outage" in during[0].detail
    assert all(d.desired == 8 for d in ds)


def test_one_missing_metric_blocks_scale_down_but_not_scale_up() -> None:
    down = one({"cpu": None, "queue_depth": 0.0}, current=5)
    assert (down.desired, down.reason) == (5, Reason.METRIC_MISSING)
    assert "cpu missing" in down.detail
    up = one({"cpu": None, "queue_depth": 100.0}, current=5)
    assert (up.desired, up.reason) == (10, Reason.SCALE_UP)


def test_stale_and_invalid_readings_hold() -> None:
    state = PolicyState()
    old = {"cpu": Reading(0.0, 0.0), "queue_depth": Reading(0.0, 0.0)}
    d, _ = decide(SPEC, state, old, current=5, now_s=61.0)
    assert (d.desired, d.reason) == (5, Reason.METRIC_MISSING)
    assert {v.status for v in d.metrics} == {"stale"}
    nan = one({"cpu": math.nan, "queue_depth": -1.0}, current=5)
    assert (nan.desired, nan.reason) == (5, Reason.METRIC_MISSING)
    assert {v.status for v in nan.metrics} == {"invalid"}


def test_min_and_max_are_never_crossed() -> None:
    spec = PolicySpec(metrics=(CPU, QUEUE), min_replicas=2, max_replicas=4)
    rng = random.Random(7)

    def trace(t: float, current: int) -> dict[str, float | None]:
        return {"cpu": rng.choice([0.0, 0.1, 5.0, None]), "queue_depth": rng.choice([0.0, 1e6, None])}

    ds = replay(spec, trace, start=2, until_s=7200)
    assert all(2 <= d.desired <= 4 for d in ds)
    assert one({"cpu": 0.1, "queue_depth": 0.0}, current=9, spec=spec).reason is Reason.ENFORCE_MAX
    below = one({"cpu": None, "queue_depth": None}, current=0, spec=spec)
    assert (below.desired, below.reason) == (2, Reason.ENFORCE_MIN)


@pytest.mark.parametrize(
    ("readings", "current", "desired", "reason"),
    [
        ({"cpu": 0.7, "queue_depth": 40.0}, 4, 4, Reason.WITHIN_TOLERANCE),
        ({"cpu": 0.75, "queue_depth": 43.0}, 4, 4, Reason.WITHIN_TOLERANCE),  # ratios 1.07, 1.075
        ({"cpu": 0.1, "queue_depth": 60.0}, 4, 6, Reason.SCALE_UP),
        ({"cpu": 1.4, "queue_depth": 0.0}, 2, 4, Reason.SCALE_UP),  # cpu 2x target
        ({"cpu": 0.1, "queue_depth": 1e9}, 20, 20, Reason.AT_MAX),
        ({"cpu": 0.0, "queue_depth": 0.0}, 1, 1, Reason.AT_MIN),
        ({"cpu": 0.0, "queue_depth": 0.0}, 3, 3, Reason.STABILIZING),  # the down window starts now
        ({"cpu": None, "queue_depth": None}, 3, 3, Reason.METRIC_MISSING),
    ],
)
def test_reasons(readings: dict[str, float | None], current: int, desired: int, reason: Reason) -> None:
    d = one(readings, current=current)
    assert (d.desired, d.reason) == (desired, reason), d.detail


def test_backlog_at_zero_replicas_activates_at_least_one() -> None:
    spec = PolicySpec(metrics=(CPU, QUEUE), min_replicas=0, max_replicas=4)
    d = one({"cpu": None, "queue_depth": 0.5}, current=0, spec=spec)  # cpu cannot exist at 0 replicas
    assert (d.desired, d.reason) == (1, Reason.ACTIVATE)
    idle = one({"cpu": None, "queue_depth": 0.0}, current=0, spec=spec)
    assert (idle.desired, idle.reason) == (0, Reason.WITHIN_TOLERANCE)
    dark = one({"cpu": None, "queue_depth": None}, current=0, spec=spec)
    assert (dark.desired, dark.reason) == (0, Reason.METRIC_MISSING)


def test_down_step_spent_this_period_holds_with_its_reason() -> None:
    spec = PolicySpec(metrics=(QUEUE,), min_replicas=1, max_replicas=10, down_window_s=0)
    state = PolicyState().scaled(0.0, 6, 5)  # one replica went 5 s ago
    d, _ = decide(spec, state, {"queue_depth": Reading(0.0, 5.0)}, current=5, now_s=5.0)
    assert (d.desired, d.reason, d.limited) == (5, Reason.STEP_LIMITED, True)
    later, _ = decide(spec, state, {"queue_depth": Reading(0.0, 16.0)}, current=5, now_s=16.0)
    assert (later.desired, later.reason) == (4, Reason.SCALE_DOWN)


def test_decide_is_pure() -> None:
    state = PolicyState(recommendations=((0.0, 5),))
    readings = {"cpu": Reading(0.1, 10.0), "queue_depth": Reading(0.0, 10.0)}
    a = decide(SPEC, state, readings, current=5, now_s=10.0)
    b = decide(SPEC, state, readings, current=5, now_s=10.0)
    assert a == b
    assert state == PolicyState(recommendations=((0.0, 5),))
