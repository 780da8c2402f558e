"""Actuators: what reads and changes the size of a pool of workers.

* :class:`~scaler.actuators.local.LocalActuator`: worker processes on this machine
  (``agentbus up --autoscale``); scale-down picks the idlest replicas and SIGTERMs them.
* :class:`~scaler.actuators.kubernetes.KubernetesActuator`: a Deployment's ``scale``
  subresource; scale-down first sets ``controller.kubernetes.io/pod-deletion-cost`` so the
  ReplicaSet deletes the idlest pods.
* :class:`MemoryActuator`: the in-memory twin for tests.

Either way the retired replicas drain (SIGTERM): nothing in flight is lost.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

__all__ = ["Actuator", "MemoryActuator", "ScaleResult"]


class ScaleResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a resize did: sizes, and on scale-down the replicas chosen and their in-flight counts."""

    before: int
    after: int
    retired: tuple[str, ...] = ()
    inflight: dict[str, float] = {}
    """In-flight count per replica as read before choosing (``inf``: unknown, treated as busy)."""


class Actuator(Protocol):
    """Reads and sets the replica count of one pool."""

    async def current(self) -> int:
        """Replicas the pool has now (not counting ones already retiring)."""
        ...

    async def scale(self, replicas: int) -> ScaleResult:
        """Resize to ``replicas``; on scale-down retire the idlest first."""
        ...

    async def aclose(self) -> None:
        """Release connections (the pool itself keeps running)."""
        ...


class MemoryActuator:
    """A pool that is just a number; ``fail`` makes the next calls raise it."""

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas
        self.history: list[int] = [replicas]
        self.fail: Exception | None = None

    async def current(self) -> int:
        """The number."""
        if self.fail is not None:
            raise self.fail
        return self.replicas

    async def scale(self, replicas: int) -> ScaleResult:
        """Set the number."""
        if self.fail is not None:
            raise self.fail
        before, self.replicas = self.replicas, replicas
        self.history.append(replicas)
        return ScaleResult(before, replicas)

    async def aclose(self) -> None:
        """Nothing to close."""
