"""The autoscaler: metric sources, a pure scaling policy, actuators and the control loop.

``import scaler`` gives the pieces most users combine; the modules hold the rest:
:mod:`scaler.policy` (the pure rule), :mod:`scaler.sources` (Prometheus, direct scrape),
:mod:`scaler.actuators` (local processes, Kubernetes), :mod:`scaler.loop`,
:mod:`scaler.config`, :mod:`scaler.local` (the process supervisor of ``agentbus up``).
"""

from scaler.config import ScalerConfig, load_config
from scaler.local import LocalSupervisor, ReplicaInfo
from scaler.loop import Evaluation, Scaler
from scaler.policy import Decision, PolicyState, Reading, Reason, decide
from scaler.spec import MetricKind, MetricTarget, PolicySpec

__all__ = [
    "Decision",
    "Evaluation",
    "LocalSupervisor",
    "MetricKind",
    "MetricTarget",
    "PolicySpec",
    "PolicyState",
    "Reading",
    "Reason",
    "ReplicaInfo",
    "Scaler",
    "ScalerConfig",
    "decide",
    "load_config",
]
