"""``ReplicaState``: every tenant's shared state on one replica, and gossip's Delegate.

A worker owns one. Handlers get ``replica.store(tenant)`` for their task's tenant;
the worker records usage (``record_task``, ``record_tokens``) on the task path and
keeps its agents in ``live_agents``; gossip calls the four Delegate methods; Redis
persistence calls ``tenant_snapshot`` and ``restore``.

The replica id is new on every start (``new_replica_id``): a replica restored from
a snapshot that is older than what its peers hold would otherwise keep counting in
its old slot from the stale value, and its new increments would hide under the
higher value the peers already have. A fresh id costs
one more slot per counter per restart, and is always safe.

Those slots are reclaimed by pruning (``state.delegate.Pruning``; gossip decides when
and who, see ``state/gossip/pruning.py``): the owner folds a departed replica's
counter slots into its own and records a prune marker. Markers are applied before
anything else in a payload and travel in every full state, every snapshot and, for
``marker_recent_s``, every delta, so a stale copy that still carries a pruned slot
(a late delta, an old Redis snapshot, a peer that missed the prune) has that slot
dropped instead of counted twice. OR-set dots and LWW writer ids are not pruned:
a dot of a live element is data, and a departed replica's version-vector entry is
one integer. The owner also discards the pruned replica's members of
``live_agents`` (a ``kill -9`` never says goodbye).

A replica that was only *paused or cut off* for longer than gossip's
``prune_after_s`` comes back under its old id after a peer pruned it; its later
writes to that slot would be dropped by every peer, and locally the folded value
would count twice (its own slot plus the owner's fold). So a replica that merges a
prune marker naming *itself* moves to a new replica id first (Akka quarantines such
a node; ``_move``): each counter's part of the old slot *above* what the owner
folded goes to the new slot, the old slot goes as everywhere else, and its own
``live_agents`` members are added again under the new id. For that the marker
carries the folded values (``StateMessage.folded``), kept ``fold_keep_s`` after the
prune; a replica that returns later than that counts the whole old slot as folded
(it can under-count what it never got to gossip, never count twice). The gossip
node follows the new id (``Gossip.rejoin``, called by whoever runs both: the
worker's ``agents._shared_state``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from agentbus.errors import CorruptStateError
from state import wire
from state._guard import Source, admit
from state._tenant import Folded, StoreLimits, TenantState, new_replica_id
from state.delegate import PeerView
from state.orset import ORSet
from state.store import CounterView, SetView, Store, check_tenant
from state.wire import SYSTEM_TENANT, Crdt, StateMessage, TenantSnapshot

__all__ = ["TASKS_COMPLETED", "TASKS_FAILED", "TOKENS", "ReplicaState"]

log = logging.getLogger(__name__)

TASKS_COMPLETED = "~tasks_completed"
TASKS_FAILED = "~tasks_failed"
TOKENS = "~llm_tokens"
"""Usage counters in each tenant's store: handlers can read them, only agentbus writes them."""
LIVE_AGENTS = "~agents"
"""The set of live agent replicas, in the system tenant."""


