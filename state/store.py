"""``Store``: one tenant's named counters, sets and registers, as a handler sees them.

A handler gets the store of its task's tenant (the tenant comes from the subject)
and nothing else: no method takes a tenant, and a store reaches only its own
tenant's entries, so there is no call that reads or changes another tenant.

Each name holds one kind of CRDT for good (:class:`~agentbus.errors.StateTypeError`
otherwise), created by its first write; reading a name that was never written
gives the empty value. Writes check the tenant's :class:`StoreLimits` and raise
:class:`~agentbus.errors.StateLimitError`. Names starting with ``~`` belong to
agentbus (usage counters, budgets): handlers can read them, not write them,
and they do not count against the limits (they are few by construction).

Values are eventually consistent: a read shows this replica's writes at once and
other replicas' writes after gossip (typically a few 200 ms rounds).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from agentbus.errors import StateLimitError
from state._tenant import KIND, RESERVED, C, StoreLimits, TenantState, new_replica_id
from state.counters import GCounter, PNCounter
from state.lww import LWWRegister
from state.orset import ORSet
from state.wire import SYSTEM_TENANT, TENANT_PATTERN

__all__ = ["CounterView", "PNCounterView", "RegisterView", "SetView", "Store", "StoreLimits"]

V = TypeVar("V", bound="_View")

_TENANT = re.compile(TENANT_PATTERN)


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid subject token (or the system tenant); ValueError otherwise."""
    if tenant != SYSTEM_TENANT and not _TENANT.match(tenant):
        raise ValueError(f"invalid tenant {tenant!r}: use 1-64 of [A-Za-z0-9_-]")
    return tenant


class _View:
    __slots__ = ("_name", "_t", "_writable")

    def __init__(self, t: TenantState, name: str, writable: bool) -> None:
        self._t = t
        self._name = name
        self._writable = writable

    @property
    def name(self) -> str:
        """The entry's name."""
        return self._name

    def _entry(self, kind: type[C]) -> C:
        if not self._writable:
            self._deny()
        crdt = self._t.get(self._name, kind)
        if crdt is None:
            crdt = kind()
            self._t.create(self._name, crdt)
        return crdt

    def _deny(self) -> None:
        raise ValueError(f"{self._name!r} is reserved for agentbus (names starting with {RESERVED!r})")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r}>"


class CounterView(_View):
    """A grow-only counter."""

    __slots__ = ()

    def increment(self, n: int = 1) -> None:
        """Add ``n >= 0``."""
        t = self._t
        crdt = t.entries.get(self._name)
        if type(crdt) is not GCounter or not self._writable:  # first write, wrong kind or reserved
            crdt = self._entry(GCounter)
        if crdt.bump(t.replica, n):
            t.grow(self._name, len(t.replica) + 12)
        t.dirty[self._name] = None  # t.changed(), inlined: this is the task path
        t.version += 1

    @property
    def value(self) -> int:
        """The count over every replica this one has heard from."""
        crdt = self._t.get(self._name, GCounter)
        return 0 if crdt is None else crdt.value


class PNCounterView(_View):
    """A counter that also decrements (budgets, gauges)."""

    __slots__ = ()

    def increment(self, n: int = 1) -> None:
        """Add ``n`` (a negative ``n`` subtracts)."""
        t = self._t
        crdt = t.entries.get(self._name)
        if type(crdt) is not PNCounter or not self._writable:
            crdt = self._entry(PNCounter)
        if crdt.bump(t.replica, n):
            t.grow(self._name, len(t.replica) + 12)
        t.changed(self._name)

    def decrement(self, n: int = 1) -> None:
        """Subtract ``n >= 0``."""
        if type(n) is not int or n < 0:
            raise ValueError(f"amount must be an int >= 0, got {n!r}")
        self.increment(-n)

    @property
    def value(self) -> int:
        """Increments minus decrements."""
        crdt = self._t.get(self._name, PNCounter)
        return 0 if crdt is None else crdt.value


class SetView(_View):
    """An add-wins set of strings."""

    __slots__ = ()

    def add(self, member: str) -> None:
        """Add ``member`` (a concurrent remove elsewhere does not cancel this add)."""
        if not isinstance(member, str):
            raise TypeError(f"set members are str, got {type(member).__name__}")
        t, limits = self._t, self._t.limits
        if len(member) > limits.max_element_chars:
            raise ValueError(f"member is {len(member)} chars, the limit is {limits.max_element_chars}")
        crdt = self._entry(ORSet)
        if member not in crdt.entries:
            allowed = limits.max_set_elements
            if len(crdt.entries) >= allowed:
                raise StateLimitError(t.tenant, "max_set_elements", allowed, len(crdt.entries) + 1)
            t.grow(self._name, len(member) + len(t.replica) + 14)
        t.set_changed(self._name, crdt.add(t.replica, member))

    def discard(self, member: str) -> None:
        """Remove ``member`` if present (only the adds this replica has seen)."""
        if not self._writable:
            self._deny()
        t = self._t
        crdt = t.get(self._name, ORSet)
        if not isinstance(crdt, ORSet) or member not in crdt.entries:
            return
        t.set_changed(self._name, crdt.remove(member))
        t.grow(self._name, -(len(member) + len(t.replica) + 14))

    def members(self) -> frozenset[str]:
        """The current members."""
        crdt = self._t.get(self._name, ORSet)
        return frozenset() if crdt is None else crdt.elements()

    def __contains__(self, member: object) -> bool:
        crdt = self._t.get(self._name, ORSet)
        return crdt is not None and member in crdt

    def __len__(self) -> int:
        crdt = self._t.get(self._name, ORSet)
        return 0 if crdt is None else len(crdt)


