"""G-Counter and PN-Counter: one slot per replica id, merged slot by slot with max.

Delta-state (Almeida, Shoker, Baquero 2018): every mutator changes the state in
place and returns a small delta, the replica's own slot, such that
``merge(state, delta) == merge(state, mutated full state)``.

Why not the ``crdts`` package:

* ``crdts.Counter`` keeps one integer merged by max, so +1 on two replicas
  converges to 1: concurrent increments are lost. Wrong for counting.
* ``crdts.CounterSet`` (one PNCounter per counter id) converges when each replica
  increments only its own id, but every increment type-checks against Protocols,
  builds a StateUpdate, updates a GSet and a Lamport clock, and a merge replays
  updates one by one: hundreds of times the cost of our dict slot, which the task
  path can afford on every task (figures: docs/performance.md, "Our own HTTP client
  and CRDTs"). ``crdts`` stays a dev dependency for the comparison only. The laws
  are proven by ``tests/property/test_crdt_laws.py``.

An optional ``expires_at`` (Unix ns, 0 = never) lets a counter be collected once
its time is over (the rate limiter's windows). It merges as a join too: 0 is the
top, otherwise the later time wins.
"""

from __future__ import annotations

__all__ = ["MAX_COUNT", "GCounter", "PNCounter", "join_expiry"]

MAX_COUNT = (1 << 62) - 1
"""Largest value of one slot (and of any stamp or sequence number on the wire).

Far below 2^63, so no sum of a few slots, no fold and no ``+ 1`` ever leaves the
signed 64-bit range MessagePack and every peer accept: a slot at the bound must not
stop digests, push-pull or snapshots (an unbounded 2^64-1 slot once did). A local
increment past it raises ``ValueError``; a peer's value past it is refused at decode.
"""


def join_expiry(a: int, b: int) -> int:
    """The join of two expiry times where 0 means never (the top of the order)."""
    if a == 0 or b == 0:
        return 0
    return a if a > b else b


def _check_amount(n: int) -> None:
    # bool is an int; a float would decode as an error on every peer, so refuse it here
    if type(n) is not int or n < 0:
        raise ValueError(f"amount must be an int >= 0, got {n!r}")


def _checked(value: int) -> int:
    if value > MAX_COUNT:
        raise ValueError(f"a counter slot cannot pass {MAX_COUNT} (2^62 - 1)")
    return value


def _merge_slots(mine: dict[str, int], theirs: dict[str, int]) -> int:
    """Slot-wise max into ``mine``; returns how much the sum grew."""
    grew = 0
    for replica, value in theirs.items():
        old = mine.get(replica)
        if old is None or value > old:  # a zero slot is kept too: {} and {r: 0} must not differ by order
            mine[replica] = value
            grew += value - (old or 0)
    return grew


class GCounter:
    """Grow-only counter: the value is the sum of every replica's own slot."""

    __slots__ = ("expires_at", "slots", "total")

    def __init__(self, slots: dict[str, int] | None = None, *, expires_at: int = 0) -> None:
        self.slots: dict[str, int] = dict(slots) if slots else {}
        self.total = sum(self.slots.values())
        """The cached sum, kept in step by every mutator and merge (reads are O(1))."""
        self.expires_at = expires_at

    @property
    def value(self) -> int:
        """The count."""
        return self.total

    def increment(self, replica: str, n: int = 1) -> GCounter:
        """Add ``n >= 0`` to ``replica``'s slot; returns the delta."""
        _check_amount(n)
        value = _checked(self.slots.get(replica, 0) + n)
        self.slots[replica] = value
        self.total += n
        return _gcounter({replica: value}, value, self.expires_at)

    def bump(self, replica: str, n: int) -> bool:
        """:meth:`increment` without building a delta (the owner drains :meth:`delta_of` later).

        The task path's increment; returns whether ``replica`` got a new slot.
        """
        _check_amount(n)
        old = self.slots.get(replica)
        self.slots[replica] = _checked(n if old is None else old + n)
        self.total += n
        return old is None

    def delta_of(self, replica: str) -> GCounter:
        """The join of every delta ``replica`` produced so far: its slot alone."""
        slot = self.slots.get(replica)
        return GCounter({} if slot is None else {replica: slot}, expires_at=self.expires_at)

    def merge(self, other: GCounter) -> None:
        """Join ``other`` into this counter (idempotent, commutative, associative)."""
        self.total += _merge_slots(self.slots, other.slots)
        self.expires_at = join_expiry(self.expires_at, other.expires_at)

    def copy(self) -> GCounter:
        """An independent copy."""
        return GCounter(self.slots, expires_at=self.expires_at)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GCounter):
            return NotImplemented
        return self.slots == other.slots and self.expires_at == other.expires_at

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({self.slots!r}, expires_at={self.expires_at})"


