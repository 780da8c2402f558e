"""What a peer may say about whom: the merge rules that hold even for an authenticated peer.

The cluster key (``state.mac``) keeps strangers out; it does not make a worker that
holds it honest. Every entry a peer sends is filtered here before it is merged, so
that whatever a malicious peer sends, it cannot lower, hide or overwrite another
replica's own writes, and the values it can add are bounded:

* **Deltas are first-hand.** A delta batch carries only its sender's own writes:
  counter slots of the sender, set dots of the sender, registers the sender wrote
  (gossip no longer forwards other replicas' batches, so the sender is the origin).
  Anything else in a delta is dropped and counted (``forged_slot``).
* **A live replica speaks for itself.** In a full state (push-pull, a drain's
  hand-off) a peer relays what it knows of other replicas, which a late joiner needs
  for replicas that crashed. Relayed slots, dots and register writes are taken only
  for replicas the receiver does *not* see alive or suspect (dead, departed,
  unknown): a live one gossips its own state directly. For set dots of a live
  replica, the relay may not claim to have seen more of it than the receiver has.
* **Nobody speaks for the receiver.** A peer's copy of the receiver's own slots,
  dots and writes is never taken (a value above the receiver's own is counted as
  ``forged_slot``): a replica's own writes cannot be lost or inflated by a peer.
* **Bounded values.** Counts, stamps and sequence numbers are below 2^62 (refused
  at decode, ``state.wire``); a register stamped more than ``MAX_SKEW_NS`` ahead of
  the receiver's clock is dropped (``future_stamp``); entries over the tenant's
  :class:`~state._tenant.StoreLimits` (with ``MERGE_SLACK`` for concurrent writes on
  several replicas) are dropped (``over_limit``, checked in ``state._tenant``).

Dropped entries are not errors: the rest of the payload merges. Replicas that
disagree only about what to drop converge once the replica concerned gossips its own
state, which every live replica does every round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from state.counters import GCounter, PNCounter
from state.lww import LWWRegister
from state.orset import Dot, ORSet
from state.wire import Crdt

__all__ = ["MAX_SKEW_NS", "Source", "admit"]

MAX_SKEW_NS = 3600 * 10**9
"""A register write stamped further ahead than this of the receiver's clock is dropped."""


@dataclass(frozen=True, slots=True)
class Source:
    """Who sent a payload and how the receiver sees the cluster."""

    sender: str
    """The replica id that sent it (the gossip packet's authenticated sender)."""
    me: str
    """The receiving replica's id."""
    delta: bool
    """A delta batch (only the sender's own writes) rather than a full state."""
    live: Callable[[str], bool]
    """Whether the receiver sees a replica alive or suspect (such a replica speaks for itself)."""
    now_ns: int


def admit(name: str, theirs: Crdt, mine: Crdt | None, src: Source, refused: dict[str, int]) -> Crdt | None:
    """``theirs`` reduced to what ``src.sender`` may say, or None if nothing of it is taken."""
    if isinstance(theirs, GCounter):
        slots = _slots(theirs.slots, mine.slots if isinstance(mine, GCounter) else {}, src, refused)
        return GCounter(slots, expires_at=theirs.expires_at) if slots or mine is None else None
    if isinstance(theirs, PNCounter):
        have = mine if isinstance(mine, PNCounter) else PNCounter()
        p = _slots(theirs.p, have.p, src, refused)
        n = _slots(theirs.n, have.n, src, refused)
        return PNCounter(p, n, expires_at=theirs.expires_at) if p or n or mine is None else None
    if isinstance(theirs, LWWRegister):
        return _register(theirs, src, refused)
    return _orset(theirs, mine if isinstance(mine, ORSet) else None, src)


def _speaks_for(src: Source, replica: str) -> bool:
    """Whether ``src.sender`` may tell the receiver about ``replica``'s writes."""
    if replica == src.sender:
        return replica != src.me
    return not src.delta and replica != src.me and not src.live(replica)


def _slots(
    theirs: dict[str, int], mine: dict[str, int], src: Source, refused: dict[str, int]
) -> dict[str, int]:
    out = {}
    for replica, value in theirs.items():
        if _speaks_for(src, replica):
            out[replica] = value
        elif value > mine.get(replica, 0) and (src.delta or replica == src.me):
            _count(refused, "forged_slot")  # more than the replica itself has, or a third party in a delta
    return out


def _register(theirs: LWWRegister, src: Source, refused: dict[str, int]) -> LWWRegister | None:
    if theirs.ts > src.now_ns + MAX_SKEW_NS:
        _count(refused, "future_stamp")
        return None
    if theirs.writer and not _speaks_for(src, theirs.writer):
        return None  # someone else's write: it comes from its writer (or was drained after a merge)
    return theirs


def _orset(theirs: ORSet, mine: ORSet | None, src: Source) -> ORSet | None:
    """Dots of replicas the sender may not speak for: only those the receiver has seen, and no
    claim to have seen more of them than the receiver has."""
    others = {r for r, _ in theirs.cloud} | set(theirs.vv)
    others.update(r for dots in theirs.entries.values() for r, _ in dots)
    barred = {r for r in others if not _speaks_for(src, r)}
    if not barred:
        return theirs
    seen: Callable[[Dot], bool] = mine.seen if mine is not None else (lambda _d: False)
    vv = {r: q for r, q in theirs.vv.items() if r not in barred}
    for r in barred & set(theirs.vv):
        top = min(theirs.vv[r], mine.vv.get(r, 0) if mine is not None else 0)
        if top:
            vv[r] = top
    cloud = {d for d in theirs.cloud if d[0] not in barred or seen(d)}
    entries: dict[str, set[Dot]] = {}
    for element, dots in theirs.entries.items():
        kept = {d for d in dots if d[0] not in barred or seen(d)}
        if kept:
            entries[element] = kept
            cloud.update(d for d in kept if d[0] in barred)  # seen here, so no new claim
    try:
        return ORSet.from_parts(entries, vv, cloud)
    except ValueError:
        return None


def _count(refused: dict[str, int], reason: str) -> None:
    refused[reason] = refused.get(reason, 0) + 1