class RegisterView(_View):
    """A last-writer-wins register holding any MessagePack-able value, optionally expiring."""

    __slots__ = ()

    def set(self, value: Any, *, ttl_s: float | None = None) -> None:
        """Write ``value``; it reads as absent ``ttl_s`` seconds from now, if given."""
        data = msgspec.msgpack.encode(value)
        self._write(data, ttl_s)

    def clear(self) -> None:
        """Write "absent" (a later write on any replica wins over it, as any write does)."""
        self._write(b"", None)

    def _write(self, data: bytes, ttl_s: float | None) -> None:
        t = self._t
        if len(data) > t.limits.max_value_bytes:
            raise StateLimitError(t.tenant, "max_value_bytes", t.limits.max_value_bytes, len(data))
        crdt = self._entry(LWWRegister)
        now = t.clock()
        expires_at = 0 if ttl_s is None else now + max(1, int(ttl_s * 1e9))
        t.grow(self._name, len(data) + len(t.replica) - len(crdt.value) - len(crdt.writer))
        crdt.write(t.replica, data, now, expires_at=expires_at)
        t.changed(self._name)

    def get(self, default: Any = None) -> Any:
        """The value, or ``default`` when cleared, expired or never written."""
        crdt = self._t.get(self._name, LWWRegister)
        if crdt is None or not crdt.live(self._t.clock()):
            return default
        return msgspec.msgpack.decode(crdt.value)


class Store:
    """The shared state of one tenant: named counters, sets and registers."""

    __slots__ = ("_t", "_views")

    def __init__(self, tenant: str, *, limits: StoreLimits | None = None) -> None:
        """A standalone in-memory store (tests, scripts); workers hand out ``ReplicaState.store(tenant)``."""
        self._t = TenantState(check_tenant(tenant), new_replica_id("local"), limits or StoreLimits())
        self._views: dict[str, _View] = {}

    @classmethod
    def _bind(cls, t: TenantState) -> Store:
        store = cls.__new__(cls)
        store._t = t
        store._views = {}
        return store

    @property
    def tenant(self) -> str:
        """The tenant this store belongs to."""
        return self._t.tenant

    def counter(self, name: str) -> CounterView:
        """The grow-only counter ``name``."""
        return self._view(name, CounterView)

    def pncounter(self, name: str) -> PNCounterView:
        """The increment/decrement counter ``name``."""
        return self._view(name, PNCounterView)

    def set(self, name: str) -> SetView:
        """The add-wins set ``name``."""
        return self._view(name, SetView)

    def register(self, name: str) -> RegisterView:
        """The last-writer-wins register ``name``."""
        return self._view(name, RegisterView)

    def names(self) -> dict[str, str]:
        """Every name written so far and its kind (``counter``, ``pncounter``, ``set``, ``register``)."""
        return {name: KIND[type(crdt)] for name, crdt in sorted(self._t.entries.items())}

    def snapshot(self) -> dict[str, Any]:
        """Every name and its current value (sets as sorted lists; expired registers left out)."""
        now = self._t.clock()
        out: dict[str, Any] = {}
        for name, crdt in sorted(self._t.entries.items()):
            if isinstance(crdt, GCounter | PNCounter):
                out[name] = crdt.value
            elif isinstance(crdt, ORSet):
                out[name] = sorted(crdt.entries)
            elif crdt.live(now):
                out[name] = msgspec.msgpack.decode(crdt.value)
        return out

    def _view(self, name: str, cls: type[V]) -> V:
        view = self._views.get(name)
        if type(view) is cls:
            return view
        if not isinstance(name, str) or not 0 < len(name) <= self._t.limits.max_name_chars:
            raise ValueError(f"names are 1-{self._t.limits.max_name_chars} chars, got {name!r}")
        new = cls(self._t, name, not name.startswith(RESERVED))
        if len(self._views) < 4 * self._t.limits.max_entries:  # views of unwritten names stay bounded
            self._views[name] = new
        return new

    def _internal(self, name: str, cls: type[V]) -> V:
        """A writable view of a reserved ``~`` name, for agentbus's own counters (not cached)."""
        return cls(self._t, name, True)

    def __repr__(self) -> str:
        return f"<Store tenant={self.tenant!r} entries={len(self._t.entries)}>"
