"""Laws of the scaling policy over arbitrary readings and histories (Hypothesis).

Whatever the metrics say: the size stays in [min, max]; a missing reading never
shrinks the pool; growth per period never exceeds the step; every decision that
changes nothing says why, and every change is a scale reason.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scaler.policy import PolicyState, Reading, Reason, decide
from scaler.spec import MetricKind, MetricTarget, PolicySpec

SPEC = PolicySpec(
    metrics=(
        MetricTarget(name="cpu", target=0.7, kind=MetricKind.AVERAGE),
        MetricTarget(name="queue_depth", target=10, kind=MetricKind.TOTAL),
    ),
    min_replicas=1,
    max_replicas=12,
    down_window_s=60,
)

values = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6), st.just(float("nan")))
steps = st.lists(st.tuples(st.floats(min_value=0.5, max_value=30), values, values), min_size=1, max_size=60)


@given(start=st.integers(min_value=1, max_value=12), trace=steps)
@settings(max_examples=300, deadline=None)
def test_laws_hold_along_any_trace(start: int, trace: list[tuple[float, float | None, float | None]]) -> None:
    state, current, now = PolicyState(), start, 0.0
    for dt, cpu, depth in trace:
        now += dt
        readings = {"cpu": Reading(cpu, now), "queue_depth": Reading(depth, now)}
        d, state = decide(SPEC, state, readings, current=current, now_s=now)
        assert SPEC.min_replicas <= d.desired <= SPEC.max_replicas
        assert d.detail
        if cpu is None or depth is None or cpu != cpu or depth != depth:  # missing or NaN
            assert d.desired >= current, d
        if d.desired > current:
            assert d.reason in (Reason.SCALE_UP, Reason.ACTIVATE)
            added = sum(n for t, n in state.scale_events if t > now - SPEC.up_period_s and n > 0)
            base = current - added
            assert d.desired <= max(base + SPEC.up_step_replicas, 2 * base)
        elif d.desired < current:
            assert d.reason is Reason.SCALE_DOWN
            assert current - d.desired <= SPEC.down_step_replicas
        else:
            assert d.reason not in (Reason.SCALE_UP, Reason.SCALE_DOWN, Reason.ACTIVATE)
        state = state.scaled(now, current, d.desired)
        current = d.desired
