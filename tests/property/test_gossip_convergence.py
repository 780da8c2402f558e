"""Model-based convergence under an adversarial network.

A Hypothesis state machine runs 3-7 replicas over the in-memory network in virtual
time. Rules: increment at a replica, change loss / duplication / reordering, split
into a random partition, heal, crash a replica and restart it from its snapshot,
let time pass. After every step a replica's counter never reads lower than before;
at the end the network heals and every replica must equal the sequential model
(the sum of all increments) within a bounded simulated time. 500 runs in CI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from state.gossip import GossipConfig
from state.gossip.testing import SimCluster

T = TypeVar("T")
COUNTERS = ("tasks", "tokens")
CONFIG = GossipConfig.for_tests(prune_after_s=1e9)
"""Pruning off: it folds a *departed* replica, and here every replica may come back at any
time (pruning has its own tests in tests/unit/test_gossip_membership.py)."""
HEAL_BOUND_S = 30.0
"""Simulated seconds allowed for convergence after the final heal (60 push-pull intervals)."""


class GossipConvergence(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.sim: SimCluster | None = None
        self.model: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.down: dict[str, bytes] = {}
        self.last_read: dict[tuple[str, str], int] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @property
    def cluster(self) -> SimCluster:
        assert self.sim is not None
        return self.sim

    @initialize(n=st.integers(3, 7), seed=st.integers(0, 2**32 - 1))
    def start(self, n: int, seed: int) -> None:
        self.sim = SimCluster(seed=seed, config=CONFIG)
        for i in range(n):
            self.run(self.cluster.add(f"r{i}"))
        self.run(self.cluster.run_for(0.3))

    @rule(data=st.data(), counter=st.sampled_from(COUNTERS), amount=st.integers(1, 5))
    def increment(self, data: st.DataObject, counter: str, amount: int) -> None:
        name = data.draw(st.sampled_from(self.cluster.running))
        self.cluster.delegates[name].increment(counter, amount)
        self.model[counter] += amount

    @rule(
        loss=st.sampled_from([0.0, 0.1, 0.3, 0.6]),
        duplicate=st.sampled_from([0.0, 0.05, 0.3]),
        jitter_s=st.sampled_from([0.0, 0.05, 0.3]),
    )
    def faults(self, loss: float, duplicate: float, jitter_s: float) -> None:
        self.cluster.network.set_faults(loss=loss, duplicate=duplicate, jitter_s=jitter_s)

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        names = sorted({*self.cluster.running, *self.down})
        sides = data.draw(st.lists(st.integers(0, 2), min_size=len(names), max_size=len(names)))
        groups: dict[int, list[str]] = {}
        for name, side in zip(names, sides, strict=True):
            groups.setdefault(side, []).append(name)
        self.cluster.network.partition(*groups.values())

    @rule()
    def heal(self) -> None:
        self.cluster.network.heal()

    @precondition(lambda self: self.sim is not None and len(self.sim.running) > 2)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.cluster.running))
        # the snapshot holds every write (as a write-through Redis copy would)
        self.down[name] = self.run(self.cluster.crash(name))

    @precondition(lambda self: bool(self.down))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.down)))
        self.run(self.cluster.add(name, restore=self.down.pop(name)))

    @rule(seconds=st.sampled_from([0.05, 0.2, 1.0, 3.0]))
    def wait(self, seconds: float) -> None:
        self.run(self.cluster.run_for(seconds))

    @invariant()
    def reads_never_decrease(self) -> None:
        if self.sim is None:
            return
        for name, delegate in self.cluster.delegates.items():
            for counter in COUNTERS:
                value = delegate.value(counter)
                assert value >= self.last_read.get((name, counter), 0), (name, counter)
                self.last_read[(name, counter)] = value

    def teardown(self) -> None:
        try:
            if self.sim is not None:
                self.converge()
        finally:
            self.loop.close()

    def converge(self) -> None:
        sim = self.cluster
        for name in sorted(self.down):
            self.run(sim.add(name, restore=self.down.pop(name)))
        sim.network.heal()
        sim.network.set_faults(loss=0.0, duplicate=0.0, jitter_s=0.0)

        def agreed() -> bool:
            return all(
                d.totals() == {c: v for c, v in self.model.items() if v} for d in sim.delegates.values()
            )

        took = self.run(sim.run_until(agreed, HEAL_BOUND_S))
        assert took is not None, (
            f"no convergence {HEAL_BOUND_S}s after heal: model {self.model}, "
            f"replicas {[d.totals() for d in sim.delegates.values()]}"
        )


GossipConvergence.TestCase.settings = settings(
    max_examples=500,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_gossip_converges_to_the_model = GossipConvergence.TestCase
