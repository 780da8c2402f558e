"""The scaling policy: a pure function from metric readings and a short history to a replica count.

It is the Kubernetes HPA's rule, written so a replay of a recorded trace runs in
microseconds: no clock, no I/O, ``now_s`` is an argument and the history is a value.

* Per metric, ``desired = ceil(current * value / target)``; a ``TOTAL`` metric (a
  backlog) is divided among the replicas first, so its rule is ``ceil(value / target)``.
  A ratio within ``tolerance`` of 1 keeps the current size. The max over metrics wins.
* A missing, empty, invalid or stale reading never reads as zero (KEDA #3065): it
  blocks any scale-down; the other metrics may still scale up. With no valid reading
  at all the size holds.
* With zero replicas only ``TOTAL`` metrics can speak: a backlog > 0 scales to >= 1.
* Stabilization (HPA ``behavior``): scale up to the *lowest* recommendation of the
  up window, down to the *highest* of the down window; so a dip must last the whole
  down window before a replica goes. With no history (a fresh start, or after an
  outage longer than the windows) the current size counts as recommended until now,
  so a restarted scaler never shrinks the pool before a full window has passed.
* Step limits: up by ``max(+up_step_replicas, +up_step_percent)`` per ``up_period_s``,
  down by ``down_step_replicas`` per ``down_period_s``; then ``[min, max]``.

Every :class:`Decision` names its :class:`Reason` and a one-line detail.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from scaler.spec import MetricKind, MetricTarget, PolicySpec

__all__ = [
    "Decision",
    "MetricVerdict",
    "PolicyState",
    "Reading",
    "Reason",
    "decide",
]


@dataclass(frozen=True, slots=True)
class Reading:
    """One metric value as a source read it; ``value=None`` means unknown and ``error`` says why."""

    value: float | None
    at_s: float
    """When it was measured, on the same clock as ``now_s``."""
    error: str = ""


class Reason(enum.StrEnum):
    """Why the pool has the size it is given (the ``reason`` label of the decision counter)."""

    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    ACTIVATE = "activate"  # zero replicas and a backlog
    WITHIN_TOLERANCE = "within_tolerance"
    STABILIZING = "stabilizing"  # a change is recommended, the window is not over
    STEP_LIMITED = "step_limited"  # the step budget of the period is spent
    METRIC_MISSING = "metric_missing"  # a missing/stale metric blocks the change
    AT_MIN = "at_min"
    AT_MAX = "at_max"
    ENFORCE_MIN = "enforce_min"  # the pool was below min_replicas
    ENFORCE_MAX = "enforce_max"  # the pool was above max_replicas
    ACTUATOR_ERROR = "actuator_error"  # the loop could not read the pool's size: nothing changes


class MetricVerdict(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one metric said in one evaluation."""

    name: str
    status: str  # ok | missing | stale | invalid | no_replicas
    value: float | None = None
    target: float = 0.0
    desired: int | None = None
    error: str = ""


class Decision(msgspec.Struct, frozen=True, omit_defaults=True):
    """The outcome of one evaluation."""

    at_s: float
    current: int
    desired: int
    reason: Reason
    detail: str
    metrics: tuple[MetricVerdict, ...] = ()
    limited: bool = False
    """The step limit or a bound cut the change short."""

    @property
    def changed(self) -> bool:
        """True if the pool should be resized."""
        return self.desired != self.current


@dataclass(frozen=True, slots=True)
class PolicyState:
    """The history :func:`decide` needs: past recommendations and past resizes, both timestamped."""

    recommendations: tuple[tuple[float, int], ...] = ()
    scale_events: tuple[tuple[float, int], ...] = ()
    """``(at_s, replicas added)``, negative for removals."""

    def scaled(self, now_s: float, before: int, after: int) -> PolicyState:
        """Record a resize that really happened (the loop calls this after the actuator succeeded)."""
        if before == after:
            return self
        return PolicyState(self.recommendations, (*self.scale_events, (now_s, after - before)))


_EPS = 1e-9  # float noise: 3 * 0.1 / 0.1 must not ceil to 4


def _verdict(
    m: MetricTarget, reading: Reading | None, current: int, spec: PolicySpec, now_s: float
) -> MetricVerdict:
    if reading is None or reading.value is None:
        error = reading.error if reading is not None and reading.error else "no reading"
        return MetricVerdict(m.name, "missing", target=m.target, error=error)
    value = reading.value
    if not math.isfinite(value) or value < 0:
        return MetricVerdict(m.name, "invalid", value=None, target=m.target, error=f"value {value!r}")
    age = now_s - reading.at_s
    if age > spec.max_metric_age_s:
        return MetricVerdict(m.name, "stale", value, m.target, error=f"{age:.0f}s old")
    if current == 0:
        if m.kind is MetricKind.AVERAGE:
            return MetricVerdict(m.name, "no_replicas", value, m.target)
        wake = max(1, math.ceil(value / m.target - _EPS)) if value > 0 else 0
        return MetricVerdict(m.name, "ok", value, m.target, desired=wake)
    ratio = value / m.target if m.kind is MetricKind.AVERAGE else value / (m.target * current)
    desired = current if abs(ratio - 1.0) <= spec.tolerance else math.ceil(current * ratio - _EPS)
    return MetricVerdict(m.name, "ok", value, m.target, desired=desired)


