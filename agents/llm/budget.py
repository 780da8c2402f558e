"""Per-tenant limits of the LLM agents: a token budget per window and a request rate.

:class:`TenantLimits` is the interface; :class:`LocalLimits` keeps the counts in this
process, so with N replicas a tenant may spend up to N budgets. A worker running
shared state (the default) gives its task agents
:class:`~agents.llm.shared_limits.SharedLimits` instead: the same two methods on the
state store's CRDT counters (a PN-counter of tokens per tenant and window, merged by
gossip), approximate within the gossip delay; the agent does not change.

* Budget: tokens reported by the model (``usage``) are charged after each call; a
  tenant at or over its budget is refused with
  :class:`~agentbus.errors.BudgetExceededError` until the window rolls over. The
  task agent rejects the task: the reason lands in the DLQ, other tenants go on.
* Rate: a token bucket per tenant (``requests_per_s``, ``burst``) in front of every
  model call; an empty bucket raises :class:`~agentbus.errors.RateLimitedError` with
  the wait, and the task is retried after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from agentbus.errors import BudgetExceededError, RateLimitedError
from agents.llm.config import LimitsConfig

__all__ = ["MAX_BUCKETS", "LocalLimits", "TenantLimits"]

MAX_BUCKETS = 4096
"""Rate buckets kept before the refilled ones are dropped (idle tenants leave no trace)."""


class TenantLimits(Protocol):
    """What the task agent asks before and tells after each model call."""

    def check(self, tenant: str) -> None:
        """Raise ``BudgetExceededError`` or ``RateLimitedError``, or take one request from the rate."""

    def charge(self, tenant: str, tokens: int) -> None:
        """Count ``tokens`` the model spent for ``tenant``."""


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


class LocalLimits:
    """:class:`TenantLimits` kept in this process's memory."""

    def __init__(self, config: LimitsConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._window_start = clock()
        self.used: dict[str, int] = {}
        """Tokens per tenant in the current window."""
        self._buckets: dict[str, _Bucket] = {}
        self.refused: dict[tuple[str, str], int] = {}
        """Refusals per (tenant, ``budget`` or ``rate``), for the metrics."""

    def _roll(self, now: float) -> None:
        if now - self._window_start >= self.config.budget_window_s:
            self._window_start = now
            self.used.clear()

    def budget_of(self, tenant: str) -> int | None:
        """The tenant's token budget per window (None: unlimited)."""
        return self.config.tenant_budgets.get(tenant, self.config.token_budget)

    def check(self, tenant: str) -> None:
        """Refuse a tenant over budget or over its rate; else take one request from its bucket."""
        cfg = self.config
        now = self._clock()
        budget = self.budget_of(tenant)
        if budget is not None:
            self._roll(now)
            used = self.used.get(tenant, 0)
            if used >= budget:
                self._refused(tenant, "budget")
                resets_in = cfg.budget_window_s - (now - self._window_start)
                raise BudgetExceededError(tenant, used, budget, resets_in)
        rate = cfg.requests_per_s
        if rate is not None:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._forget_full(now)
                bucket = self._buckets[tenant] = _Bucket(float(cfg.burst), now)
            bucket.level = min(float(cfg.burst), bucket.level + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.level < 1.0:
                self._refused(tenant, "rate")
                raise RateLimitedError(tenant, rate, (1.0 - bucket.level) / rate)
            bucket.level -= 1.0

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: a full bucket is what a new one would be."""
        rate, burst = self.config.requests_per_s or 0.0, float(self.config.burst)
        full = [t for t, b in self._buckets.items() if b.level + (now - b.stamp) * rate >= burst]
        for tenant in full:
            del self._buckets[tenant]

    def charge(self, tenant: str, tokens: int) -> None:
        """Add ``tokens`` to the tenant's use in this window."""
        if tokens > 0 and self.budget_of(tenant) is not None:
            self._roll(self._clock())
            self.used[tenant] = self.used.get(tenant, 0) + tokens

    def _refused(self, tenant: str, why: str) -> None:
        key = (tenant, why)
        self.refused[key] = self.refused.get(key, 0) + 1
