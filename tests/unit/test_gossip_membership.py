"""SWIM membership, dissemination and pruning in virtual time.

Every test drives :class:`SimCluster` (in-memory network, virtual clock): tens of
simulated seconds run in well under a second, and a seed replays a run exactly.
"""

from __future__ import annotations

import pytest

import state.gossip
from state.gossip import GossipConfig, MemberState
from state.gossip.membership import Suspicion
from state.gossip.testing import SimCluster
from state.gossip.wire import Alive, Packet, Ping, encode_packet

LAN = GossipConfig()


def test_exported_names() -> None:
    assert sorted(state.gossip.__all__) == [
        "Gossip",
        "GossipConfig",
        "GossipStats",
        "InMemoryNetwork",
        "InMemoryTransport",
        "MemberState",
        "VirtualClock",
    ]


def test_formulas_match_memberlist() -> None:
    # memberlist LAN defaults: N = 5 at LAN defaults -> 4 s .. 24 s, 4 retransmits
    assert LAN.suspicion_timeouts_s(5) == (4.0, 24.0)
    assert LAN.retransmit_limit(5) == 4
    assert LAN.retransmit_limit(10) == 8
    low, high = LAN.suspicion_timeouts_s(100)
    assert (low, high) == (8.0, 48.0)


def test_suspicion_timer_accelerates_with_confirmations() -> None:
    s = Suspicion(start=10.0, min_s=4.0, max_s=24.0, expected=2)
    assert s.confirm("a")
    assert s.deadline() == pytest.approx(34.0)
    assert not s.confirm("a")  # the same accuser twice is not independent
    s.confirm("b")
    assert 14.0 < s.deadline() < 34.0
    s.confirm("c")
    assert s.deadline() == pytest.approx(14.0)
    assert Suspicion(start=0.0, min_s=4.0, max_s=24.0, expected=0).deadline() == 4.0


async def cluster(n: int, **kw: object) -> SimCluster:
    sim = SimCluster(**kw)  # type: ignore[arg-type]
    for i in range(n):
        await sim.add(f"n{i}")
    return sim


def views_full(sim: SimCluster) -> bool:
    want = set(sim.running)
    return all(
        set(node.live_peers()) == want - {name}
        and all(node.state_of(p) is MemberState.ALIVE for p in want - {name})
        for name, node in sim.nodes.items()
    )


async def test_join_everyone_learns_everyone() -> None:
    sim = await cluster(5, config=LAN)
    took = await sim.run_until(lambda: views_full(sim), max_s=5.0)
    assert took is not None


async def test_crash_is_detected_within_the_analytic_bound() -> None:
    sim = await cluster(5, config=LAN, seed=3)
    await sim.run_for(3.0)
    await sim.crash("n2")
    # reliability.md: worst case ~ probe round + timeout + max suspicion ~ 29 s at N = 5
    took = await sim.run_until(
        lambda: all(sim.nodes[n].state_of("n2") is MemberState.DEAD for n in sim.running), max_s=30.0
    )
    assert took is not None
    assert took >= LAN.suspicion_timeouts_s(5)[0]  # never before the minimum suspicion time


async def test_leave_marks_left_not_dead() -> None:
    sim = await cluster(4, config=LAN, seed=4)
    await sim.run_for(2.0)
    await sim.leave("n1")
    await sim.run_for(0.5)
    assert {sim.nodes[n].state_of("n1") for n in sim.running} == {MemberState.LEFT}


async def test_indirect_probe_saves_a_node_behind_one_broken_link() -> None:
    sim = await cluster(5, config=LAN, seed=5)
    await sim.run_for(3.0)
    sim.network.cut("n0", "n1")  # n0 cannot ping n1 directly; n2..n4 relay
    await sim.run_for(40.0)
    assert sim.nodes["n0"].state_of("n1") is MemberState.ALIVE
    assert sim.nodes["n1"].state_of("n0") is MemberState.ALIVE


async def test_no_false_dead_under_ten_percent_loss() -> None:
    # (b) 10 % loss for a simulated minute, nobody is declared dead
    sim = await cluster(5, config=LAN, seed=6, loss=0.10)
    await sim.run_for(60.0)
    for name, node in sim.nodes.items():
        for peer in sim.running:
            if peer != name:
                assert node.state_of(peer) is not MemberState.DEAD, (name, peer)


