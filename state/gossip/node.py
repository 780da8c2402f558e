"""One replica's gossip: membership and dissemination tied to a Transport and a Delegate.

Time is injected. :meth:`Gossip.tick` does whatever is due at ``clock()``: in
production a background task calls it every few tens of milliseconds; tests with a
virtual clock call it directly, so hundreds of simulated seconds take milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from agentbus.errors import AgentbusError, ConfigError
from state.delegate import Delegate, GuardedDelegate, Pruning, Transport
from state.gossip.config import GossipConfig
from state.gossip.dissemination import DeltaLog
from state.gossip.membership import Member, Membership, MemberState
from state.gossip.pruning import Pruner
from state.gossip.wire import (
    Ack,
    Alive,
    Announce,
    Deltas,
    Digest,
    Message,
    Packet,
    Ping,
    PingReq,
    PushPull,
    Update,
    decode_packet,
    encode_packet,
)

__all__ = ["Gossip", "GossipStats"]

log = logging.getLogger("agentbus.gossip")

_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNICAST, _BROADCAST = b"\x01", b"\x02"
_DOMAIN = b"agentbus-gossip"
_TAG = 32
_MAX_PARTS_TRACKED = 256


@functools.cache
def _warn_unkeyed() -> None:
    """Once per process: gossip between processes without a cluster key."""
    log.warning(
        "gossip between replicas is not authenticated (no cluster key, AGENTBUS_CLUSTER_KEY_FILE):"
        " any client that may publish on the gossip subjects can change shared state"
    )


@dataclass
class GossipStats:
    """Counters for metrics and tests."""

    packets_sent: int = 0
    packets_received: int = 0
    bad_packets: int = 0
    foreign_packets: int = 0
    merge_errors: int = 0
    delta_batches_merged: int = 0
    duplicate_batches: int = 0
    push_pulls_started: int = 0
    full_states_merged: int = 0
    oversized_dropped: int = 0
    send_errors: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    """Packets and messages dropped as not authentic or not believable, by reason: ``bad_mac``
    (tag missing or wrong), ``wrong_origin`` (a delta batch relayed for another replica),
    ``member_limit`` (membership news past ``max_members``)."""

    def reject(self, reason: str) -> None:
        """Count one rejection."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass
class _Outgoing:
    messages: list[Message] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)


