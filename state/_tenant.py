"""One tenant's CRDTs on one replica: entries, limits, the delta buffer, size accounting.

Internal: handlers see it only through ``state.store.Store``, and a TenantState
holds no reference to any other tenant or to the replica, so nothing reachable
from a handler's store can touch another tenant.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from agentbus.errors import StateLimitError, StateTypeError
from state import wire
from state.counters import MAX_COUNT, GCounter, PNCounter
from state.lww import LWWRegister
from state.orset import ORSet
from state.wire import Crdt, Entry

__all__ = [
    "KIND",
    "MAX_RESERVED",
    "MERGE_SLACK",
    "RESERVED",
    "Admit",
    "C",
    "Folded",
    "StoreLimits",
    "TenantState",
    "new_replica_id",
]

KIND: dict[type, str] = {GCounter: "counter", PNCounter: "pncounter", ORSet: "set", LWWRegister: "register"}
"""What each CRDT class is called in errors and in ``Store.names()``."""

C = TypeVar("C", GCounter, PNCounter, ORSet, LWWRegister)

SLOT_BYTES = 12
"""Rough encoded overhead of one counter slot or dot besides the replica id."""
RESERVED = "~"
"""Prefix of the names agentbus itself writes (usage counters, budgets, rate windows).

They are bounded by construction (a handful per tenant), so the tenant's limits do
not apply to them: a tenant that fills its store cannot stop its usage from being
counted, nor escape its budget by leaving no room for the budget's counter."""
Folded = dict[str, tuple[int, int]]
"""What a prune folded away, per counter name: ``(increments, decrements)`` of the pruned slot."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MERGE_SLACK = 2
"""Merged state may reach this many times a tenant's limits: each replica checks its own writes
against the limits, and writes on several replicas at once may add up past them."""
MAX_RESERVED = 64
"""Agentbus's own ``~`` names per tenant that a merge accepts (usage, budget periods, rate
windows: a handful by construction)."""
Admit = Callable[[str, Crdt, "Crdt | None"], "Crdt | None"]
"""Reduces a peer's entry to what its sender may say (``state._guard.admit``), or drops it."""


@dataclass(frozen=True, kw_only=True)
class StoreLimits:
    """Per-tenant bounds, checked when this replica writes (merges from peers are accepted)."""

    max_entries: int = 1_000
    """Named counters, sets and registers together (Akka advises < 100 000 top-level entries per node)."""
    max_name_chars: int = 128
    max_set_elements: int = 10_000
    """Members of one set."""
    max_element_chars: int = 256
    """Length of one set member."""
    max_value_bytes: int = 64 * 1024
    """One register value, MessagePack-encoded."""
    max_tenant_bytes: int = 128 * 1024
    """Approximate encoded size of the tenant's whole state. Merged state may reach ``MERGE_SLACK``
    times it, and that stays well under one gossip packet (512 KiB), so a tenant never needs
    more than one packet and never crowds another tenant's entries out of one."""


def new_replica_id(node: str = "replica") -> str:
    """A fresh replica id: the node's name plus 32 random bits, new on every start (see persistence).

    Characters outside ``[A-Za-z0-9_-]`` become ``-``: the id is also the gossip node id,
    a NATS subject token (a host name like ``box.local`` would otherwise add a level).
    """
    return f"{_UNSAFE.sub('-', node[:48]) or 'replica'}-{secrets.token_hex(4)}"


def size_of(crdt: Crdt) -> int:
    """Approximate encoded size of one CRDT, in bytes."""
    if isinstance(crdt, GCounter):
        return 8 + sum(len(r) + SLOT_BYTES for r in crdt.slots)
    if isinstance(crdt, PNCounter):
        return 8 + sum(len(r) + SLOT_BYTES for r in crdt.p) + sum(len(r) + SLOT_BYTES for r in crdt.n)
    if isinstance(crdt, ORSet):
        live = sum(len(e) + 2 + sum(len(r) + SLOT_BYTES for r, _ in d) for e, d in crdt.entries.items())
        return 8 + live + sum(len(r) + SLOT_BYTES for r in crdt.vv) + (len(crdt.cloud) * 2 * SLOT_BYTES)
    return 24 + len(crdt.value) + len(crdt.writer)


