"""SWIM-like membership, after hashicorp/memberlist (``state.go``, ``suspicion.go``).

Sans-IO: the caller passes ``now`` and gets messages through ``send``; nothing here
sleeps or touches a network, so tests drive it with a virtual clock.

* Each member has an incarnation number that only the member itself raises. News
  about a member (alive, suspect, dead) is ordered by incarnation; a member that hears
  it is suspected or dead refutes by raising its incarnation and announcing itself.
* Once per probe interval a replica pings one peer (round robin over a shuffled
  list). No ack within the probe timeout: ``indirect_checks`` other peers ping it on its
  behalf. No ack by the end of the interval: the peer becomes suspect.
* A suspect is declared dead after a timeout that starts at
  ``suspicion_max_timeout_mult`` x the minimum and shrinks towards the minimum
  (``suspicion_mult x max(1, log10 n) x probe interval``) as independent replicas
  confirm the suspicion (memberlist's accelerated suspicion timer).
* A replica that leaves announces ``Dead`` about itself: peers mark it ``LEFT``.
* Updates are piggybacked on every packet through a transmit-limited queue.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from state.gossip.config import GossipConfig
from state.gossip.dissemination import TransmitLimitedQueue
from state.gossip.wire import Ack, Alive, Dead, Message, Ping, PingReq, Suspect, Update

__all__ = ["Member", "MemberState", "Membership", "Suspicion"]


class MemberState(enum.Enum):
    """Where a member stands in this replica's view."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass
class Suspicion:
    """memberlist's suspicion timer: shrinks with each independent confirmation."""

    start: float
    min_s: float
    max_s: float
    expected: int
    """Confirmations that bring the timeout down to ``min_s`` (memberlist's k)."""
    sources: set[str] = field(default_factory=set)

    def confirm(self, source: str) -> bool:
        """Count ``source``; True if it is new."""
        if source in self.sources:
            return False
        self.sources.add(source)
        return True

    def deadline(self) -> float:
        """When the suspect is declared dead."""
        if self.expected < 1:
            return self.start + self.min_s
        confirmations = len(self.sources) - 1  # the first accuser starts the timer
        frac = math.log(confirmations + 1) / math.log(self.expected + 1)
        return self.start + max(self.min_s, self.max_s - frac * (self.max_s - self.min_s))


@dataclass
class Member:
    """One peer as this replica sees it."""

    node: str
    incarnation: int
    state: MemberState
    since: float
    """When ``state`` last changed (this replica's clock)."""
    suspicion: Suspicion | None = None

    def update(self) -> Update:
        """This member's state as a gossip update (for push-pull and announce replies)."""
        if self.state is MemberState.ALIVE:
            return Alive(self.node, self.incarnation)
        if self.state is MemberState.SUSPECT:
            source = min(self.suspicion.sources) if self.suspicion and self.suspicion.sources else ""
            return Suspect(self.node, self.incarnation, source)
        source = self.node if self.state is MemberState.LEFT else ""
        return Dead(self.node, self.incarnation, source)


@dataclass
class _Probe:
    target: str
    seq: int
    start: float
    acked: bool = False
    indirect_sent: bool = False


@dataclass
class _Relay:
    origin: str
    origin_seq: int
    target: str
    expires: float


Send = Callable[[str, Message], None]
_MAX_RELAYS = 256


