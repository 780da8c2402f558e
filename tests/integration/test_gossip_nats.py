"""Gossip convergence over both transports: the in-memory twin and real nats-server.

The same scenarios run in real time against ``InMemoryTransport`` and ``NatsTransport``
with the real ``ReplicaState`` as the delegate: exact totals after concurrent
increments, under 10 % drop and 5 % duplication, after a crash, and tenant
isolation (one tenant's gossip never shows up in another tenant's store).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from nats.aio.client import Client

from bus.connection import connect
from bus.embedded import EmbeddedNats
from bus.gossip import NatsTransport
from state.delegate import Transport
from state.gossip import Gossip, GossipConfig, InMemoryNetwork, MemberState
from state.replica import ReplicaState

pytestmark = pytest.mark.integration

CONFIG = GossipConfig.for_tests()
MakeTransport = Callable[..., Awaitable[Transport]]


@pytest.fixture(params=["memory", "nats"])
async def make_transport(request: pytest.FixtureRequest) -> AsyncIterator[MakeTransport]:
    """``await make_transport(drop=.., dup=..)``: a fresh endpoint on the transport under test."""
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            network = InMemoryNetwork(seed=1, latency_s=0.0005)

            async def make(drop: float = 0.0, dup: float = 0.0) -> Transport:
                network.set_faults(loss=drop, duplicate=dup, jitter_s=0.002)
                return network.transport()

        else:
            server: EmbeddedNats = request.getfixturevalue("nats_server")
            seeds = iter(range(1000))

            async def make(drop: float = 0.0, dup: float = 0.0) -> Transport:
                nc: Client = await connect(server.url, name="gossip-test")
                stack.push_async_callback(nc.close)
                return NatsTransport(nc, drop_rate=drop, duplicate_rate=dup, seed=next(seeds))

        yield make


class Cluster:
    def __init__(self) -> None:
        self.nodes: dict[str, Gossip] = {}
        self.replicas: dict[str, ReplicaState] = {}

    async def add(self, transport: Transport, name: str, config: GossipConfig = CONFIG) -> ReplicaState:
        replica = ReplicaState(name, replica_id=name)
        node = Gossip(name, transport, replica, config, rng=random.Random(name))
        await node.start()
        self.nodes[name], self.replicas[name] = node, replica
        return replica

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()

    def counts(self, tenant: str, counter: str) -> set[int]:
        return {r.store(tenant).counter(counter).value for r in self.replicas.values()}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    await c.stop()


async def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    from conftest import async_wait_until

    await async_wait_until(check, timeout_s, what)


async def test_concurrent_increments_converge_to_exact_totals(
    make_transport: MakeTransport, cluster: Cluster
) -> None:
    for i in range(5):
        await cluster.add(await make_transport(), f"r{i}")
    await wait_for(lambda: all(len(n.live_peers()) == 4 for n in cluster.nodes.values()), 10, "membership")
    for round_ in range(20):
        for i, replica in enumerate(cluster.replicas.values()):
            replica.store("acme").counter("tasks").increment(i + 1)
            replica.store("acme").set("agents").add(f"a{i}-{round_}")
    await wait_for(lambda: cluster.counts("acme", "tasks") == {20 * 15}, 10, "exact totals")
    members = {frozenset(r.store("acme").set("agents").members()) for r in cluster.replicas.values()}
    assert len(members) == 1
    assert len(next(iter(members))) == 100


async def test_converges_under_drop_and_duplication(make_transport: MakeTransport, cluster: Cluster) -> None:
    for i in range(5):
        await cluster.add(await make_transport(drop=0.10, dup=0.05), f"r{i}")
    for round_ in range(10):
        for replica in cluster.replicas.values():
            replica.store("acme").counter("tasks").increment()
            s = replica.store("acme").set("live")
            s.add(f"{replica.replica_id}-{round_}")
            if round_ % 2:
                s.discard(f"{replica.replica_id}-{round_ - 1}")
    await wait_for(lambda: cluster.counts("acme", "tasks") == {50}, 10, "exact totals under loss")
    digests = {r.digest() for r in cluster.replicas.values()}
    await wait_for(lambda: len({r.digest() for r in cluster.replicas.values()}) == 1, 10, f"equal {digests}")
    live = cluster.replicas["r0"].store("acme").set("live").members()
    assert live == {f"r{i}-{k}" for i in range(5) for k in range(1, 10, 2)}  # every even one was discarded


async def test_crash_is_detected_and_leave_is_announced(
    make_transport: MakeTransport, cluster: Cluster
) -> None:
    for i in range(4):
        await cluster.add(await make_transport(), f"r{i}")
    await wait_for(lambda: all(len(n.live_peers()) == 3 for n in cluster.nodes.values()), 10, "membership")
    await cluster.nodes.pop("r3").stop(leave=False)
    await cluster.nodes.pop("r2").stop(leave=True)
    await wait_for(
        lambda: all(n.state_of("r2") is MemberState.LEFT for n in cluster.nodes.values()), 5, "r2 left"
    )
    await wait_for(
        lambda: all(n.state_of("r3") is MemberState.DEAD for n in cluster.nodes.values()), 15, "r3 dead"
    )


async def test_tenant_gossip_never_leaks(make_transport: MakeTransport, cluster: Cluster) -> None:
    # one tenant's writes reach the same tenant everywhere, never another's
    for i in range(3):
        await cluster.add(await make_transport(), f"r{i}")
    a = cluster.replicas["r0"].store("tenant-a")
    b = cluster.replicas["r1"].store("tenant-b")
    for _ in range(7):
        a.counter("tasks").increment()
        a.set("secrets").add("a-only")
    b.counter("tasks").increment(1000)
    await wait_for(lambda: cluster.counts("tenant-a", "tasks") == {7}, 10, "tenant a converged")
    await wait_for(lambda: cluster.counts("tenant-b", "tasks") == {1000}, 10, "tenant b converged")
    for r in cluster.replicas.values():
        assert "a-only" not in r.store("tenant-b").set("secrets")
        assert r.store("tenant-b").names().get("secrets") is None
        assert set(r.tenants()) == {"tenant-a", "tenant-b"}


async def test_another_cluster_on_the_same_bus_stays_apart(
    make_transport: MakeTransport, cluster: Cluster
) -> None:
    other = GossipConfig.for_tests(cluster="other")
    await cluster.add(await make_transport(), "r0")
    await cluster.add(await make_transport(), "r1")
    await cluster.add(await make_transport(), "x0", other)
    cluster.replicas["x0"].store("acme").counter("tasks").increment(5)
    cluster.replicas["r0"].store("acme").counter("tasks").increment(1)
    await wait_for(
        lambda: cluster.replicas["r1"].store("acme").counter("tasks").value == 1, 10, "r1 has r0's"
    )
    await wait_for(lambda: cluster.nodes["r1"].stats.foreign_packets > 0, 10, "foreign packets seen")
    assert cluster.replicas["r1"].store("acme").counter("tasks").value == 1
    assert cluster.nodes["r0"].state_of("x0") is None