class TenantState:
    """The CRDTs of one tenant and what this replica changed since gossip last drained it."""

    __slots__ = (
        "clock",
        "dirty",
        "entries",
        "limits",
        "pruned",
        "replica",
        "set_deltas",
        "size",
        "sizes",
        "tenant",
        "version",
    )

    def __init__(
        self,
        tenant: str,
        replica: str,
        limits: StoreLimits,
        clock: Callable[[], int] = time.time_ns,
        pruned: dict[str, int] | None = None,
    ) -> None:
        self.tenant = tenant
        self.replica = replica
        self.limits = limits
        self.clock = clock
        """Wall clock in Unix ns (registers' stamps and expiry); injectable for tests."""
        self.entries: dict[str, Crdt] = {}
        self.dirty: dict[str, None] = {}
        """Names this replica changed since the last drain, in order (a dict is an ordered set)."""
        self.set_deltas: dict[str, ORSet] = {}
        """Joined deltas of the sets in ``dirty`` (counters and registers derive theirs from state)."""
        self.version = 0
        """Bumped on every change, local or merged: persistence and the digest cache compare it."""
        self.sizes: dict[str, int] = {}
        self.size = 0
        self.pruned: dict[str, int] = {} if pruned is None else pruned
        """Replica ids whose counter slots were folded away (shared by the replica's tenants)."""

    # -- local writes --

    def get(self, name: str, kind: type[C]) -> C | None:
        """The entry called ``name`` if it holds a ``kind``; None if absent; StateTypeError otherwise."""
        crdt = self.entries.get(name)
        if crdt is not None and type(crdt) is not kind:
            raise StateTypeError(name, KIND[type(crdt)], KIND[kind])
        return crdt

    def create(self, name: str, crdt: Crdt) -> None:
        """Add a new entry, within ``max_entries`` and ``max_tenant_bytes``."""
        limits = self.limits
        if len(self.entries) >= limits.max_entries and not name.startswith(RESERVED):
            raise StateLimitError(self.tenant, "max_entries", limits.max_entries, len(self.entries) + 1)
        self.entries[name] = crdt
        self.sizes[name] = 0
        self.grow(name, size_of(crdt) + len(name))

    def grow(self, name: str, n: int) -> None:
        """Account ``n`` more bytes to ``name``, refusing past ``max_tenant_bytes``."""
        allowed = self.limits.max_tenant_bytes
        if n > 0 and self.size + n > allowed and not name.startswith(RESERVED):
            raise StateLimitError(self.tenant, "max_tenant_bytes", allowed, self.size + n)
        self.sizes[name] += n
        self.size += n

    def changed(self, name: str) -> None:
        """Record a local change of ``name`` for the next drain."""
        self.dirty[name] = None
        self.version += 1

    def set_changed(self, name: str, delta: ORSet) -> None:
        """Record a set's delta (joined with what is pending)."""
        pending = self.set_deltas.get(name)
        if pending is None:
            self.set_deltas[name] = delta
        else:
            pending.merge(delta)
        self.changed(name)

    # -- gossip and persistence --

    def drain(self, limit: int, max_bytes: int = 1 << 62) -> dict[str, Entry]:
        """Up to ``limit`` deltas of local changes, about ``max_bytes`` at most (at least one),
        removed from the buffer."""
        out: dict[str, Entry] = {}
        used = 0
        for name in list(self.dirty)[:limit]:
            used += self.sizes.get(name, 0)
            if used > max_bytes and out:
                break
            del self.dirty[name]
            crdt = self.entries.get(name)
            delta = self.set_deltas.pop(name, None)
            if crdt is None:
                continue  # collected since
            if isinstance(crdt, GCounter | PNCounter):
                out[name] = wire.to_wire(crdt.delta_of(self.replica))
            elif isinstance(crdt, LWWRegister):
                out[name] = wire.to_wire(crdt)
            elif delta is not None:
                out[name] = wire.to_wire(delta)
        return out

    def full(self) -> dict[str, Entry]:
        """Every entry in wire form."""
        return {name: wire.to_wire(crdt) for name, crdt in self.entries.items()}

    def merge(
        self, incoming: dict[str, Crdt], admit: Admit | None = None, refused: dict[str, int] | None = None
    ) -> int:
        """Join entries from a peer or a snapshot; returns how many clashed in kind and were skipped.

        ``admit`` first reduces each entry to what its sender may say (``state._guard``).
        Limits apply ``MERGE_SLACK`` times over: each replica enforces them on its own
        writes, concurrent writes on several replicas may add up past them, and past the
        slack an entry is dropped (``refused["over_limit"]``), so no peer can grow a tenant
        without bound.
        """
        clashes = 0
        refused = {} if refused is None else refused
        for name, entry in incoming.items():
            mine = self.entries.get(name)
            theirs = entry if admit is None else admit(name, entry, mine)
            if theirs is None:
                continue
            if not self._fits(name, theirs, mine):
                refused["over_limit"] = refused.get("over_limit", 0) + 1
                continue
            if self.pruned and isinstance(theirs, GCounter | PNCounter):
                _drop_slots(theirs, self.pruned)  # a stale copy must not count a folded slot again
            if mine is None:
                self.entries[name] = theirs
                self.sizes[name] = 0
            elif type(mine) is not type(theirs):
                clashes += 1  # a name's kind never changes; two replicas created it differently
                continue
            else:
                mine.merge(theirs)  # type: ignore[arg-type]
            size = size_of(self.entries[name]) + len(name)
            self.size += size - self.sizes[name]
            self.sizes[name] = size
        if incoming:
            self.version += 1
        return clashes

    def _fits(self, name: str, theirs: Crdt, mine: Crdt | None) -> bool:
        """Whether merging ``theirs`` keeps the tenant within its limits times ``MERGE_SLACK``."""
        if (
            isinstance(theirs, GCounter)
            and isinstance(mine, GCounter)
            and theirs.slots.keys() <= mine.slots.keys()
        ):
            return True  # the common case, a counter that gains no slot: it cannot grow
        limits = self.limits
        if isinstance(theirs, LWWRegister) and len(theirs.value) > limits.max_value_bytes:
            return False
        if isinstance(theirs, ORSet) and (
            len(theirs.entries) > MERGE_SLACK * limits.max_set_elements
            or any(len(e) > limits.max_element_chars for e in theirs.entries)
        ):
            return False
        if mine is None:
            if len(name) > limits.max_name_chars:
                return False
            if name.startswith(RESERVED):
                if sum(1 for n in self.entries if n.startswith(RESERVED)) >= MAX_RESERVED:
                    return False
            elif len(self.entries) >= MERGE_SLACK * limits.max_entries:
                return False
        if name.startswith(RESERVED) and isinstance(theirs, GCounter | PNCounter):
            return True  # usage and budgets: a tenant that fills its store must not stop them counting
        # a join is usually about the larger side; past the cap, even a join that adds nothing is refused
        have = self.sizes.get(name, 0)
        after = self.size - have + max(have, size_of(theirs) + len(name))
        return after <= MERGE_SLACK * limits.max_tenant_bytes

    def fold(self, node: str) -> Folded:
        """Move ``node``'s counter slots into this replica's own (the pruning owner's step).

        Returns what was folded, per counter: the prune marker carries it, so a replica
        that was pruned while only paused can tell what of its own slot the fold counted.
        """
        folded: Folded = {}
        for name, crdt in self.entries.items():
            if isinstance(crdt, GCounter):
                p = crdt.slots.pop(node, None)
                if p is not None:
                    crdt.slots[self.replica] = min(MAX_COUNT, crdt.slots.get(self.replica, 0) + p)
                    crdt.total = sum(crdt.slots.values())
                    folded[name] = (p, 0)
            elif isinstance(crdt, PNCounter):
                p, n = crdt.p.pop(node, None), crdt.n.pop(node, None)
                for slots, value in ((crdt.p, p), (crdt.n, n)):
                    if value is not None:
                        slots[self.replica] = min(MAX_COUNT, slots.get(self.replica, 0) + value)
                crdt.ptotal, crdt.ntotal = sum(crdt.p.values()), sum(crdt.n.values())
                if p is not None or n is not None:
                    folded[name] = (p or 0, n or 0)
            else:
                continue
            if name in folded:
                self.dirty[name] = None
        self.version += 1
        return folded

    def rehome(self, old: str, new: str, folded: Folded | None) -> None:
        """This replica was pruned as ``old`` and now writes as ``new``: move what the fold missed.

        For each counter, the part of ``old``'s slot above what the owner folded
        (``folded``: nothing folded for a name that is absent) moves to ``new``'s slot;
        ``old``'s slot goes, as it goes on every peer. ``folded=None`` means the fold is
        unknown (it was forgotten): then all of the slot counts as folded, which can only
        under-count what this replica never got to gossip, never count anything twice.
        """
        self.replica = new
        for name, crdt in self.entries.items():
            if isinstance(crdt, GCounter):
                if old not in crdt.slots:
                    continue
                mine = crdt.slots.pop(old)
                done = mine if folded is None else folded.get(name, (0, 0))[0]
                surplus = max(0, mine - done)
                crdt.total -= mine - surplus
                if surplus:
                    crdt.slots[new] = crdt.slots.get(new, 0) + surplus
            elif isinstance(crdt, PNCounter):
                if old not in crdt.p and old not in crdt.n:
                    continue
                p, n = crdt.p.pop(old, 0), crdt.n.pop(old, 0)
                done_p, done_n = (p, n) if folded is None else folded.get(name, (0, 0))
                surplus, sn = max(0, p - done_p), max(0, n - done_n)
                crdt.ptotal -= p - surplus
                crdt.ntotal -= n - sn
                if surplus:
                    crdt.p[new] = crdt.p.get(new, 0) + surplus
                if sn:
                    crdt.n[new] = crdt.n.get(new, 0) + sn
                surplus += sn
            else:
                continue
            if surplus:
                self.dirty[name] = None
            size = size_of(crdt) + len(name)
            self.size += size - self.sizes[name]
            self.sizes[name] = size
        self.version += 1

    def drop_replica(self, node: str) -> None:
        """Forget ``node``'s counter slots (a prune marker arrived; the owner's fold carries them)."""
        for crdt in self.entries.values():
            if isinstance(crdt, GCounter | PNCounter):
                _drop_slots(crdt, {node: 0})
        self.version += 1

    def collect(self, now_ns: int) -> int:
        """Drop entries expired at ``now_ns``; returns how many (a local step, not a merge)."""
        dead = [
            name
            for name, crdt in self.entries.items()
            if not isinstance(crdt, ORSet) and crdt.expires_at and crdt.expires_at <= now_ns
        ]
        for name in dead:
            self.forget(name)
        return len(dead)

    def forget(self, name: str) -> None:
        """Remove ``name`` from this replica only (expired data; a peer may send it again)."""
        del self.entries[name]
        self.dirty.pop(name, None)
        self.set_deltas.pop(name, None)
        self.size -= self.sizes.pop(name)
        self.version += 1


def _drop_slots(crdt: GCounter | PNCounter, nodes: dict[str, int]) -> None:
    """Remove the slots of ``nodes`` from a counter, keeping its cached totals right."""
    if isinstance(crdt, GCounter):
        for node in nodes.keys() & crdt.slots.keys():
            crdt.total -= crdt.slots.pop(node)
        return
    for node in nodes.keys() & crdt.p.keys():
        crdt.ptotal -= crdt.p.pop(node)
    for node in nodes.keys() & crdt.n.keys():
        crdt.ntotal -= crdt.n.pop(node)
