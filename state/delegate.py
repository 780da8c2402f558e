"""The two small interfaces between replicated state and gossip (memberlist's Delegate, smaller).

Gossip moves opaque bytes between replicas and never looks inside them; state
decides what the bytes mean. Keeping this seam narrow lets the same gossip run
any state and the same state run over any transport (NATS, or the in-memory one
with injected loss, duplication, reordering and partitions used by the tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

__all__ = ["Delegate", "GuardedDelegate", "PeerView", "Pruning", "Transport"]


class Delegate(Protocol):
    """What gossip needs from the replicated state of one replica."""

    def pending(self) -> bytes | None:
        """Deltas accumulated since the last call, encoded (the buffer is then cleared); None if none."""
        ...

    def merge(self, data: bytes) -> None:
        """Merge bytes from a peer: deltas or a full state. Idempotent, commutative, associative.

        Must reject (raise ``agentbus.errors.AgentbusError`` subclasses) rather than half-apply
        anything malformed.
        """
        ...

    def full_state(self) -> bytes:
        """The whole state, encoded, for push-pull anti-entropy."""
        ...

    def digest(self) -> bytes:
        """A short fingerprint: equal digests mean equal states, so a push-pull can stop early."""
        ...


@runtime_checkable
class Pruning(Protocol):
    """Optional extra for a :class:`Delegate`: drop a departed replica's per-replica metadata.

    Gossip calls ``prune`` on one replica only (the owner: smallest live id, majority
    alive, no suspects), for a replica dead or left for ``GossipConfig.prune_after_s``,
    and only after pulling the full state of every live peer, so the owner's copy of
    the departed replica's slots dominates every live copy. Safety argument in full:
    ``state/gossip/pruning.py`` (after Akka's RemovedNodePruning).
    """

    def prune(self, node: str) -> None:
        """Fold what ``node`` contributed into this replica's own slots and mark ``node`` pruned.

        Must reach peers as one delta (fold and marker together), be a no-op when ``node``
        is already marked pruned, and make every later merge drop ``node``'s slots
        wherever the marker is present, so stale copies never count twice. A replica
        that merges a marker naming *itself* (it was paused or cut off longer than
        ``prune_after_s``) must move to a new replica id before writing again.
        """
        ...


class PeerView(Protocol):
    """How gossip sees the cluster, for a delegate that vets what peers say (``state._guard``)."""

    def is_live(self, node: str) -> bool:
        """Whether ``node`` is alive or suspect here (then it speaks for itself)."""
        ...

    def may_prune(self, node: str) -> bool:
        """Whether a prune marker naming ``node`` is believable: ``node`` has been dead or gone
        long enough here, or, for this replica itself, it was cut off long enough."""
        ...


@runtime_checkable
class GuardedDelegate(Protocol):
    """Optional extra for a :class:`Delegate` that does not take a peer's word for everything.

    Gossip then calls :meth:`merge_from` with the packet's authenticated sender instead of
    ``merge``, and sends full states in parts that each fit a packet.
    """

    def watch(self, peers: PeerView) -> None:
        """Use ``peers`` to vet what is merged from now on."""
        ...

    def merge_from(self, data: bytes, sender: str, *, delta: bool) -> None:
        """Merge what ``sender`` may say: a delta batch only its own writes (``delta``), a full
        state also what it relays of replicas that cannot speak for themselves."""
        ...

    def full_state_parts(self, max_bytes: int) -> list[bytes]:
        """The whole state as payloads of at most about ``max_bytes`` each (each merges alone)."""
        ...


MessageHandler = Callable[[str, bytes], Awaitable[None]]
"""Called with ``(sender node id, payload)`` for every message a transport receives."""


class Transport(Protocol):
    """Unreliable, unordered datagrams between named nodes (core NATS is at-most-once)."""

    async def start(self, node: str, on_message: MessageHandler) -> None:
        """Begin receiving messages addressed to ``node`` and broadcasts."""
        ...

    async def send(self, node: str, data: bytes) -> None:
        """Send to one node; may be lost, duplicated or reordered."""
        ...

    async def broadcast(self, data: bytes) -> None:
        """Send to every node listening (announcements, leave notices)."""
        ...

    async def close(self) -> None:
        """Stop receiving."""
        ...
