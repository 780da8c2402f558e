"""Every byte of shared state that leaves a replica: msgspec Structs and one framing.

Two bodies travel: a :class:`StateMessage` (gossip deltas and full states, both
merged the same way: merge is a join) and a :class:`TenantSnapshot` (one tenant's
state in Redis). Each entry is a tagged union member, so a peer knows the kind of
CRDT without a schema. Encoding is MessagePack in deterministic order (sorted
keys and sets), so equal states give equal bytes and equal digests.

Every body is framed::

    magic "ABS" | version (1 byte) | body length (4 bytes, big endian) | BLAKE2b-128 of body | body

:func:`decode` checks all four before msgspec sees a byte, and msgspec then checks
types and bounds (names, non-negative counts, sequence numbers >= 1): a flipped bit,
a truncation, trailing garbage or a foreign blob raises ``CorruptStateError`` with
the reason, and nothing is merged. Schemas evolve by appending defaulted fields;
``VERSION`` changes only for an incompatible frame.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Annotated

import msgspec

from agentbus.errors import CorruptStateError
from state.counters import MAX_COUNT, GCounter, PNCounter
from state.lww import LWWRegister
from state.orset import ORSet

__all__ = [
    "SYSTEM_TENANT",
    "TENANT_PATTERN",
    "VERSION",
    "Crdt",
    "Entry",
    "FoldedSlots",
    "GCounterState",
    "LWWState",
    "ORSetState",
    "PNCounterState",
    "StateMessage",
    "TenantSnapshot",
    "decode",
    "encode",
    "fingerprint",
    "from_wire",
    "to_wire",
]

VERSION = 1
MAGIC = b"ABS"
_HEADER = struct.Struct(">3sBI16s")

SYSTEM_TENANT = "$system"
"""Cluster-wide state (live agents); ``$`` is not a subject token, so no tenant can be named so."""
TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""The subject-token rule for tenants (``bus.subjects`` has the same; ``state`` does not import ``bus``)."""

Tenant = Annotated[str, msgspec.Meta(pattern=r"^(?:[A-Za-z0-9_-]{1,64}|\$system)$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
ReplicaId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
Ns = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
FoldedSlots = dict[Name, tuple[Count, Count]]
"""Per counter name: the ``(increments, decrements)`` a prune folded away from one replica's slot."""


class GCounterState(msgspec.Struct, tag="g", frozen=True):
    """A grow-only counter: replica id -> its slot."""

    slots: dict[ReplicaId, Count]
    expires_at: Ns = 0


class PNCounterState(msgspec.Struct, tag="pn", frozen=True):
    """A counter with decrements: increment and decrement slots."""

    p: dict[ReplicaId, Count]
    n: dict[ReplicaId, Count]
    expires_at: Ns = 0


class ORSetState(msgspec.Struct, tag="or", frozen=True):
    """An add-wins set: element -> live dots, and the causal context (version vector + cloud)."""

    entries: dict[Name, set[tuple[ReplicaId, Seq]]]
    vv: dict[ReplicaId, Seq]
    cloud: set[tuple[ReplicaId, Seq]]


class LWWState(msgspec.Struct, tag="lww", frozen=True):
    """A last-writer-wins register; ``value`` is MessagePack, ``b""`` when cleared."""

    value: bytes
    ts: Ns
    writer: str
    expires_at: Ns = 0


Entry = GCounterState | PNCounterState | ORSetState | LWWState
Crdt = GCounter | PNCounter | ORSet | LWWRegister


class StateMessage(msgspec.Struct, tag="state", frozen=True):
    """Gossip: deltas (``full=False``) or a whole state, from replica ``origin``."""

    origin: ReplicaId
    full: bool
    tenants: dict[Tenant, dict[Name, Entry]]
    pruned: dict[ReplicaId, Ns] = {}
    """Prune markers: replica id -> when it was pruned. Applied before ``tenants``."""
    folded: dict[ReplicaId, dict[Tenant, FoldedSlots]] = {}
    """What each prune folded, for the markers sent (kept ``fold_keep_s``): the pruned replica
    itself needs it if it was only paused (``ReplicaState`` moves it to a new id)."""


class TenantSnapshot(msgspec.Struct, tag="snapshot", frozen=True):
    """One tenant's state as one replica wrote it to Redis."""

    tenant: Tenant
    replica: ReplicaId
    written_at_ns: Ns
    entries: dict[Name, Entry]
    pruned: dict[ReplicaId, Ns] = {}
    """Every prune marker the writer knew: a restore must not count a pruned slot twice."""
    folded: dict[ReplicaId, FoldedSlots] = {}
    """What the prunes of ``pruned`` folded in this tenant, while the writer still kept it."""


Body = StateMessage | TenantSnapshot

_encoder = msgspec.msgpack.Encoder(order="deterministic")
_decoder = msgspec.msgpack.Decoder(Body)


def _hash(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def encode(body: StateMessage | TenantSnapshot) -> bytes:
    """Frame and encode a body."""
    raw = _encoder.encode(body)
    return _HEADER.pack(MAGIC, VERSION, len(raw), _hash(raw)) + raw


def decode(data: bytes) -> StateMessage | TenantSnapshot:
    """Check the frame and decode; raises ``CorruptStateError`` with the reason."""
    if len(data) < _HEADER.size:
        raise CorruptStateError(f"truncated: {len(data)} bytes, shorter than the header")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptStateError("not an agentbus state blob (bad magic)")
    if version != VERSION:
        raise CorruptStateError(f"unsupported version {version} (this build reads {VERSION})")
    body = data[_HEADER.size :]
    if len(body) != length:
        what = "truncated" if len(body) < length else "trailing bytes"
        raise CorruptStateError(f"{what}: body is {len(body)} bytes, header says {length}")
    if _hash(body) != digest:
        raise CorruptStateError("checksum mismatch")
    try:
        decoded: StateMessage | TenantSnapshot = _decoder.decode(body)
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise CorruptStateError(f"malformed: {e}") from None
    return decoded


def fingerprint(tenants: dict[str, dict[str, Entry]], pruned: dict[str, int] | None = None) -> bytes:
    """A 16-byte digest of a full state: equal states give equal digests (sorted encoding)."""
    return _hash(_encoder.encode((tenants, pruned or {})))


def to_wire(crdt: Crdt) -> Entry:
    """The wire form of a CRDT."""
    if isinstance(crdt, GCounter):
        return GCounterState(dict(crdt.slots), crdt.expires_at)
    if isinstance(crdt, PNCounter):
        return PNCounterState(dict(crdt.p), dict(crdt.n), crdt.expires_at)
    if isinstance(crdt, ORSet):
        return ORSetState({e: set(d) for e, d in crdt.entries.items()}, dict(crdt.vv), set(crdt.cloud))
    return LWWState(crdt.value, crdt.ts, crdt.writer, crdt.expires_at)


def from_wire(entry: Entry) -> Crdt:
    """A CRDT from its wire form; raises ``CorruptStateError`` for an inconsistent set."""
    if isinstance(entry, GCounterState):
        return GCounter(entry.slots, expires_at=entry.expires_at)
    if isinstance(entry, PNCounterState):
        return PNCounter(entry.p, entry.n, expires_at=entry.expires_at)
    if isinstance(entry, ORSetState):
        try:
            return ORSet.from_parts(entry.entries, entry.vv, entry.cloud)
        except ValueError as e:
            raise CorruptStateError(f"malformed set: {e}") from None
    return LWWRegister(entry.value, entry.ts, entry.writer, entry.expires_at)
