"""Last-writer-wins register for flags and small values, with an optional expiry.

The value is kept encoded (MessagePack bytes, ``b""`` when cleared), so its size
is known exactly and any peer can merge it without decoding. Writes are stamped
with the writer's wall clock in ns, bumped past the stamp the writer last saw so
one replica's writes always order after each other. Concurrent writes on two
replicas resolve by the larger stamp, then the larger writer id: that is LWW's
known trade: it needs roughly synchronised clocks and
must not be used where the choice between concurrent values matters.

Merge compares the whole tuple ``(ts, writer, value, expires_at)``, a total order,
so merge is a join even for states no real writer produces.

Expiry (``expires_at``, Unix ns, 0 = never) is read-side: an expired register
reads as absent. Dropping expired registers from memory is a separate local step
(``TenantState.collect``), never part of merge, so merge stays a pure join; a peer
that still holds one re-sends it and it is collected again.

Why not ``crdts.LWWRegister``: it orders writes by a Lamport scalar clock shared
through one clock uuid, has no expiry, and packs/unpacks the value on every read.
"""

from __future__ import annotations

from state.counters import MAX_COUNT

__all__ = ["LWWRegister"]


class LWWRegister:
    """One encoded value with its write stamp; mutators return deltas (the whole register)."""

    __slots__ = ("expires_at", "ts", "value", "writer")

    def __init__(self, value: bytes = b"", ts: int = 0, writer: str = "", expires_at: int = 0) -> None:
        self.value = value
        self.ts = ts
        self.writer = writer
        self.expires_at = expires_at

    def _key(self) -> tuple[int, str, bytes, int]:
        return (self.ts, self.writer, self.value, self.expires_at)

    def live(self, now_ns: int) -> bool:
        """Whether the register holds a value that has not expired at ``now_ns``."""
        return bool(self.value) and (self.expires_at == 0 or now_ns < self.expires_at)

    def write(self, replica: str, value: bytes, now_ns: int, *, expires_at: int = 0) -> LWWRegister:
        """Set the encoded ``value`` (``b""`` clears); returns the delta."""
        self.ts = min(MAX_COUNT, max(now_ns, self.ts + 1))
        self.writer = replica
        self.value = value
        self.expires_at = expires_at
        return self.copy()

    def merge(self, other: LWWRegister) -> None:
        """Keep the later write (idempotent, commutative, associative)."""
        if other._key() > self._key():
            self.value, self.ts, self.writer, self.expires_at = (
                other.value,
                other.ts,
                other.writer,
                other.expires_at,
            )

    def copy(self) -> LWWRegister:
        """An independent copy."""
        return LWWRegister(self.value, self.ts, self.writer, self.expires_at)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWRegister):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWRegister({self.value!r}, {self.ts}, {self.writer!r}, expires_at={self.expires_at})"
