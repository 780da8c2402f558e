"""What an operator configures about the policy: targets, bounds, windows and step limits.

msgspec Structs, so the scaler's config file decodes straight into them and a wrong
key or type is a clear error at start. Defaults are the HPA's unless said otherwise.
"""

from __future__ import annotations

import enum

import msgspec

from agentbus.errors import ConfigError

__all__ = ["DEFAULT_METRICS", "MetricKind", "MetricTarget", "PolicySpec"]


class MetricKind(enum.StrEnum):
    """How a metric's value relates to the replica count."""

    AVERAGE = "average"
    """A per-replica value (CPU cores per replica): ``desired = ceil(current * value / target)``."""
    TOTAL = "total"
    """A value of the whole pool (backlog): ``desired = ceil(value / target)``; HPA's ``AverageValue``."""


class MetricTarget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One metric the policy follows and the value per replica it aims for."""

    name: str
    target: float
    kind: MetricKind = MetricKind.AVERAGE


DEFAULT_METRICS = (
    # One worker is one event loop: it cannot use more than one core, and at 0.7 it still
    # has room for heartbeats and acks (the HPA's usual CPU target is 70-80 %).
    MetricTarget(name="cpu", target=0.7, kind=MetricKind.AVERAGE),
    # num_pending + num_ack_pending per replica; 10 is KEDA's lagThreshold default. Set it
    # near the workers' max_inflight: a full pool then reads as exactly its size.
    MetricTarget(name="queue_depth", target=10.0, kind=MetricKind.TOTAL),
)
"""CPU utilisation and queue depth (docs/autoscaler.md)."""


class PolicySpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Targets, bounds, stabilization windows and step limits of the policy."""

    metrics: tuple[MetricTarget, ...] = DEFAULT_METRICS
    min_replicas: int = 1  # 0 only with a backlog metric that does not come from the workers
    max_replicas: int = 10  # a cost ceiling: someone must choose it, 10 is a laptop-sized guess
    tolerance: float = 0.1  # HPA: ignore ratios within 10 % of the target (noise, rounding)
    up_window_s: float = 0.0  # HPA: react to a burst at once
    down_window_s: float = 300.0  # HPA: a dip must last 5 min before replicas go (no flapping)
    up_step_replicas: int = 4  # HPA: +4 pods ...
    up_step_percent: float = 100.0  # ... or +100 %, whichever is more ...
    up_period_s: float = 15.0  # ... per 15 s
    down_step_replicas: int = 1  # one drain at a time: each retiree hands back its work calmly
    down_step_percent: float = 0.0  # 0: no percentage policy, only the replica step
    down_period_s: float = 15.0  # the HPA's period
    max_metric_age_s: float = 60.0  # older readings are stale: they hold, never scale

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("invalid scaling policy: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Everything wrong with this spec (empty when valid)."""
        out = []
        if self.min_replicas < 0:
            out.append(f"min_replicas={self.min_replicas} is negative")
        if self.max_replicas < 1:
            out.append(f"max_replicas={self.max_replicas} must be >= 1")
        if self.min_replicas > self.max_replicas:
            out.append(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        if not self.metrics:
            out.append("no metrics to follow")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            out.append(f"metric names repeat: {names}")
        out += [
            f"metric {m.name!r}: target must be > 0, not {m.target}" for m in self.metrics if m.target <= 0
        ]
        if not 0 <= self.tolerance < 1:
            out.append(f"tolerance={self.tolerance} must be in [0, 1)")
        for name in ("up_window_s", "down_window_s"):
            if not 0 <= getattr(self, name) <= 3600:  # the HPA's own bound
                out.append(f"{name}={getattr(self, name)} must be in [0, 3600]")
        if self.up_step_replicas < 1 and self.up_step_percent <= 0:
            out.append("up_step_replicas or up_step_percent must allow growth")
        if self.down_step_replicas < 1 and self.down_step_percent <= 0:
            out.append("down_step_replicas or down_step_percent must allow shrinking")
        if self.up_period_s <= 0 or self.down_period_s <= 0:
            out.append("up_period_s and down_period_s must be > 0")
        if self.max_metric_age_s <= 0:
            out.append("max_metric_age_s must be > 0")
        return out