class Gossip:
    """SWIM membership plus delta gossip and push-pull anti-entropy for one replica."""

    def __init__(
        self,
        node: str,
        transport: Transport,
        delegate: Delegate,
        config: GossipConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or GossipConfig()
        self.stats = GossipStats()
        self._transport = transport
        self._delegate = delegate
        self._clock = clock
        self._rng = rng or random.Random()
        self._outbox: dict[str, _Outgoing] = {}
        self._become(node)
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._next_gossip_at = 0.0
        self._next_push_pull_at = 0.0
        self._next_announce_at = 0.0
        self._parts: dict[tuple[str, int], set[int]] = {}

    def _become(self, node: str) -> None:
        """Take ``node`` as this replica's identity: a fresh membership view, delta log and pruner."""
        if not _NODE_ID.fullmatch(node):
            raise ConfigError(f"gossip node id {node!r}: use 1-64 of [A-Za-z0-9_-]")
        self.node = node
        self.membership = Membership(node, self.config, send=self._send_later, rng=self._rng)
        self.membership.on_limit = lambda: self.stats.reject("member_limit")
        self._deltas = DeltaLog(node, self._rng)
        prune = self._delegate.prune if isinstance(self._delegate, Pruning) else None
        self.pruner = Pruner(self.config, self.membership, prune=prune, pull=self._pull)
        self._last_heard = self._clock()
        self._heard: dict[str, float] = {}
        """Peers we received a valid packet from (sender -> when), bounded by ``max_members``."""
        self._long_silence_ended = float("-inf")
        # when this node last heard from peers again after at least half of prune_after_s without a
        # packet (paused or cut off): only then may a prune marker naming itself be believed
        if isinstance(self._delegate, GuardedDelegate):
            self._delegate.watch(self)

    # -- PeerView (what the delegate asks before it believes a peer) --

    def is_live(self, node: str) -> bool:
        """Whether ``node`` is alive or suspect in our view (then it speaks for itself)."""
        m = self.membership.members.get(node)
        return m is not None and m.state in (MemberState.ALIVE, MemberState.SUSPECT)

    def may_prune(self, node: str) -> bool:
        """Whether a prune marker naming ``node`` is believable.

        Another replica: not alive or suspect here, and if known dead or departed, for at
        least half of ``prune_after_s`` (the owner waits all of it). This replica: only if it
        heard nothing for at least half of ``prune_after_s`` (paused or cut off), the only
        way peers could have declared it dead that long, and that silence ended recently
        (within ``prune_after_s``: the owner's marker arrives with the first rounds after).
        """
        half = self.config.prune_after_s / 2
        now = self._clock()
        if node == self.node:
            silent = now - self._last_heard >= half
            return silent or now - self._long_silence_ended <= self.config.prune_after_s
        m = self.membership.members.get(node)
        if m is None:
            return True  # pruned and forgotten before we joined, or never met
        if m.state in (MemberState.ALIVE, MemberState.SUSPECT):
            return False
        return now - m.since >= half

    # -- views --

    def live_peers(self) -> list[str]:
        """Peers believed alive or suspect."""
        return self.membership.live_peers()

    def state_of(self, node: str) -> MemberState | None:
        """How this replica sees ``node`` (None: unknown)."""
        m = self.membership.members.get(node)
        return m.state if m else None

    def members(self) -> dict[str, Member]:
        """The membership table (a copy)."""
        return dict(self.membership.members)

    # -- lifecycle --

    async def start(self, *, autotick: bool = True) -> None:
        """Listen, announce ourselves, and (unless ``autotick=False``) run the gossip loop."""
        await self._transport.start(self.node, self._on_message)
        now = self._clock()
        self._running = True
        c = self.config
        # staggered first rounds, so replicas started together do not gossip in lock step
        self._next_gossip_at = now + self._rng.uniform(0, c.gossip_interval_s)
        self._next_push_pull_at = now + self._rng.uniform(0.5, 1.0) * c.push_pull_interval_s
        self._next_announce_at = now + c.announce_interval_s
        self.membership.join(now)
        self._last_heard = now
        await self._broadcast(Packet(c.cluster, [Announce(self.membership.incarnation)], []))
        if autotick:
            self._task = asyncio.create_task(self._run(), name=f"gossip-{self.node}")

    async def stop(self, *, leave: bool = True) -> None:
        """Stop; with ``leave`` first hand our state over and tell peers we depart (left, not dead).

        The hand-off sends what is pending as one last delta batch and our full state
        to ``gossip_nodes`` live peers, so writes of the last round are not left to a
        push-pull that will never come (a draining worker's final counts).
        """
        if not self._running:
            return
        if leave:
            self._hand_off()
            await self._flush()
            notice = self.membership.leave()
            packet = Packet(self.config.cluster, [], [notice])
            for _ in range(2):  # at-most-once transport: a second copy costs nothing
                await self._broadcast(packet)
        self._running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._transport.close()

    async def rejoin(self, node: str) -> None:
        """Leave as the current node and join again as ``node``: the delegate moved to a new id.

        ``ReplicaState`` takes a new replica id when it learns that a peer pruned its
        old one (it was paused or cut off for longer than ``prune_after_s``). The gossip
        node id must follow: pruning is decided per node id, so a node that kept the old
        id would have its new slots never pruned. Peers see the old node leave and a new
        one join; membership is learnt again from their answers. Call it from outside
        the gossip loop (not from a delegate callback).
        """
        if node == self.node:
            return
        autotick = self._task is not None
        running = self._running
        await self.stop(leave=True)
        self._outbox = {}
        self._become(node)
        if running:
            await self.start(autotick=autotick)

    async def _run(self) -> None:
        resolution_s = min(self.config.gossip_interval_s, self.config.probe_timeout_s / 2)
        while self._running:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not end gossip for this replica
                log.exception("gossip round failed")
            await asyncio.sleep(resolution_s)

    # -- the step function --

    async def tick(self) -> None:
        """Do whatever is due now: probes, suspicion timeouts, a gossip round, push-pull, pruning."""
        if not self._running:
            return
        now = self._clock()
        c = self.config
        self.membership.tick(now)
        if now >= self._next_gossip_at:
            self._next_gossip_at = now + c.gossip_interval_s
            self._gossip_round(now)
        if now >= self._next_push_pull_at:
            self._next_push_pull_at = now + c.push_pull_interval_s
            self._start_push_pull()
        if now >= self._next_announce_at:
            self._next_announce_at = now + c.announce_interval_s
            await self._broadcast(Packet(c.cluster, [Announce(self.membership.incarnation, False)], []))
        self.pruner.tick(now)
        await self._flush()

    def _gossip_round(self, now: float) -> None:
        pending = self._delegate.pending()
        if pending:
            self._deltas.add_local(pending)
        peers = self._heard_first(self.membership.gossip_peers(now))
        if not peers:
            return
        limit = self.config.retransmit_limit(self.membership.cluster_size())
        budget = self.config.max_packet_bytes - 16 * 1024
        # one transmit per batch per *round*, to all k peers of the round: memberlist counts per
        # peer, which suits membership news that push-pull re-syncs anyway; a delta batch is the
        # only copy of a write until the next push-pull, so it gets k x limit sends
        batches = self._deltas.queue.take(limit=limit, max_items=10_000, max_bytes=budget)
        c = self.config
        fanout = max(c.gossip_nodes, c.delta_fanout) if batches else c.gossip_nodes
        for peer in self._rng.sample(peers, min(fanout, len(peers))):
            if batches or len(self.membership.updates):  # membership news rides along in _flush
                self._outbox.setdefault(peer, _Outgoing()).messages.extend(batches)

    def _hand_off(self) -> None:
        pending = self._delegate.pending()
        if pending:
            self._deltas.add_local(pending)
        batches = self._deltas.queue.take(limit=1, max_items=10_000, max_bytes=self.config.max_packet_bytes)
        peers = self._heard_first(self.membership.alive_peers())
        if not peers:
            return
        parts, digest = self._full_parts(), self._delegate.digest()
        for peer in self._rng.sample(peers, min(self.config.gossip_nodes, len(peers))):
            out = self._outbox.setdefault(peer, _Outgoing())
            out.messages.extend(batches)
            n = len(parts)
            out.messages.extend(PushPull(digest, part, False, 0, i, n) for i, part in enumerate(parts))

    def _heard_first(self, peers: list[str]) -> list[str]:
        """The peers we received a packet from ourselves, if any; else ``peers``.

        Membership news is second-hand and a peer holding the key can make up members
        (``max_members`` bounds them): a made-up member never speaks, so it must not take
        the fan-out of deltas and push-pull from real ones while probes declare it dead.
        """
        heard = self._heard
        direct = [p for p in peers if p in heard]
        return direct or peers

    def _start_push_pull(self) -> None:
        peers = self._heard_first(self.membership.alive_peers())
        if peers:
            self.stats.push_pulls_started += 1
            self._pull(self._rng.choice(peers), 0)

    def _pull(self, peer: str, round_id: int) -> None:
        out = self._outbox.setdefault(peer, _Outgoing())
        out.messages.append(Digest(self._delegate.digest(), round_id))
        out.updates.extend(self.membership.snapshot())

    # -- receiving --

    async def _on_message(self, sender: str, data: bytes) -> None:
        if sender == self.node or not self._running:
            return  # our own broadcast echoed back
        if self.config.key is not None:
            opened = self._open(sender, data)
            if opened is None:
                self.stats.reject("bad_mac")
                return
            data = opened
        try:
            packet = decode_packet(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.stats.bad_packets += 1
            return
        if packet.cluster != self.config.cluster:
            self.stats.foreign_packets += 1
            return
        self.stats.packets_received += 1
        if self.config.key is None:
            _warn_unkeyed()  # one user's laptop needs no key; several processes should have one
        now = self._clock()
        if now - self._last_heard >= self.config.prune_after_s / 2:
            self._long_silence_ended = now
        self._last_heard = now
        if sender not in self._heard and len(self._heard) >= 2 * self.config.max_members:
            self._heard = {n: t for n, t in self._heard.items() if n in self.membership.members}
        self._heard[sender] = now
        for update in packet.updates:
            self._apply(now, update)
        for message in packet.messages:
            self._handle(now, sender, message)
        await self._flush()

    def _apply(self, now: float, update: Update) -> None:
        """Apply membership news; a replica met for the first time is pulled from at once.

        A live replica speaks for itself (``state._guard``): its state reaches us from it,
        not relayed, so a new worker pulls from each peer it meets instead of waiting for a
        random push-pull to pick it (a scale-up would otherwise see a budget spent as 0).
        """
        members = self.membership.members
        new = update.node not in members and update.node != self.node
        self.membership.apply(now, update)
        m = members.get(update.node)
        if (
            new
            and m is not None
            and m.state is MemberState.ALIVE
            and isinstance(self._delegate, GuardedDelegate)
        ):
            self._pull(update.node, 0)

    def _handle(self, now: float, sender: str, msg: Message) -> None:
        m = self.membership
        if isinstance(msg, Deltas):
            if msg.origin != sender:  # first-hand only: a relayed batch could carry anyone's writes
                self.stats.reject("wrong_origin")
            elif not self._deltas.first_sight(msg):
                self.stats.duplicate_batches += 1
            elif self._merge(msg.data, sender, delta=True):
                self.stats.delta_batches_merged += 1
        elif isinstance(msg, Ping):
            m.on_ping(sender, msg)
        elif isinstance(msg, Ack):
            m.on_ack(msg)
        elif isinstance(msg, PingReq):
            m.on_ping_req(now, sender, msg)
        elif isinstance(msg, Digest):
            ours = self._delegate.digest()
            if ours == msg.digest:
                out = self._queue(sender, PushPull(ours, None, True, msg.round))
            else:
                parts = self._full_parts()
                for i, part in enumerate(parts):
                    out = self._queue(sender, PushPull(ours, part, True, msg.round, i, len(parts)))
            out.updates.extend(m.snapshot())
        elif isinstance(msg, PushPull):
            if msg.state is not None and self._merge(msg.state, sender, delta=False):
                self.stats.full_states_merged += 1
            if msg.reply and self._last_part(sender, msg):
                if msg.state is not None and self._delegate.digest() != msg.digest:
                    parts = self._full_parts()
                    for i, part in enumerate(parts):
                        self._queue(sender, PushPull(b"", part, False, msg.round, i, len(parts)))
                if msg.round:
                    self.pruner.on_reply(sender, msg.round)
        elif isinstance(msg, Announce):
            self._apply(now, Alive(sender, msg.incarnation))
            seen = m.members.get(sender)
            if msg.want_reply:
                self._queue(sender, Announce(m.incarnation, False)).updates.extend(m.snapshot())
            elif seen is not None and seen.state is not MemberState.ALIVE:
                # it thinks it is alive, we think not: tell it, so it refutes (memberlist#311)
                self._outbox.setdefault(sender, _Outgoing()).updates.append(seen.update())

    def _last_part(self, sender: str, msg: PushPull) -> bool:
        """Whether every part of this reply has arrived (a lost part: the round does not count)."""
        if msg.parts <= 1:
            return True
        key = (sender, msg.round)
        if key not in self._parts and len(self._parts) >= _MAX_PARTS_TRACKED:
            self._parts.clear()
        seen = self._parts.setdefault(key, set())
        seen.add(msg.part)
        if len(seen) < msg.parts:
            return False
        del self._parts[key]
        return True

    def _full_parts(self) -> list[bytes]:
        if isinstance(self._delegate, GuardedDelegate):
            return self._delegate.full_state_parts(self.config.max_packet_bytes - 16 * 1024)
        return [self._delegate.full_state()]

    def _merge(self, data: bytes, sender: str, *, delta: bool) -> bool:
        try:
            if isinstance(self._delegate, GuardedDelegate):
                self._delegate.merge_from(data, sender, delta=delta)
            else:
                self._delegate.merge(data)
        except AgentbusError as e:
            self.stats.merge_errors += 1
            log.warning("gossip: rejected state from %s: %s", sender, e)
            return False
        return True

    # -- sending --

    def _send_later(self, node: str, msg: Message) -> None:
        self._queue(node, msg)

    def _queue(self, node: str, msg: Message) -> _Outgoing:
        out = self._outbox.setdefault(node, _Outgoing())
        out.messages.append(msg)
        return out

    async def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        cluster = self.config.cluster
        for node, out in outbox.items():
            updates = out.updates + self.membership.take_updates()
            if not out.messages and not updates:
                continue
            packet = Packet(cluster, out.messages, updates)
            data = encode_packet(packet)
            if len(data) <= self.config.max_packet_bytes:
                await self._send(node, data)
                continue
            # too big for one datagram: one message per packet, oversized ones dropped
            for msg in out.messages:
                data = encode_packet(Packet(cluster, [msg], []))
                if len(data) > self.config.max_packet_bytes:
                    self.stats.oversized_dropped += 1
                    log.warning("gossip: %s of %d bytes too big", type(msg).__name__, len(data))
                    continue
                await self._send(node, data)
            if updates:
                await self._send(node, encode_packet(Packet(cluster, [], updates)))

    def _seal(self, dest: str, data: bytes) -> bytes:
        """Tag ``data`` for ``dest`` (``*``: a broadcast) from this node with the cluster key."""
        key = self.config.key
        if key is None:
            return data
        kind = _BROADCAST if dest == "*" else _UNICAST
        tag = key.tag(_DOMAIN, self.config.cluster.encode(), self.node.encode(), dest.encode(), data)
        return kind + tag + data

    def _open(self, sender: str, data: bytes) -> bytes | None:
        """The packet inside a sealed datagram, or None if the tag does not verify."""
        key = self.config.key
        assert key is not None
        if len(data) < 1 + _TAG or data[:1] not in (_UNICAST, _BROADCAST):
            return None
        dest = "*" if data[:1] == _BROADCAST else self.node
        tag, body = data[1 : 1 + _TAG], data[1 + _TAG :]
        if not key.verify(tag, _DOMAIN, self.config.cluster.encode(), sender.encode(), dest.encode(), body):
            return None
        return body

    async def _send(self, node: str, data: bytes) -> None:
        data = self._seal(node, data)
        try:
            await self._transport.send(node, data)
            self.stats.packets_sent += 1
        except Exception as e:  # gossip is lossy by design: a failed send is a lost datagram
            self.stats.send_errors += 1
            log.debug("gossip: send to %s failed: %s", node, e)

    async def _broadcast(self, packet: Packet) -> None:
        try:
            await self._transport.broadcast(self._seal("*", encode_packet(packet)))
            self.stats.packets_sent += 1
        except Exception as e:
            self.stats.send_errors += 1
            log.debug("gossip: broadcast failed: %s", e)
