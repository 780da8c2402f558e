"""The in-memory twin of the NATS transport (memberlist's MockNetwork, with faults).

An :class:`InMemoryNetwork` connects :class:`InMemoryTransport` endpoints and injects
loss, duplication, reordering (random extra delay) and partitions, all drawn from one
seeded ``random.Random`` so a failing run replays exactly.

Two ways to run it:

* real time (``clock=None``): deliveries are scheduled on the running asyncio loop,
  so the same tests that run over nats-server run over this;
* virtual time (a :class:`VirtualClock`): nothing moves until the test calls
  :meth:`InMemoryNetwork.run_until`, which delivers every datagram due by then, in
  order, advancing the clock as it goes. Hypothesis runs hundreds of simulated
  minutes this way in seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from state.delegate import MessageHandler

__all__ = ["InMemoryNetwork", "InMemoryTransport", "NetworkStats", "VirtualClock"]

log = logging.getLogger("agentbus.gossip.memory")


class VirtualClock:
    """A clock that moves only when told to; call it for the time."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class NetworkStats:
    """What the network did to the traffic."""

    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    partitioned: int = 0


@dataclass(order=True)
class _Datagram:
    at: float
    seq: int
    dest: str = field(compare=False)
    sender: str = field(compare=False)
    data: bytes = field(compare=False)


class InMemoryNetwork:
    """Datagrams between named endpoints, with injectable faults."""

    def __init__(
        self,
        *,
        seed: int = 0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        latency_s: float = 0.001,
        jitter_s: float = 0.0,
        clock: VirtualClock | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        """Extra delay drawn uniformly from [0, jitter_s]: reorders datagrams."""
        self.clock = clock
        self.stats = NetworkStats()
        self._handlers: dict[str, MessageHandler] = {}
        self._groups: dict[str, int] = {}
        self._cut: set[frozenset[str]] = set()
        self._queue: list[_Datagram] = []
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def transport(self) -> InMemoryTransport:
        """A new endpoint on this network."""
        return InMemoryTransport(self)

    # -- faults --

    def set_faults(
        self, *, loss: float | None = None, duplicate: float | None = None, jitter_s: float | None = None
    ) -> None:
        """Change fault rates from now on."""
        if loss is not None:
            self.loss = loss
        if duplicate is not None:
            self.duplicate = duplicate
        if jitter_s is not None:
            self.jitter_s = jitter_s

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes in the same group talk; nodes in no group form one more group together."""
        self._groups = {node: i for i, group in enumerate(groups) for node in group}

    def cut(self, a: str, b: str) -> None:
        """Break the one link between ``a`` and ``b`` (both ways); others still reach both."""
        self._cut.add(frozenset((a, b)))

    def heal(self) -> None:
        """Remove every partition and cut link."""
        self._groups = {}
        self._cut = set()

    def reachable(self, a: str, b: str) -> bool:
        """Whether a datagram from ``a`` can reach ``b`` right now."""
        if self._groups.get(a, -1) != self._groups.get(b, -1):
            return False
        return a == b or frozenset((a, b)) not in self._cut

    # -- plumbing --

    def _register(self, node: str, handler: MessageHandler) -> None:
        self._handlers[node] = handler

    def _unregister(self, node: str) -> None:
        self._handlers.pop(node, None)

    def _send(self, sender: str, dest: str, data: bytes) -> None:
        self.stats.sent += 1
        if not self.reachable(sender, dest):
            self.stats.partitioned += 1
            return
        if self.rng.random() < self.loss:
            self.stats.dropped += 1
            return
        copies = 1
        if self.rng.random() < self.duplicate:
            self.stats.duplicated += 1
            copies = 2
        for _ in range(copies):
            delay = self.latency_s + self.rng.uniform(0, self.jitter_s)
            self._schedule(delay, dest, sender, data)

    def _broadcast(self, sender: str, data: bytes) -> None:
        for dest in sorted(self._handlers):
            self._send(sender, dest, data)

    def _schedule(self, delay: float, dest: str, sender: str, data: bytes) -> None:
        self._seq += 1
        if self.clock is not None:
            heapq.heappush(self._queue, _Datagram(self.clock() + delay, self._seq, dest, sender, data))
            return
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._deliver_later, dest, sender, data)

    def _deliver_later(self, dest: str, sender: str, data: bytes) -> None:
        handler = self._handlers.get(dest)
        if handler is None:
            return
        self.stats.delivered += 1

        async def deliver() -> None:
            await handler(sender, data)

        task = asyncio.get_running_loop().create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("in-memory delivery failed", exc_info=task.exception())

    async def run_until(self, t: float) -> None:
        """Virtual time only: deliver everything due by ``t`` (in time order), then set the clock to ``t``."""
        clock = self.clock
        assert clock is not None, "run_until needs a VirtualClock"
        while self._queue and self._queue[0].at <= t:
            d = heapq.heappop(self._queue)
            clock.now = max(clock.now, d.at)
            handler = self._handlers.get(d.dest)
            if handler is not None:
                self.stats.delivered += 1
                await handler(d.sender, d.data)
        clock.now = max(clock.now, t)

    def in_flight(self) -> int:
        """Datagrams queued for delivery (virtual time)."""
        return len(self._queue)


class InMemoryTransport:
    """One endpoint: implements ``state.delegate.Transport``."""

    def __init__(self, network: InMemoryNetwork) -> None:
        self._network = network
        self._node: str | None = None

    async def start(self, node: str, on_message: MessageHandler) -> None:
        """Receive datagrams for ``node`` and broadcasts."""
        self._node = node
        self._network._register(node, on_message)

    async def send(self, node: str, data: bytes) -> None:
        """Send one datagram (subject to the network's faults)."""
        if self._node is not None:
            self._network._send(self._node, node, data)

    async def broadcast(self, data: bytes) -> None:
        """Send to every endpoint, ourselves included (as a NATS subscriber hears its own publish)."""
        if self._node is not None:
            self._network._broadcast(self._node, data)

    async def close(self) -> None:
        """Stop receiving."""
        if self._node is not None:
            self._network._unregister(self._node)
            self._node = None