def _gcounter(slots: dict[str, int], total: int, expires_at: int) -> GCounter:
    """Build without copying or summing (deltas on the task path)."""
    g = GCounter.__new__(GCounter)
    g.slots, g.total, g.expires_at = slots, total, expires_at
    return g


class PNCounter:
    """Counter that also decrements: two grow-only slot maps, value = sum(p) - sum(n)."""

    __slots__ = ("expires_at", "n", "ntotal", "p", "ptotal")

    def __init__(
        self,
        p: dict[str, int] | None = None,
        n: dict[str, int] | None = None,
        *,
        expires_at: int = 0,
    ) -> None:
        self.p: dict[str, int] = dict(p) if p else {}
        self.n: dict[str, int] = dict(n) if n else {}
        self.ptotal = sum(self.p.values())
        self.ntotal = sum(self.n.values())
        self.expires_at = expires_at

    @property
    def value(self) -> int:
        """Increments minus decrements."""
        return self.ptotal - self.ntotal

    def increment(self, replica: str, n: int = 1) -> PNCounter:
        """Add ``n >= 0``; returns the delta."""
        _check_amount(n)
        value = _checked(self.p.get(replica, 0) + n)
        self.p[replica] = value
        self.ptotal += n
        return PNCounter({replica: value}, expires_at=self.expires_at)

    def decrement(self, replica: str, n: int = 1) -> PNCounter:
        """Subtract ``n >= 0``; returns the delta."""
        _check_amount(n)
        value = _checked(self.n.get(replica, 0) + n)
        self.n[replica] = value
        self.ntotal += n
        return PNCounter(None, {replica: value}, expires_at=self.expires_at)

    def bump(self, replica: str, n: int) -> bool:
        """Add ``n`` (negative subtracts) without building a delta; returns whether a slot is new."""
        if type(n) is not int:
            raise ValueError(f"amount must be an int, got {n!r}")
        slots = self.p if n >= 0 else self.n
        amount = n if n >= 0 else -n
        old = slots.get(replica)
        slots[replica] = _checked(amount if old is None else old + amount)
        if n >= 0:
            self.ptotal += amount
        else:
            self.ntotal += amount
        return old is None

    def delta_of(self, replica: str) -> PNCounter:
        """The join of every delta ``replica`` produced so far: its two slots."""
        p, n = self.p.get(replica), self.n.get(replica)
        return PNCounter(
            {} if p is None else {replica: p},
            {} if n is None else {replica: n},
            expires_at=self.expires_at,
        )

    def merge(self, other: PNCounter) -> None:
        """Join ``other`` into this counter."""
        self.ptotal += _merge_slots(self.p, other.p)
        self.ntotal += _merge_slots(self.n, other.n)
        self.expires_at = join_expiry(self.expires_at, other.expires_at)

    def copy(self) -> PNCounter:
        """An independent copy."""
        return PNCounter(self.p, self.n, expires_at=self.expires_at)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter):
            return NotImplemented
        return self.p == other.p and self.n == other.n and self.expires_at == other.expires_at

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter(p={self.p!r}, n={self.n!r}, expires_at={self.expires_at})"
