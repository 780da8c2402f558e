"""Cluster-wide per-tenant limits of the LLM agents, on the shared state's CRDT counters.

:class:`SharedLimits` implements :class:`~agents.llm.budget.TenantLimits` (the interface
the task agent already uses) with :class:`state.limiter.Budget` and
:class:`state.limiter.RateLimiter` in each tenant's own store, so every worker
counts against one budget and one rate per tenant instead of one each. The worker
installs it when it runs shared state (the default); :class:`~agents.llm.budget.LocalLimits`
stays the fallback for agents run without a worker.

What changes against ``LocalLimits`` (docs/state.md, "Limits"):

* Approximate, bounded by the gossip delay ``D`` (a few 200 ms rounds; the
  push-pull interval, 5 s, under heavy loss): a worker does not yet see what the
  others spent or admitted in the last ``D``. The budget can be passed by the
  last charge of each worker plus what the others spent within ``D``; the rate by
  what the others admitted within ``D`` (never more than R times the limit with R
  workers). Views only lag, so it never refuses because of gossip.
* Budget windows are aligned to the Unix epoch (``budget_window_s`` of 86 400 s
  renews at 00:00 UTC), the same instant on every worker, not at each process's start.
* The rate is a sliding window of ``max(burst / requests_per_s, 1 s)`` holding
  ``requests_per_s x window`` calls: a token bucket's burst over its refill time,
  never shorter than a second, because a window shorter than ``D`` would let each
  worker admit the whole limit before hearing of the others.

The counters are the tenant's reserved ``~budget.llm_tokens.<period>`` and
``~rate.llm_requests.<window>``: handlers of the tenant can read them through
``ctx.state``, not change them, and they never count against the tenant's limits.
"""

from __future__ import annotations

from typing import TypeVar

from agentbus.errors import BudgetExceededError, RateLimitedError
from agents.api import Stores
from agents.llm.config import LimitsConfig
from state.limiter import Budget, RateLimiter
from state.store import Store

__all__ = ["MIN_RATE_WINDOW_S", "SharedLimits"]

MIN_RATE_WINDOW_S = 1.0
"""Shortest sliding window of the shared rate: well above a LAN gossip delay of a few rounds."""


class SharedLimits:
    """:class:`~agents.llm.budget.TenantLimits` on the cluster's shared per-tenant counters."""

    def __init__(self, stores: Stores, config: LimitsConfig) -> None:
        self.config = config
        self._stores = stores
        self._budgets: dict[str, Budget | None] = {}
        self._rates: dict[str, RateLimiter] = {}
        rate = config.requests_per_s
        self.rate_window_s = max(config.burst / rate, MIN_RATE_WINDOW_S) if rate else MIN_RATE_WINDOW_S
        self.refused: dict[tuple[str, str], int] = {}
        """Refusals per (tenant, ``budget`` or ``rate``) by this worker, for the metrics."""

    def _store(self, tenant: str) -> Store:
        return self._stores(tenant)

    def budget(self, tenant: str) -> Budget | None:
        """The tenant's shared token budget (None: unlimited)."""
        store = self._store(tenant)
        if tenant in self._budgets:
            cached = self._budgets[tenant]
            if cached is None or cached._store is store:  # the replica evicted an idle tenant: rebuild
                return cached
        limit = self.config.tenant_budgets.get(tenant, self.config.token_budget)
        budget = None
        if limit is not None:
            window_s = self.config.budget_window_s
            budget = Budget(store, "llm_tokens", limit=limit, period_s=window_s)
        _bounded(self._budgets)[tenant] = budget
        return budget

    def rate(self, tenant: str) -> RateLimiter | None:
        """The tenant's shared request rate (None: unlimited)."""
        rate = self.config.requests_per_s
        if rate is None:
            return None
        store = self._store(tenant)
        limiter = self._rates.get(tenant)
        if limiter is None or limiter._store is not store:
            limiter = _bounded(self._rates)[tenant] = RateLimiter(
                store, "llm_requests", rate_per_s=rate, window_s=self.rate_window_s
            )
        return limiter

    def check(self, tenant: str) -> None:
        """Refuse a tenant over its shared budget or rate; else count one request against the rate."""
        budget = self.budget(tenant)
        if budget is not None and budget.remaining <= 0:
            self._refused(tenant, "budget")
            raise BudgetExceededError(tenant, budget.spent, budget.limit, budget.resets_in_s or 0.0)
        limiter = self.rate(tenant)
        if limiter is not None and not limiter.try_acquire():
            self._refused(tenant, "rate")
            assert self.config.requests_per_s is not None
            raise RateLimitedError(tenant, self.config.requests_per_s, max(0.01, limiter.retry_after_s()))

    def charge(self, tenant: str, tokens: int) -> None:
        """Add ``tokens`` to the tenant's shared spending in this window."""
        budget = self.budget(tenant)
        if budget is not None and tokens > 0:
            budget.charge(tokens)

    def _refused(self, tenant: str, why: str) -> None:
        key = (tenant, why)
        self.refused[key] = self.refused.get(key, 0) + 1


MAX_CACHED = 4096
"""Tenants whose budget and rate views are kept (views only: the counts are in the store)."""

_V = TypeVar("_V")


def _bounded(cache: dict[str, _V]) -> dict[str, _V]:
    """``cache`` with room for one more: the oldest view goes first (it is rebuilt on demand)."""
    while len(cache) >= MAX_CACHED:
        del cache[next(iter(cache))]
    return cache