class Membership:
    """This replica's view of the cluster and the SWIM failure detector."""

    def __init__(
        self,
        node: str,
        config: GossipConfig,
        *,
        send: Send,
        rng: random.Random,
        on_change: Callable[[Member], None] | None = None,
    ) -> None:
        self.node = node
        self.config = config
        self.incarnation = 0
        self.members: dict[str, Member] = {}
        self.updates: TransmitLimitedQueue[str, Update] = TransmitLimitedQueue(lambda u: 48 + len(u.node))
        self.leaving = False
        self.refuted = 0
        """How often this replica refuted a suspicion or death (a false-positive counter)."""
        self._send = send
        self._rng = rng
        self._on_change = on_change
        self._seq = 0
        self._probe: _Probe | None = None
        self._next_probe_at = 0.0
        self._probe_order: list[str] = []
        self._relays: dict[int, _Relay] = {}
        self.on_limit: Callable[[], None] = lambda: None
        """Called for each new member refused because the table is full (``max_members``)."""

    # -- views --

    def live_peers(self) -> list[str]:
        """Peers believed alive or only suspected (sorted, for determinism)."""
        return sorted(
            m.node for m in self.members.values() if m.state in (MemberState.ALIVE, MemberState.SUSPECT)
        )

    def alive_peers(self) -> list[str]:
        """Peers believed alive."""
        return sorted(m.node for m in self.members.values() if m.state is MemberState.ALIVE)

    def gossip_peers(self, now: float) -> list[str]:
        """Live peers plus the recently dead, so a node that was only cut off learns it and refutes."""
        horizon = now - self.config.gossip_to_the_dead_s
        return sorted(
            m.node
            for m in self.members.values()
            if m.state in (MemberState.ALIVE, MemberState.SUSPECT)
            or (m.state is MemberState.DEAD and m.since > horizon)
        )

    def cluster_size(self) -> int:
        """Live members including this replica (the n in memberlist's formulas)."""
        return len(self.live_peers()) + 1

    def snapshot(self) -> list[Update]:
        """Every member's state and our own: the membership half of a push-pull."""
        return [Alive(self.node, self.incarnation), *(m.update() for m in self.members.values())]

    def take_updates(self) -> list[Update]:
        """Updates to piggyback on one outgoing packet."""
        return self.updates.take(
            limit=self.config.retransmit_limit(self.cluster_size()),
            max_items=self.config.max_piggyback_updates,
            max_bytes=self.config.max_packet_bytes // 8,
        )

    # -- lifecycle --

    def join(self, now: float) -> None:
        """Start as alive and tell others."""
        self.leaving = False
        self._next_probe_at = now + self._rng.uniform(0, self.config.probe_interval_s)
        self._broadcast(Alive(self.node, self.incarnation))

    def leave(self) -> Dead:
        """Stop probing; the returned notice is broadcast by the caller."""
        self.leaving = True
        notice = Dead(self.node, self.incarnation, self.node)
        self._broadcast(notice)
        return notice

    def forget(self, node: str) -> None:
        """Drop ``node`` from the table (after pruning)."""
        self.members.pop(node, None)

    # -- news --

    def apply(self, now: float, update: Update) -> None:
        """Apply one membership update from anywhere (memberlist aliveNode/suspectNode/deadNode)."""
        if isinstance(update, Alive):
            self._alive(now, update)
        elif isinstance(update, Suspect):
            self._suspect(now, update)
        else:
            self._dead(now, update)

    def _alive(self, now: float, a: Alive) -> None:
        if a.node == self.node:
            if a.incarnation > self.incarnation and not self.leaving:
                # peers remember a later incarnation of us (we restarted): move past it
                self._refute(a.incarnation)
            return
        m = self.members.get(a.node)
        if m is None:
            if not self._room():
                self.on_limit()
                return
            self._set(now, Member(a.node, a.incarnation, MemberState.ALIVE, now))
            self._broadcast(a)
            return
        if a.incarnation > m.incarnation:  # news about a member is ordered by incarnation
            m.incarnation = a.incarnation
            m.suspicion = None
            self._set(now, m, MemberState.ALIVE)
            self._broadcast(a)

    def _suspect(self, now: float, s: Suspect) -> None:
        if s.node == self.node:
            if s.incarnation >= self.incarnation and not self.leaving:
                self._refute(s.incarnation)
            return
        m = self.members.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            return
        if m.suspicion is not None:  # already suspect: an independent accuser speeds the timer up
            if m.suspicion.confirm(s.source):
                self._broadcast(s)
            return
        if m.state is not MemberState.ALIVE:
            return
        m.incarnation = s.incarnation
        low, high = self.config.suspicion_timeouts_s(self.cluster_size())
        n = self.cluster_size()
        expected = self.config.suspicion_mult - 2
        if n - 2 < expected:
            expected = 0
        m.suspicion = Suspicion(now, low, high, expected)
        m.suspicion.confirm(s.source)
        self._set(now, m, MemberState.SUSPECT)
        self._broadcast(s)

    def _dead(self, now: float, d: Dead) -> None:
        if d.node == self.node:
            if not self.leaving and d.incarnation >= self.incarnation:
                self._refute(d.incarnation)
            return
        m = self.members.get(d.node)
        if m is None:
            return
        if d.incarnation < m.incarnation or m.state in (MemberState.DEAD, MemberState.LEFT):
            if d.source == d.node and m.state is MemberState.DEAD and d.incarnation >= m.incarnation:
                self._set(now, m, MemberState.LEFT)  # a leave notice outranks our own verdict
            return
        m.incarnation = d.incarnation
        m.suspicion = None
        self._set(now, m, MemberState.LEFT if d.source == d.node else MemberState.DEAD)
        self._broadcast(d)

    def _room(self) -> bool:
        """Whether a new member fits: the table is bounded, the longest-gone member makes room."""
        if len(self.members) < self.config.max_members:
            return True
        gone = [m for m in self.members.values() if m.state in (MemberState.DEAD, MemberState.LEFT)]
        if not gone:
            return False
        del self.members[min(gone, key=lambda m: m.since).node]
        return True

    def _refute(self, accused_incarnation: int) -> None:
        self.incarnation = max(self.incarnation, accused_incarnation) + 1
        self.refuted += 1
        self._broadcast(Alive(self.node, self.incarnation))

    def _set(self, now: float, m: Member, state: MemberState | None = None) -> None:
        if state is not None and state is not m.state:
            m.state = state
            m.since = now
        self.members[m.node] = m
        if self._on_change is not None:
            self._on_change(m)

    def _broadcast(self, update: Update) -> None:
        self.updates.put(update.node, update)

    # -- failure detection --

    def on_ping(self, sender: str, ping: Ping) -> None:
        """Answer a probe addressed to us."""
        if ping.target == self.node and not self.leaving:
            self._send(sender, Ack(ping.seq, self.node))

    def on_ping_req(self, now: float, sender: str, req: PingReq) -> None:
        """Probe ``req.target`` for ``sender`` and relay the ack."""
        if req.target == self.node:
            self._send(sender, Ack(req.seq, self.node))
            return
        if len(self._relays) >= _MAX_RELAYS:  # a flood of probe requests: each costs a ping
            return
        self._seq += 1
        self._relays[self._seq] = _Relay(sender, req.seq, req.target, now + self.config.probe_interval_s)
        self._send(req.target, Ping(self._seq, req.target))

    def on_ack(self, ack: Ack) -> None:
        """An ack for our probe, or one to relay to whoever asked us to probe."""
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            if relay.target == ack.target:
                self._send(relay.origin, Ack(relay.origin_seq, ack.target))
            return
        probe = self._probe
        if probe is not None and ack.seq == probe.seq and ack.target == probe.target:
            probe.acked = True

    def tick(self, now: float) -> None:
        """Advance probes and suspicion timers to ``now``."""
        self._expire_relays(now)
        self._expire_suspicions(now)
        if self.leaving:
            return
        probe = self._probe
        if probe is not None:
            if (
                not probe.acked
                and not probe.indirect_sent
                and now >= probe.start + self.config.probe_timeout_s
            ):
                probe.indirect_sent = True
                helpers = [p for p in self.alive_peers() if p != probe.target]
                for helper in self._rng.sample(helpers, min(self.config.indirect_checks, len(helpers))):
                    self._send(helper, PingReq(probe.seq, probe.target))
            if now >= probe.start + self.config.probe_interval_s:
                self._probe = None
                m = self.members.get(probe.target)
                if not probe.acked and m is not None and m.state is MemberState.ALIVE:
                    self.apply(now, Suspect(m.node, m.incarnation, self.node))
        if self._probe is None and now >= self._next_probe_at:
            self._next_probe_at = now + self.config.probe_interval_s
            target = self._next_target()
            if target is not None:
                self._seq += 1
                self._probe = _Probe(target, self._seq, now)
                self._send(target, Ping(self._seq, target))

    def _next_target(self) -> str | None:
        live = set(self.live_peers())
        while self._probe_order:
            candidate = self._probe_order.pop()
            if candidate in live:
                return candidate
        if not live:
            return None
        self._probe_order = sorted(live)
        self._rng.shuffle(self._probe_order)
        return self._probe_order.pop()

    def _expire_relays(self, now: float) -> None:
        for seq in [s for s, r in self._relays.items() if r.expires <= now]:
            del self._relays[seq]

    def _expire_suspicions(self, now: float) -> None:
        for m in list(self.members.values()):
            if m.state is MemberState.SUSPECT and m.suspicion is not None and now >= m.suspicion.deadline():
                self.apply(now, Dead(m.node, m.incarnation, self.node))
