"""Every gossip message, as msgspec Structs in one place.

One datagram is one :class:`Packet`: the sender's cluster, a few protocol messages
and piggybacked membership updates, the way memberlist compounds messages into one
UDP packet. MessagePack, because state travels as opaque bytes. Schemas evolve by
appending defaulted fields; an unknown tag or a malformed packet is dropped by the
receiver (gossip is lossy anyway), never half-applied.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "Ack",
    "Alive",
    "Announce",
    "Dead",
    "Deltas",
    "Digest",
    "Message",
    "Packet",
    "Ping",
    "PingReq",
    "PushPull",
    "Suspect",
    "Update",
    "decode_packet",
    "encode_packet",
]


NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
"""A gossip node id (a replica id): a NATS subject token."""
Source = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,64}$")]


# -- membership updates (piggybacked; memberlist's alive/suspect/dead broadcasts) --


class Alive(msgspec.Struct, tag="alive", frozen=True):
    """``node`` is alive at ``incarnation`` (only the node itself raises its incarnation)."""

    node: NodeId
    incarnation: int


class Suspect(msgspec.Struct, tag="suspect", frozen=True):
    """``source`` suspects ``node`` at ``incarnation``."""

    node: NodeId
    incarnation: int
    source: Source


class Dead(msgspec.Struct, tag="dead", frozen=True):
    """``source`` declares ``node`` dead; ``source == node`` means it left on purpose."""

    node: NodeId
    incarnation: int
    source: Source


Update = Alive | Suspect | Dead


# -- protocol messages --


class Ping(msgspec.Struct, tag="ping", frozen=True):
    """Probe; ``target`` lets a restarted node with a reused address ignore a stale probe."""

    seq: int
    target: str


class Ack(msgspec.Struct, tag="ack", frozen=True):
    """Answer to a :class:`Ping` with the same ``seq`` (forwarded as-is by an indirect helper)."""

    seq: int
    target: str


class PingReq(msgspec.Struct, tag="ping_req", frozen=True):
    """Ask the receiver to probe ``target`` and forward the ack (SWIM's indirect probe)."""

    seq: int
    target: str


class Deltas(msgspec.Struct, tag="deltas", frozen=True):
    """One batch of ``Delegate.pending()`` bytes, identified by origin and sequence number."""

    origin: str
    seq: int
    data: bytes


class Digest(msgspec.Struct, tag="digest", frozen=True):
    """Opens a push-pull: the sender's state fingerprint (its member list rides along)."""

    digest: bytes
    round: int = 0


class PushPull(msgspec.Struct, tag="push_pull", frozen=True):
    """Answer to a :class:`Digest` (``reply``) or the opener's second half.

    ``state`` is None when the digests already matched.
    """

    digest: bytes
    state: bytes | None
    reply: bool
    round: int = 0
    part: Annotated[int, msgspec.Meta(ge=0, lt=4096)] = 0
    """A full state too big for one packet goes in ``parts`` payloads, each merged alone."""
    parts: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 1


class Announce(msgspec.Struct, tag="announce", frozen=True):
    """Broadcast on join and periodically: the sender exists; peers answer with their view."""

    incarnation: int
    want_reply: bool = True


Message = Ping | Ack | PingReq | Deltas | Digest | PushPull | Announce


class Packet(msgspec.Struct, frozen=True):
    """One datagram."""

    cluster: str
    messages: list[Message] = []
    updates: list[Update] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Packet)


def encode_packet(packet: Packet) -> bytes:
    """Bytes for the transport."""
    return _encoder.encode(packet)


def decode_packet(data: bytes) -> Packet:
    """Parse a datagram; raises ``msgspec.DecodeError`` (or ValidationError) on garbage."""
    return _decoder.decode(data)
