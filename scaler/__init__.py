"""Scaling the worker pool: the local process supervisor today; metric sources and policy next."""

from scaler.local import LocalSupervisor, ReplicaInfo

__all__ = ["LocalSupervisor", "ReplicaInfo"]
