"""Cluster-wide per-tenant budgets and rate limits on CRDT counters, without a central store.

Both decide locally, on this replica's view of a counter that every replica adds
to, so they are approximate in one known direction: a replica does not yet see
what the others admitted during the last gossip delay ``D`` (the time a delta
needs to reach every replica: a few 200 ms rounds, bounded under loss by the
push-pull interval). Hence, with ``R`` replicas admitting concurrently:

* :class:`Budget` (a PN-counter of what was spent, refunds subtract): the spent
  total can pass ``limit`` by at most what the other replicas spent within ``D``
  of the moment it was reached. With no traffic for ``D`` it is exact again.
* :class:`RateLimiter` (a sliding window over two per-window counters): in any
  window, admissions can pass ``rate_per_s * window_s`` by at most what the other
  replicas admitted in the last ``D``; never more than ``R`` times the limit, which
  is the worst case when ``D >= window_s``. Windows follow each replica's wall
  clock, so clock skew ``s`` adds about ``s / window_s`` of one window's limit.

Neither ever under-admits because of gossip: views only lag, and a lagging view
counts less, not more. Counters live in the tenant's store under reserved ``~``
names, so a handler can read its budget but not rewrite it.
"""

from __future__ import annotations

from state._tenant import TenantState
from state.counters import GCounter, PNCounter
from state.store import CounterView, PNCounterView, Store

__all__ = ["Budget", "RateLimiter"]


class Budget:
    """Spend against ``limit`` across the cluster; optionally renewed every ``period_s``."""

    def __init__(self, store: Store, name: str, *, limit: int, period_s: float | None = None) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if period_s is not None and period_s <= 0:
            raise ValueError("period_s must be > 0")
        self.limit = limit
        self.period_ns = None if period_s is None else int(period_s * 1e9)
        self._store = store
        self._t: TenantState = store._t
        self._name = f"~budget.{name}"

    def _counter_name(self, *, create: bool = False) -> str:
        if self.period_ns is None:
            return self._name
        period = self._t.clock() // self.period_ns
        name = f"{self._name}.{period}"
        if create and self._t.get(name, PNCounter) is None:  # collectable once the next period is over
            self._t.create(name, PNCounter(expires_at=(period + 2) * self.period_ns))
        return name

    @property
    def spent(self) -> int:
        """What the cluster spent (this period), as this replica sees it.

        Each replica's refunds give back only what that replica charged (a refund follows
        its own charge), so its part counts ``max(0, charged - refunded)``: a replica whose
        refunds exceed its charges (a bug, or a forged slot) cannot cancel the others' spending.
        """
        crdt = self._t.get(self._counter_name(), PNCounter)
        if crdt is None:
            return 0
        n = crdt.n
        if not n:
            return crdt.ptotal
        return sum(max(0, p - n.get(r, 0)) for r, p in crdt.p.items())

    @property
    def remaining(self) -> int:
        """``limit - spent``, never below 0."""
        return max(0, self.limit - self.spent)

    def try_spend(self, n: int = 1) -> bool:
        """Spend ``n`` if it fits in what is left; False (and nothing spent) otherwise."""
        if type(n) is not int or n < 0:
            raise ValueError(f"amount must be an int >= 0, got {n!r}")
        name = self._counter_name(create=True)
        if self.spent + n > self.limit:
            return False
        self._store._internal(name, PNCounterView).increment(n)
        return True

    def charge(self, n: int) -> None:
        """Count ``n`` as spent whether or not it fits: a cost known only afterwards (model tokens).

        Pair it with a check of :attr:`remaining` before the spending starts; the total then
        passes ``limit`` by at most the last charge (plus the gossip bound above).
        """
        if type(n) is not int or n < 0:
            raise ValueError(f"amount must be an int >= 0, got {n!r}")
        if n:
            self._store._internal(self._counter_name(create=True), PNCounterView).increment(n)

    def refund(self, n: int) -> None:
        """Give back ``n`` of what was spent (a failed call that cost nothing)."""
        self._store._internal(self._counter_name(create=True), PNCounterView).decrement(n)

    @property
    def resets_in_s(self) -> float | None:
        """Seconds until the period rolls over (periods are aligned to the Unix epoch); None if never."""
        if self.period_ns is None:
            return None
        now = self._t.clock()
        return (self.period_ns - now % self.period_ns) / 1e9


class RateLimiter:
    """At most ``rate_per_s`` acquisitions per second across the cluster (sliding window)."""

    def __init__(self, store: Store, name: str, *, rate_per_s: float, window_s: float = 1.0) -> None:
        if rate_per_s <= 0 or window_s <= 0:
            raise ValueError("rate_per_s and window_s must be > 0")
        self.limit = rate_per_s * window_s
        """Acquisitions allowed per window."""
        self.window_ns = int(window_s * 1e9)
        self._store = store
        self._t: TenantState = store._t
        self._name = f"~rate.{name}"
        self._window = -1

    def _count(self, window: int) -> int:
        crdt = self._t.get(f"{self._name}.{window}", GCounter)
        return 0 if crdt is None else crdt.value

    def retry_after_s(self, n: int = 1, now_ns: int | None = None) -> float:
        """How long until ``n`` more fit if nobody acquires meanwhile (this replica's view).

        The sliding estimate drops as the previous window's weight fades, then as the
        current window (the previous one by then) fades in turn.
        """
        now = self._t.clock() if now_ns is None else now_ns
        window, into = divmod(now, self.window_ns)
        excess = self.estimate(now) + n - self.limit
        if excess <= 0:
            return 0.0
        window_s = self.window_ns / 1e9
        previous, current = self._count(window - 1), self._count(window)
        fading = previous * (1.0 - into / self.window_ns)
        if previous and excess <= fading:
            return excess * window_s / previous
        wait_s = (self.window_ns - into) / 1e9
        return wait_s + ((excess - fading) * window_s / current if current else window_s)

    def estimate(self, now_ns: int | None = None) -> float:
        """Acquisitions in the sliding window ending now (the previous window weighted by its overlap)."""
        now = self._t.clock() if now_ns is None else now_ns
        window, into = divmod(now, self.window_ns)
        overlap = 1.0 - into / self.window_ns
        return self._count(window - 1) * overlap + self._count(window)

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` if the window has room; False (and nothing taken) otherwise."""
        if type(n) is not int or n < 0:
            raise ValueError(f"amount must be an int >= 0, got {n!r}")
        now = self._t.clock()
        window = now // self.window_ns
        if window != self._window:
            self._roll(window)
        if self.estimate(now) + n > self.limit:
            return False
        name = f"{self._name}.{window}"
        if self._t.get(name, GCounter) is None:  # collectable once the next window is over
            self._t.create(name, GCounter(expires_at=(window + 2) * self.window_ns))
        self._store._internal(name, CounterView).increment(n)
        return True

    def _roll(self, window: int) -> None:
        # windows before the previous one are no longer read: drop them here (a peer may
        # still send one; collect_expired drops it after its expiry)
        for old in (self._window - 1, self._window):
            name = f"{self._name}.{old}"
            if old < window - 1 and name in self._t.entries:
                self._t.forget(name)
        self._window = window
