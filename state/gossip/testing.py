"""A tiny, obviously correct Delegate for tests, benchmarks and the demo replica.

Named grow-only counters with one slot per replica (a G-Counter map), delta-state:
``pending()`` returns the slots that changed since the last call. Supports
:class:`state.delegate.Pruning` the way the safety argument in
:mod:`state.gossip.pruning` needs: the fold and the marker travel as one delta, and
a merge drops every slot of a pruned replica. The product's replicated state lives
in ``state.replica``; this one exists so gossip can be tested without it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

import msgspec

from agentbus.errors import AgentbusError
from state.gossip.config import GossipConfig
from state.gossip.memory import InMemoryNetwork, VirtualClock
from state.gossip.node import Gossip

__all__ = ["CounterDelegate", "SimCluster"]


class _State(msgspec.Struct, frozen=True):
    slots: list[tuple[str, str, int]] = []
    """(counter, replica, value), sorted."""
    pruned: list[str] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_State)


class CounterDelegate:
    """G-Counters keyed by name; implements ``Delegate`` and ``Pruning``."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.slots: dict[tuple[str, str], int] = {}
        self.pruned: set[str] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._dirty_pruned: set[str] = set()

    # -- the application side --

    def increment(self, counter: str, by: int = 1) -> None:
        """Add ``by`` (>= 0) to ``counter`` in this replica's slot."""
        if by < 0:
            raise ValueError("a G-Counter only grows")
        key = (counter, self.replica)
        self.slots[key] = self.slots.get(key, 0) + by
        self._dirty.add(key)

    def value(self, counter: str) -> int:
        """The counter's total over all replicas."""
        return sum(v for (c, _), v in self.slots.items() if c == counter)

    def totals(self) -> dict[str, int]:
        """Every counter's total."""
        out: dict[str, int] = {}
        for (c, _), v in self.slots.items():
            out[c] = out.get(c, 0) + v
        return out

    # -- Delegate --

    def pending(self) -> bytes | None:
        """Changed slots (and new prune markers) since the last call."""
        if not self._dirty and not self._dirty_pruned:
            return None
        slots = sorted((c, r, self.slots[(c, r)]) for c, r in self._dirty if (c, r) in self.slots)
        data = _encoder.encode(_State(slots, sorted(self._dirty_pruned)))
        self._dirty.clear()
        self._dirty_pruned.clear()
        return data

    def merge(self, data: bytes) -> None:
        """Pointwise max; slots of pruned replicas are dropped. All or nothing."""
        try:
            incoming = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise AgentbusError(f"malformed counter state: {e}") from e
        for node in incoming.pruned:
            if node not in self.pruned:
                self.pruned.add(node)
                for key in [k for k in self.slots if k[1] == node]:
                    del self.slots[key]
        for counter, replica, value in incoming.slots:
            if replica in self.pruned:
                continue
            key = (counter, replica)
            if value > self.slots.get(key, -1):
                self.slots[key] = value

    def full_state(self) -> bytes:
        """Everything, deterministically ordered."""
        slots = sorted((c, r, v) for (c, r), v in self.slots.items())
        return _encoder.encode(_State(slots, sorted(self.pruned)))

    def digest(self) -> bytes:
        """BLAKE2b of the full state: equal digests mean equal states."""
        return hashlib.blake2b(self.full_state(), digest_size=16).digest()

    # -- Pruning --

    def prune(self, node: str) -> None:
        """Fold ``node``'s slots into ours and mark it pruned, as one delta."""
        if node in self.pruned or node == self.replica:
            return
        for (counter, replica), value in list(self.slots.items()):
            if replica == node:
                del self.slots[(counter, replica)]
                mine = (counter, self.replica)
                self.slots[mine] = self.slots.get(mine, 0) + value
                self._dirty.add(mine)
        self.pruned.add(node)
        self._dirty_pruned.add(node)


class SimCluster:
    """Replicas over an :class:`InMemoryNetwork` in virtual time: tests and the benchmark drive it.

    ``await run_for(s)`` advances the clock in ``step_s`` steps; each step delivers the
    datagrams due and ticks every running replica.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        config: GossipConfig | None = None,
        step_s: float | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        jitter_s: float = 0.0,
    ) -> None:
        self.config = config or GossipConfig.for_tests()
        self.step_s = step_s or self.config.gossip_interval_s / 2
        self.clock = VirtualClock()
        self.network = InMemoryNetwork(
            seed=seed, loss=loss, duplicate=duplicate, jitter_s=jitter_s, clock=self.clock
        )
        self.seed = seed
        self.nodes: dict[str, Gossip] = {}
        self.delegates: dict[str, CounterDelegate] = {}
        self._starts = 0

    @property
    def running(self) -> list[str]:
        """Names of the replicas that run now."""
        return sorted(self.nodes)

    async def add(self, name: str, *, restore: bytes | None = None) -> CounterDelegate:
        """Start replica ``name`` (restored from ``restore`` full-state bytes if given)."""
        delegate = CounterDelegate(name)
        if restore is not None:
            delegate.merge(restore)
        self._starts += 1
        rng = random.Random(self.seed * 1_000_003 + self._starts)
        node = Gossip(name, self.network.transport(), delegate, self.config, clock=self.clock, rng=rng)
        await node.start(autotick=False)
        self.nodes[name] = node
        self.delegates[name] = delegate
        return delegate

    async def crash(self, name: str) -> bytes:
        """Stop ``name`` without a goodbye (kill -9); returns its full state as a snapshot."""
        snapshot = self.delegates[name].full_state()
        await self.nodes.pop(name).stop(leave=False)
        del self.delegates[name]
        return snapshot

    async def leave(self, name: str) -> None:
        """Stop ``name`` gracefully (it broadcasts its departure)."""
        await self.nodes.pop(name).stop(leave=True)
        del self.delegates[name]

    async def step(self) -> None:
        """One step of virtual time."""
        await self.network.run_until(self.clock.now + self.step_s)
        for name in self.running:
            await self.nodes[name].tick()

    async def run_for(self, seconds: float) -> None:
        """Advance virtual time by ``seconds``."""
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            await self.step()

    def converged(self) -> bool:
        """All running replicas hold equal state."""
        return len({d.digest() for d in self.delegates.values()}) <= 1

    async def run_until(self, check: Callable[[], bool], max_s: float) -> float | None:
        """Step until ``check()`` holds; the virtual seconds it took, or None past ``max_s``."""
        start = self.clock.now
        while not check():
            if self.clock.now - start >= max_s:
                return None
            await self.step()
        return self.clock.now - start