async def test_suspected_node_refutes_with_a_higher_incarnation() -> None:
    sim = await cluster(5, config=LAN, seed=7)
    await sim.run_for(3.0)
    sim.network.partition(["n3"], ["n0", "n1", "n2", "n4"])
    await sim.run_until(
        lambda: any(sim.nodes[n].state_of("n3") is MemberState.SUSPECT for n in sim.running if n != "n3"),
        max_s=10.0,
    )
    sim.network.heal()
    took = await sim.run_until(lambda: views_full(sim), max_s=10.0)
    assert took is not None
    assert sim.nodes["n3"].membership.incarnation >= 1
    assert sim.nodes["n3"].membership.refuted >= 1


async def test_restarted_node_rejoins_and_refutes_its_death() -> None:
    # (c) a node declared dead comes back under the same id and is alive again everywhere
    sim = await cluster(5, config=LAN, seed=8)
    await sim.run_for(3.0)
    snapshot = await sim.crash("n4")
    await sim.run_until(
        lambda: all(sim.nodes[n].state_of("n4") is MemberState.DEAD for n in sim.running), 40.0
    )
    await sim.add("n4", restore=snapshot)
    took = await sim.run_until(lambda: views_full(sim), max_s=5.0)
    assert took is not None
    assert sim.nodes["n4"].membership.incarnation >= 1


async def test_split_brain_heals_to_one_view() -> None:
    # (d) a 2|3 split long enough for each side to declare the other dead, then heal
    cfg = GossipConfig.for_tests()
    sim = await cluster(5, config=cfg, seed=9)
    await sim.run_for(2.0)
    sim.network.partition(["n0", "n1"], ["n2", "n3", "n4"])
    await sim.run_until(lambda: sim.nodes["n0"].state_of("n3") is MemberState.DEAD, max_s=30.0)
    assert sim.nodes["n0"].state_of("n3") is MemberState.DEAD
    sim.network.heal()
    took = await sim.run_until(lambda: views_full(sim), max_s=cfg.push_pull_interval_s + 5.0)
    assert took is not None


async def test_deltas_reach_everyone_and_push_pull_repairs_loss() -> None:
    sim = await cluster(5, seed=10, loss=0.3, duplicate=0.1, jitter_s=0.05)
    await sim.run_for(1.0)
    for i, name in enumerate(sim.running):
        sim.delegates[name].increment("tasks", i + 1)
    took = await sim.run_until(
        lambda: all(d.value("tasks") == 15 for d in sim.delegates.values()), max_s=10.0
    )
    assert took is not None
    assert sum(n.stats.duplicate_batches for n in sim.nodes.values()) > 0


async def test_garbage_and_foreign_clusters_are_dropped() -> None:
    sim = await cluster(2, seed=11)
    node = sim.nodes["n0"]
    transport = sim.network.transport()
    await transport.start("intruder", _ignore)
    await transport.send("n0", b"\xff\x00 not a packet")
    await transport.send("n0", encode_packet(Packet("other-cluster", [Ping(1, "n0")], [Alive("x", 9)])))
    await sim.run_for(0.1)
    assert node.stats.bad_packets == 1
    assert node.stats.foreign_packets == 1
    assert node.state_of("x") is None


async def _ignore(sender: str, data: bytes) -> None:
    return None


async def test_pruning_folds_a_dead_replica_once_and_keeps_totals() -> None:
    cfg = GossipConfig.for_tests(prune_after_s=5.0)
    sim = await cluster(4, config=cfg, seed=12)
    await sim.run_for(1.0)
    for name in sim.running:
        sim.delegates[name].increment("tasks", 10)
    await sim.run_for(2.0)
    await sim.crash("n0")  # the smallest id dies: n1 becomes the owner
    assert await sim.run_until(lambda: bool(sim.nodes["n1"].pruner.pruned), max_s=60.0) is not None
    assert sim.nodes["n1"].pruner.pruned == ["n0"]
    assert all(not sim.nodes[n].pruner.pruned for n in ("n2", "n3"))
    assert await sim.run_until(sim.converged, max_s=10.0) is not None
    for d in sim.delegates.values():
        assert d.value("tasks") == 40
        assert "n0" in d.pruned
        assert all(replica != "n0" for _, replica in d.slots)


async def test_no_pruning_while_a_member_is_only_suspect() -> None:
    cfg = GossipConfig.for_tests(prune_after_s=1.0)
    sim = await cluster(3, config=cfg, seed=13)
    await sim.run_for(1.0)
    sim.network.partition(["n0", "n1"], ["n2"])  # n2 is not dead yet when the owner considers it
    await sim.run_for(0.5)
    assert not sim.nodes["n0"].pruner.pruned
    sim.network.heal()
    await sim.run_for(5.0)
    assert not sim.nodes["n0"].pruner.pruned