def _in_window(events: tuple[tuple[float, int], ...], now_s: float, window_s: float) -> list[int]:
    return [v for t, v in events if t > now_s - window_s]


def decide(
    spec: PolicySpec, state: PolicyState, readings: Mapping[str, Reading], *, current: int, now_s: float
) -> tuple[Decision, PolicyState]:
    """One evaluation: the size the pool should have now, why, and the updated history."""
    verdicts = tuple(_verdict(m, readings.get(m.name), current, spec, now_s) for m in spec.metrics)

    def out(desired: int, reason: Reason, detail: str, limited: bool = False) -> Decision:
        return Decision(now_s, current, desired, reason, detail, verdicts, limited)

    if current < spec.min_replicas:
        return out(spec.min_replicas, Reason.ENFORCE_MIN, f"below min_replicas={spec.min_replicas}"), state
    if current > spec.max_replicas:
        return out(spec.max_replicas, Reason.ENFORCE_MAX, f"above max_replicas={spec.max_replicas}"), state

    valid = [v for v in verdicts if v.status == "ok"]
    broken = [v for v in verdicts if v.status not in ("ok", "no_replicas")]
    broken_txt = ", ".join(f"{v.name} {v.status} ({v.error})" for v in broken)
    if not valid:
        return out(current, Reason.METRIC_MISSING, f"hold: {broken_txt or 'no metric at 0 replicas'}"), state
    top = max(valid, key=lambda v: v.desired or 0)
    raw = top.desired or 0
    blocked = bool(broken) and raw < current
    if blocked:
        raw = current  # a metric we cannot read might be the one that needs these replicas

    # Stabilization: the HPA keeps prenormalized recommendations and bounds by them.
    keep_s = max(spec.up_window_s, spec.down_window_s)
    past = tuple((t, r) for t, r in state.recommendations if t > now_s - keep_s)
    if not past:  # a (re)started scaler knows no history: as if `current` had been recommended until now
        past = ((now_s, current),)
    new_state = PolicyState(
        (*past, (now_s, raw)), tuple(e for e in state.scale_events if _counts(e, now_s, spec))
    )
    up_rec = min([raw, *(r for t, r in past if t > now_s - spec.up_window_s)])
    down_rec = max([raw, *(r for t, r in past if t > now_s - spec.down_window_s)])
    stabilized = min(max(current, up_rec), down_rec)  # never against the direction of the raw change

    # Step limits, then bounds.
    desired, limited = stabilized, False
    if stabilized > current:
        start = current - sum(d for d in _in_window(state.scale_events, now_s, spec.up_period_s) if d > 0)
        cap = max(start + spec.up_step_replicas, math.ceil(start * (1 + spec.up_step_percent / 100) - _EPS))
        if stabilized > cap:
            desired, limited = max(cap, current), True
    elif stabilized < current:
        start = current - sum(d for d in _in_window(state.scale_events, now_s, spec.down_period_s) if d < 0)
        floor = start - spec.down_step_replicas
        if spec.down_step_percent > 0:
            floor = min(floor, math.ceil(start * (1 - spec.down_step_percent / 100) - _EPS))
        if stabilized < floor:
            desired, limited = min(floor, current), True
    bounded = min(max(desired, spec.min_replicas), spec.max_replicas)
    limited = limited or bounded != desired
    desired = bounded

    why = f"{top.name}={top.value:g} target={top.target:g} -> {raw}"
    if desired > current:
        reason = Reason.ACTIVATE if current == 0 else Reason.SCALE_UP
        cut = f"; cut to {desired} by the step limit or max" if limited else ""
        return out(desired, reason, why + cut, limited), new_state
    if desired < current:
        cut = f"; cut to {desired} by the step limit or min" if limited else ""
        return out(desired, Reason.SCALE_DOWN, f"{why} (window max {down_rec}){cut}", limited), new_state
    if blocked:
        return out(current, Reason.METRIC_MISSING, f"{why}; scale-down blocked: {broken_txt}"), new_state
    if raw > current:
        if current >= spec.max_replicas:
            return out(current, Reason.AT_MAX, f"{why}; at max_replicas={spec.max_replicas}"), new_state
        if stabilized == current:
            return out(current, Reason.STABILIZING, f"{why}; up window {spec.up_window_s:g}s"), new_state
        return out(current, Reason.STEP_LIMITED, f"{why}; up step spent this period", True), new_state
    if raw < current:
        if current <= spec.min_replicas:
            return out(current, Reason.AT_MIN, f"{why}; at min_replicas={spec.min_replicas}"), new_state
        if stabilized == current:
            return out(
                current, Reason.STABILIZING, f"{why}; window max {down_rec} in {spec.down_window_s:g}s"
            ), new_state
        return out(current, Reason.STEP_LIMITED, f"{why}; down step spent this period", True), new_state
    return out(current, Reason.WITHIN_TOLERANCE, why), new_state


def _counts(event: tuple[float, int], now_s: float, spec: PolicySpec) -> bool:
    """Keep a scale event while a step period still counts it."""
    return event[0] > now_s - max(spec.up_period_s, spec.down_period_s)
