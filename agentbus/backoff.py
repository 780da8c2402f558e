"""Exponential backoff with equal jitter: the one delay rule of every retry in agentbus.

Attempt ``n`` (1-based) has the ceiling ``base_s * 2**(n-1)``, capped at ``max_s``; the
delay is drawn from ``[ceiling/2, ceiling]``, so a crowd of retries spreads out but none
comes back at once. Used for a task's nak delay, a model call's retry, reloading Redis
snapshots and restarting the embedded nats-server (``jitter=False``: the ceiling itself).
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``base_s * 2**(attempt-1)`` capped at ``max_s``, with equal jitter unless off."""

    __slots__ = ("base_s", "jitter", "max_s")

    def __init__(self, base_s: float, max_s: float, *, jitter: bool = True) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.jitter = jitter

    def ceiling_s(self, attempt: int) -> float:
        """The longest delay after failed attempt ``attempt`` (no overflow for huge attempts)."""
        return min(self.max_s, self.base_s * 2.0 ** min(max(attempt, 1) - 1, 30))

    def delay_s(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt``."""
        ceiling = self.ceiling_s(attempt)
        return ceiling / 2 + random.random() * ceiling / 2 if self.jitter else ceiling
