"""The scaler's own Prometheus metrics (registered on a registry passed in)."""

from __future__ import annotations

import math

from prometheus_client import Counter, Gauge
from prometheus_client.registry import CollectorRegistry

from scaler.actuators import ScaleResult
from scaler.policy import Decision

__all__ = ["ScalerMetrics"]


class ScalerMetrics:
    """``agentbus_scaler_*``: sizes, decisions by reason, metric values, errors by stage."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.current = Gauge("agentbus_scaler_current_replicas", "Replicas the pool had", registry=registry)
        self.desired = Gauge(
            "agentbus_scaler_desired_replicas", "Replicas the policy asked for", registry=registry
        )
        self.decisions = Counter(
            "agentbus_scaler_decisions",
            "Evaluations by the reason of their decision",
            ["reason"],
            registry=registry,
        )
        self.resizes = Counter(
            "agentbus_scaler_resizes", "Resizes carried out", ["direction"], registry=registry
        )
        self.value = Gauge(
            "agentbus_scaler_metric_value",
            "Last reading of each metric (NaN when unknown)",
            ["metric"],
            registry=registry,
        )
        self.errors = Counter(
            "agentbus_scaler_errors", "Failures by stage (read, current, scale)", ["stage"], registry=registry
        )
        self.last = Gauge(
            "agentbus_scaler_last_evaluation_timestamp_seconds",
            "Wall clock of the last evaluation",
            registry=registry,
        )

    def observe(self, decision: Decision, action: ScaleResult | None) -> None:
        """Record one evaluation."""
        self.current.set(decision.current)
        self.desired.set(decision.desired)
        self.decisions.labels(decision.reason.value).inc()
        for v in decision.metrics:
            self.value.labels(v.name).set(v.value if v.value is not None else math.nan)
        if action is not None and action.after != action.before:
            self.resizes.labels("up" if action.after > action.before else "down").inc()
        self.last.set_to_current_time()
