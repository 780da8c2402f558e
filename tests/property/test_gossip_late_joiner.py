"""A late joiner sees every charge, however big the other tenants' state (issue 18).

The issue's case: a tenant with 200 x 3 KB registers made deltas and full states exceed
the 512 KiB packet, a peer never saw another tenant's 9,000-token charge, and a worker
that joined later saw that spend as 0. Now a tenant is bounded well under one packet
(it fills up before 200 such registers), deltas are cut by bytes and full states go in
parts. Six tenants fill their state to the bound (several packets together), one more
charges 9,000 tokens; a peer and a replica that joins afterwards, both over the
in-memory network with 5 % loss, see the charge and every register.
"""

from __future__ import annotations

import asyncio
import random

from agentbus.errors import StateLimitError
from state.gossip import Gossip, GossipConfig, InMemoryNetwork, VirtualClock
from state.limiter import Budget
from state.mac import ClusterKey
from state.replica import ReplicaState

CONFIG = GossipConfig.for_tests(key=ClusterKey(b"c" * 32), push_pull_interval_s=60.0)
"""Push-pull rarely: what a joiner learns, it learns by pulling from each peer it meets."""


SEED, TENANTS = 7, 6


def test_a_late_joiner_sees_every_charge() -> None:
    seed, tenants = SEED, TENANTS

    async def scenario() -> None:
        clock = VirtualClock()
        network = InMemoryNetwork(seed=seed, clock=clock, loss=0.05)
        replicas: dict[str, ReplicaState] = {}
        nodes: dict[str, Gossip] = {}

        async def join(name: str) -> ReplicaState:
            replica = ReplicaState(name, replica_id=name, clock=lambda: int(clock() * 1e9))
            node = Gossip(name, network.transport(), replica, CONFIG, clock=clock, rng=random.Random(name))
            await node.start(autotick=False)
            replicas[name], nodes[name] = replica, node
            return replica

        async def run(seconds: float) -> None:
            end = clock.now + seconds
            while clock.now < end:
                await network.run_until(clock.now + CONFIG.gossip_interval_s / 2)
                for node in nodes.values():
                    await node.tick()

        writer = await join("w1")
        others = [await join(f"w{i}") for i in range(2, 6)]
        await run(2.0)
        written: dict[str, int] = {}
        for t in range(tenants):
            store = writer.store(f"big{t}")
            for i in range(200):
                try:
                    store.register(f"r{i}").set(f"{t}-{i}-" + "x" * 3000)
                except StateLimitError:
                    break
                written[f"big{t}"] = i + 1
        assert 0 < written["big0"] < 200  # the bound stops a tenant well before the 200
        Budget(writer.store("small"), "llm_tokens", limit=10**6).charge(9000)
        for other in others:  # every worker spent some: a joiner must hear from each
            Budget(other.store("small"), "llm_tokens", limit=10**6).charge(1000)
        assert len(writer.full_state()) > CONFIG.max_packet_bytes  # the whole state needs several packets
        assert len(writer.full_state_parts(CONFIG.max_packet_bytes - 16 * 1024)) > 1
        await run(5.0)
        late = await join("late")
        await run(3.0)  # far less than one push-pull interval
        assert sum(n.stats.oversized_dropped for n in nodes.values()) == 0
        for name in ("w2", "late"):
            replica = replicas[name]
            assert Budget(replica.store("small"), "llm_tokens", limit=10**6).spent == 13_000, name
            for tenant in written:
                assert replica.store(tenant).snapshot() == writer.store(tenant).snapshot(), (name, tenant)
        assert late.digest() == writer.digest() == others[0].digest()

    asyncio.run(scenario())