class ReplicaState:
    """All tenants' CRDTs on this replica; implements ``state.delegate.Delegate``."""

    def __init__(
        self,
        node: str = "replica",
        *,
        replica_id: str | None = None,
        limits: StoreLimits | None = None,
        clock: Callable[[], int] = time.time_ns,
        max_delta_entries: int = 500,
        max_payload_bytes: int = 256 * 1024,
        marker_recent_s: float = 3600.0,
        fold_keep_s: float = 3600.0,
    ) -> None:
        """``node`` names the process; the replica id adds a random suffix unless given (tests)."""
        self.node = node
        self.replica_id = replica_id or new_replica_id(node)
        self.former_ids: list[str] = []
        """Ids this replica wrote under before a peer pruned it (see the module docstring)."""
        self.limits = limits or StoreLimits()
        self.clock = clock
        self.max_delta_entries = max_delta_entries
        """Entries per ``pending()`` batch (Akka's max-delta-elements is 500); the rest waits a round."""
        self.max_payload_bytes = max_payload_bytes
        """Rough bound on one ``pending()`` batch and one part of ``full_state_parts()``."""
        self.rejected = 0
        """Gossip payloads refused as corrupt."""
        self.refused: dict[str, int] = {}
        """Parts of peers' payloads dropped by the merge rules, by reason (``state._guard``):
        ``forged_slot``, ``forged_marker``, ``wrong_origin``, ``future_stamp``, ``over_limit``."""
        self._peers: PeerView | None = None
        self.clashes = 0
        """Incoming entries skipped because the name holds another kind here."""
        self._tenants: dict[str, TenantState] = {}
        self._stores: dict[str, Store] = {}
        self._used: dict[str, int] = {}
        # tenant -> when its store was last handed out (idle tenants are evicted, ``evict_idle``)
        self._usage: dict[str, tuple[CounterView, CounterView, CounterView]] = {}
        self.marker_recent_s = marker_recent_s
        """Deltas carry prune markers this young (full states and snapshots carry all of them)."""
        self._pruned: dict[str, int] = {}
        self.fold_keep_s = fold_keep_s
        """How long the values a prune folded are kept and sent with its marker."""
        self._folded: dict[str, dict[str, Folded]] = {}
        # pruned replica id -> tenant -> what the prune folded (for that replica, if it returns)
        self._prune_pending = False
        self._digest: tuple[tuple[int, ...], bytes] = ((), b"")

    # -- what the worker and handlers use --

    def store(self, tenant: str) -> Store:
        """The store of ``tenant`` (hand only this to a handler of that tenant's task)."""
        store = self._stores.get(tenant)
        if store is None:
            store = self._stores[check_tenant(tenant)] = Store._bind(self._tenant(tenant))
        self._used[tenant] = self.clock()
        return store

    @property
    def system(self) -> Store:
        """Cluster-wide state that belongs to no tenant."""
        return self.store(SYSTEM_TENANT)

    @property
    def live_agents(self) -> SetView:
        """The add-wins set of live agent replicas (add on start, discard on drain)."""
        return self.system._internal(LIVE_AGENTS, SetView)

    def live_agent_replicas(self) -> dict[str, frozenset[str]]:
        """Each member of ``live_agents`` and the replica ids whose adds keep it there.

        A member whose replicas gossip has declared dead belongs to a killed worker that
        never said goodbye; it leaves the set itself when its replica is pruned.
        """
        t = self._tenants.get(SYSTEM_TENANT)
        crdt = t.entries.get(LIVE_AGENTS) if t is not None else None
        if not isinstance(crdt, ORSet):
            return {}
        return {member: frozenset(r for r, _ in dots) for member, dots in crdt.entries.items()}

    def record_task(self, tenant: str, *, ok: bool, n: int = 1) -> None:
        """Count ``n`` finished tasks of ``tenant`` (cheap enough for every task: about a microsecond)."""
        views = self._usage.get(tenant) or self._usage_views(tenant)
        views[0 if ok else 1].increment(n)

    def record_tokens(self, tenant: str, n: int) -> None:
        """Count ``n`` LLM tokens spent by ``tenant``."""
        views = self._usage.get(tenant) or self._usage_views(tenant)
        views[2].increment(n)

    def usage(self, tenant: str) -> dict[str, int]:
        """Cluster-wide usage of ``tenant`` as this replica knows it."""
        completed, failed, tokens = self._usage.get(tenant) or self._usage_views(tenant)
        return {"tasks_completed": completed.value, "tasks_failed": failed.value, "llm_tokens": tokens.value}

    def tenants(self) -> list[str]:
        """Tenants with any state here (from this replica or its peers), the system tenant left out."""
        return sorted(t for t, s in self._tenants.items() if s.entries and t != SYSTEM_TENANT)

    def collect_expired(self, *, grace_s: float = 60.0) -> int:
        """Drop entries expired more than ``grace_s`` ago (call every few seconds); returns how many.

        Also forgets the folded values of prunes older than ``fold_keep_s`` (the markers stay).
        """
        now = self.clock()
        horizon = now - int(grace_s * 1e9)
        keep = now - int(self.fold_keep_s * 1e9)
        for node in [n for n in self._folded if self._pruned.get(n, 0) < keep]:
            del self._folded[node]
        return sum(t.collect(horizon) for t in self._tenants.values())

    def evict_idle(self, *, idle_s: float = 3600.0) -> int:
        """Forget tenants that hold no state and whose store nobody asked for in ``idle_s``.

        Their views, usage handles and empty entry maps go; the next task of the tenant
        makes new ones. ``idle_s`` must exceed the longest a handler keeps a store (a task's
        timeout): a write through a store handed out before its eviction would be lost.
        Tenants with state (usage counters, a live budget period) stay: that is replicated
        data, bounded by the tenant allowlist, not a cache. Returns how many were evicted.
        """
        horizon = self.clock() - int(idle_s * 1e9)
        idle = [
            name
            for name, at in self._used.items()
            if at < horizon and not ((t := self._tenants.get(name)) and (t.entries or t.dirty))
        ]
        idle += [n for n, t in self._tenants.items() if n not in self._used and not t.entries and not t.dirty]
        for name in idle:
            self._used.pop(name, None)
            self._stores.pop(name, None)
            self._usage.pop(name, None)
            self._tenants.pop(name, None)
        if idle:
            self._digest = ((), b"")
        return len(idle)

    def cached_tenants(self) -> int:
        """Tenants with anything in this replica's per-tenant maps (for tests and metrics)."""
        return len(self._tenants.keys() | self._stores.keys() | self._usage.keys() | self._used.keys())

    @property
    def pruned(self) -> frozenset[str]:
        """Replica ids whose counter slots have been folded away."""
        return frozenset(self._pruned)

    # -- Delegate (gossip) --

    def pending(self) -> bytes | None:
        """Deltas of local changes since the last call, at most ``max_delta_entries`` of them.

        and about ``max_payload_bytes``. Prune markers younger than ``marker_recent_s``
        ride along in every batch, so no peer merges a fold without its marker (which
        would count the folded slots twice).
        """
        budget = self.max_delta_entries
        room = self.max_payload_bytes
        out: dict[str, dict[str, wire.Entry]] = {}
        for name, t in list(self._tenants.items()):
            if budget <= 0 or room <= 0:
                break
            if t.dirty:
                deltas = t.drain(budget, room)
                budget -= len(deltas)
                room -= sum(t.sizes.get(n, 0) for n in deltas)
                if deltas:
                    out[name] = deltas
                # fairness: a tenant that was served waits behind the others next time
                del self._tenants[name]
                self._tenants[name] = t
        if not out and not self._prune_pending:
            return None
        self._prune_pending = False
        horizon = self.clock() - int(self.marker_recent_s * 1e9)
        recent = {node: at for node, at in self._pruned.items() if at >= horizon}
        folded = {node: f for node, f in self._folded.items() if node in recent}
        return wire.encode(StateMessage(self.replica_id, False, out, recent, folded))

    def merge(self, data: bytes) -> None:
        """Validate and merge deltas or a full state from a peer; CorruptStateError if malformed."""
        try:
            msg = wire.decode(data)
            if not isinstance(msg, StateMessage):
                raise CorruptStateError("a snapshot is not a gossip message")
            decoded = _from_wire(msg.tenants)
        except CorruptStateError as e:
            self.rejected += 1
            log.warning("gossip payload rejected: %s", e.reason)
            raise
        for node, tenants in msg.folded.items():
            self._join_folded(node, tenants)
        self._apply_markers(msg.pruned)
        self._apply(decoded)

    def merge_from(self, data: bytes, sender: str, *, delta: bool) -> None:
        """Merge what ``sender`` may say (``state._guard``): gossip calls this, not :meth:`merge`.

        The payload must be the sender's own (``origin``); prune markers are applied only
        for replicas the gossip view says may be pruned (``PeerView.may_prune``); every
        entry is reduced to what the sender may say about whom, and kept within limits.
        """
        try:
            msg = wire.decode(data)
            if not isinstance(msg, StateMessage):
                raise CorruptStateError("a snapshot is not a gossip message")
            if msg.origin != sender:
                self._refuse("wrong_origin")
                raise CorruptStateError(f"payload of {msg.origin!r} sent by {sender!r}")
            decoded = _from_wire(msg.tenants)
        except CorruptStateError as e:
            self.rejected += 1
            log.warning("gossip payload rejected: %s", e.reason)
            raise
        peers = self._peers
        markers = msg.pruned
        if peers is not None:
            markers = {}
            for node, at in msg.pruned.items():
                if node in self._pruned or peers.may_prune(node):
                    markers[node] = at
                else:
                    self._refuse("forged_marker")
        for node, tenants in msg.folded.items():
            if node in markers:
                self._join_folded(node, tenants)
        self._apply_markers(markers)
        live = peers.is_live if peers is not None else _nobody
        src = Source(sender, self.replica_id, delta, live, self.clock())
        refused = self.refused

        def guard(name: str, theirs: Crdt, mine: Crdt | None) -> Crdt | None:
            return admit(name, theirs, mine, src, refused)

        for tenant, entries in decoded.items():
            self.clashes += self._tenant(tenant).merge(entries, guard, refused)

    def watch(self, peers: PeerView) -> None:
        """Vet markers and relayed entries with gossip's view of the cluster from now on."""
        self._peers = peers

    def full_state(self) -> bytes:
        """The whole state for push-pull."""
        folded = {node: dict(f) for node, f in self._folded.items()}
        return wire.encode(StateMessage(self.replica_id, True, self._full(), dict(self._pruned), folded))

    def full_state_parts(self, max_bytes: int) -> list[bytes]:
        """The whole state in payloads of about ``max_bytes`` or less, whole tenants where they fit.

        Every part carries the prune markers (and what they folded), so each merges alone;
        a tenant is bounded well under one packet (``StoreLimits``), so parts are packed
        tenant by tenant, and only a tenant over the bound is split by entry.
        """
        pruned = dict(self._pruned)
        folded = {node: dict(f) for node, f in self._folded.items()}
        fixed = len(_encoder.encode((pruned, folded))) + 64
        room = max(1024, max_bytes - fixed)
        parts: list[dict[str, dict[str, wire.Entry]]] = [{}]
        used = 0
        for name, t in self._tenants.items():
            if not t.entries:
                continue
            full = t.full()
            size = len(_encoder.encode(full)) + len(name) + 8
            chunks = [(full, size)] if size <= room else _split(full, room)
            for chunk, n in chunks:
                if used + n > room and parts[-1]:
                    parts.append({})
                    used = 0
                parts[-1].setdefault(name, {}).update(chunk)
                used += n
        return [wire.encode(StateMessage(self.replica_id, True, p, pruned, folded)) for p in parts]

    def digest(self) -> bytes:
        """16 bytes, equal on replicas whose states are equal (cached until something changes)."""
        versions = sum(t.version for t in self._tenants.values())
        key = (len(self._tenants), versions, len(self._pruned), sum(self._pruned.values()))
        if self._digest[0] != key:
            self._digest = (key, wire.fingerprint(self._full(), self._pruned))
        return self._digest[1]

    # -- Pruning (gossip picks the moment and the owner) --

    def prune(self, node: str) -> None:
        """Fold ``node``'s counter slots into this replica's own and mark ``node`` pruned.

        Gossip calls this on the owner only, once ``node`` is long gone and the owner
        has pulled every live peer's state; a no-op if ``node`` is already pruned.
        """
        if node == self.replica_id or node in self._pruned:
            return
        self._pruned[node] = self.clock()
        # recorded even when empty: "nothing was folded" differs from "the fold is forgotten"
        self._folded[node] = {name: f for name, t in self._tenants.items() if (f := t.fold(node))}
        agents = self._tenants.get(SYSTEM_TENANT)
        crdt = agents.entries.get(LIVE_AGENTS) if agents is not None else None
        if isinstance(crdt, ORSet):  # members only ``node`` added: a crashed worker's leftovers
            for member in [m for m, dots in crdt.entries.items() if all(r == node for r, _ in dots)]:
                self.live_agents.discard(member)
        self._prune_pending = True

    # -- persistence --

    def tenant_versions(self) -> dict[str, int]:
        """Each tenant's change counter: a tenant whose counter moved has something new to persist."""
        return {name: t.version for name, t in self._tenants.items() if t.entries}

    def tenant_snapshot(self, tenant: str) -> bytes:
        """``tenant``'s whole state as a framed, checksummed snapshot blob."""
        t = self._tenant(tenant)
        folded = {node: f[tenant] for node, f in self._folded.items() if tenant in f}
        snapshot = TenantSnapshot(tenant, self.replica_id, self.clock(), t.full(), dict(self._pruned), folded)
        return wire.encode(snapshot)

    def restore(self, blob: bytes, *, tenant: str, replica: str) -> None:
        """Merge a snapshot that was stored as ``tenant``/``replica``; CorruptStateError if it is not one."""
        msg = wire.decode(blob)
        if not isinstance(msg, TenantSnapshot):
            raise CorruptStateError("not a tenant snapshot")
        if msg.tenant != tenant or msg.replica != replica:
            raise CorruptStateError(f"snapshot of {msg.tenant}/{msg.replica} stored under {tenant}/{replica}")
        decoded = _from_wire({tenant: msg.entries})
        for node, slots in msg.folded.items():
            self._join_folded(node, {tenant: slots})
        self._apply_markers(msg.pruned)
        self._apply(decoded)

    # -- internals --

    def _tenant(self, tenant: str) -> TenantState:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[check_tenant(tenant)] = TenantState(
                tenant, self.replica_id, self.limits, self.clock, self._pruned
            )
        return t

    def _usage_views(self, tenant: str) -> tuple[CounterView, CounterView, CounterView]:
        store = self.store(tenant)
        views = tuple(store._internal(n, CounterView) for n in (TASKS_COMPLETED, TASKS_FAILED, TOKENS))
        self._usage[tenant] = views  # type: ignore[assignment]
        return self._usage[tenant]

    def _full(self) -> dict[str, dict[str, wire.Entry]]:
        return {name: t.full() for name, t in self._tenants.items() if t.entries}

    def _join_folded(self, node: str, tenants: dict[str, dict[str, tuple[int, int]]]) -> None:
        """Join what a prune folded (one owner folds once; max keeps the join idempotent)."""
        mine = self._folded.setdefault(node, {})
        for tenant, slots in tenants.items():
            have = mine.setdefault(tenant, {})
            for name, (p, n) in slots.items():
                old = have.get(name, (0, 0))
                have[name] = (max(p, old[0]), max(n, old[1]))

    def _move(self, at: int) -> None:
        """A peer pruned this replica's id while it lived on (a pause, a partition): write under a new one."""
        old, new = self.replica_id, new_replica_id(self.node)
        folded = self._folded.get(old)
        if folded is None:
            log.error(
                "replica %s was pruned by a peer and the folded values are no longer known:"
                " increments it had not gossiped before it was cut off are lost",
                old,
            )
        else:
            log.warning("replica %s was pruned by a peer while alive: moving to %s", old, new)
        agents = self._tenants.get(SYSTEM_TENANT)
        crdt = agents.entries.get(LIVE_AGENTS) if agents is not None else None
        mine = []
        if isinstance(crdt, ORSet):
            mine = [m for m, dots in crdt.entries.items() if any(r == old for r, _ in dots)]
        self.replica_id = new
        self.former_ids.append(old)
        self._pruned[old] = at
        for name, t in self._tenants.items():
            t.rehome(old, new, None if folded is None else folded.get(name, {}))
        for member in mine:  # the owner discards them with the prune: add them again, as the new id
            self.live_agents.add(member)
        self._prune_pending = True

    def _apply_markers(self, markers: dict[str, int]) -> None:
        for node, at in markers.items():
            known = self._pruned.get(node)
            if node == self.replica_id:
                self._move(at)
            elif known is None:
                self._pruned[node] = at
                for t in self._tenants.values():
                    t.drop_replica(node)
            elif known is not None and at < known:
                self._pruned[node] = at  # join: the earliest prune time, so digests agree

    def _apply(self, decoded: dict[str, dict[str, Crdt]]) -> None:
        for tenant, entries in decoded.items():
            self.clashes += self._tenant(tenant).merge(entries)

    def _refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def __repr__(self) -> str:
        return f"<ReplicaState {self.replica_id} tenants={len(self._tenants)}>"


_encoder = msgspec.msgpack.Encoder()


def _nobody(_node: str) -> bool:
    return False


def _split(full: dict[str, wire.Entry], room: int) -> list[tuple[dict[str, wire.Entry], int]]:
    """One tenant's entries in chunks of about ``room`` bytes (a tenant past its bound)."""
    chunks: list[tuple[dict[str, wire.Entry], int]] = [({}, 0)]
    for name, entry in full.items():
        n = len(_encoder.encode(entry)) + len(name) + 8
        chunk, used = chunks[-1]
        if used + n > room and chunk:
            chunks.append(({}, 0))
            chunk, used = chunks[-1]
        chunk[name] = entry
        chunks[-1] = (chunk, used + n)
    return chunks


def _from_wire(tenants: dict[str, dict[str, wire.Entry]]) -> dict[str, dict[str, Crdt]]:
    """Every entry converted before anything is merged, so a bad one rejects the whole payload."""
    return {t: {name: wire.from_wire(e) for name, e in entries.items()} for t, entries in tenants.items()}
