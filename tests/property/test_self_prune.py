"""A replica pruned while only paused or cut off comes back without losing or double-counting.

Gossip prunes a replica that has been dead for ``prune_after_s``; a replica that was
merely SIGSTOPped or partitioned that long is then alive under a pruned id. When it
merges the marker naming itself it must move to a new id and re-home the part of its
old slot above what the owner folded (``ReplicaState._move``). Checked two ways:

* a law over random interleavings of increments, lost/late/duplicated deltas, the
  prune and the return (``ReplicaState`` alone, no network);
* real gossip over the in-memory network in virtual time with a short
  ``prune_after_s`` (2 s): a pause, then a partition in which the replica keeps
  counting, each longer than ``prune_after_s``; afterwards every replica shows the
  exact totals and the gossip node follows the new replica id.
"""

from __future__ import annotations

import random

from hypothesis import event, given, settings
from hypothesis import strategies as st

from state.gossip import Gossip, GossipConfig, InMemoryNetwork, VirtualClock
from state.replica import LIVE_AGENTS, ReplicaState
from state.wire import SYSTEM_TENANT

OWNER, PAUSED = 0, 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["incr", "decr", "send", "deliver", "full", "pause", "prune", "resume"]),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(1, 9),
        ),
        max_size=80,
    ),
    st.randoms(use_true_random=False),
)
def test_a_pruned_live_replica_moves_and_totals_stay_exact(
    ops: list[tuple[str, int, int, int]], rnd: random.Random
) -> None:
    replicas = [ReplicaState(f"n{i}", replica_id=f"n{i}") for i in range(4)]
    x = replicas[PAUSED]
    x.live_agents.add("worker-n3")
    inbox: list[tuple[int | None, bytes]] = []  # (sender, blob); a paused sender's mail may arrive late
    paused = pruned = returned = False
    total = increments = 0
    for op, i, j, n in ops:
        store = replicas[i].store("acme")
        cut_off = paused and not returned
        if op == "incr":  # the paused replica keeps counting too (a partition, or ops before SIGSTOP)
            store.counter("c").increment(n)
            store.pncounter("p").increment(n)
            total += n
            increments += n
        elif op == "decr":
            store.pncounter("p").decrement(n)
            total -= n
        elif op == "send":
            blob = replicas[i].pending()
            if blob is not None:
                inbox.extend([(i, blob)] * (1 + n % 2))
        elif op == "deliver" and inbox:
            sender, blob = inbox.pop(rnd.randrange(len(inbox)))
            if not cut_off or (sender != PAUSED and j != PAUSED):
                replicas[j].merge(blob)
            elif sender == PAUSED:
                inbox.append((sender, blob))  # held up: it arrives after the return, stale
        elif op == "full" and (not cut_off or PAUSED not in (i, j)):
            replicas[j].merge(replicas[i].full_state())
        elif op == "pause" and not paused:
            paused = True
        elif op == "prune" and cut_off and not pruned:
            for peer in replicas[1:PAUSED]:  # the owner pulls every live peer, never the cut-off one
                replicas[OWNER].merge(peer.full_state())
            replicas[OWNER].prune("n3")
            pruned = True
            blob = replicas[OWNER].pending()
            assert blob is not None
            inbox.append((OWNER, blob))
        elif op == "resume" and paused:
            returned = True
    event(f"pruned={pruned}")
    rnd.shuffle(inbox)
    for _, blob in inbox:  # everything late, in any order, to everyone
        for r in replicas:
            r.merge(blob)
    for _ in range(3):
        for a in replicas:
            for b in replicas:
                b.merge(a.full_state())
    assert len({r.digest() for r in replicas}) == 1
    for r in replicas:
        assert r.store("acme").counter("c").value == increments
        assert r.store("acme").pncounter("p").value == total
    if pruned:
        assert x.replica_id != "n3"
        assert x.former_ids == ["n3"]
        assert all("n3" in r.pruned for r in replicas)
    else:
        assert x.replica_id == "n3"
    # the paused replica's own live-agent entry survives the owner's clean-up
    assert all("worker-n3" in r.live_agents for r in replicas)


def test_the_fold_is_carried_by_the_marker_and_forgotten_after_fold_keep_s() -> None:
    now = [10**18]
    owner = ReplicaState("a", replica_id="a", clock=lambda: now[0], fold_keep_s=60)
    gone = ReplicaState("b", replica_id="b", clock=lambda: now[0])
    gone.store("t1").counter("c").increment(5)
    gone.store("t1").pncounter("p").decrement(2)
    owner.merge(gone.full_state())
    owner.prune("b")
    assert owner._folded == {"b": {"t1": {"c": (5, 0), "p": (0, 2)}}}
    gone.store("t1").counter("c").increment(1)  # after the fold, before it hears of it
    gone.merge(owner.full_state())
    assert gone.replica_id.startswith("b-")
    assert gone.store("t1").counter("c").value == 6
    owner.merge(gone.full_state())
    assert owner.store("t1").counter("c").value == 6
    assert owner.store("t1").pncounter("p").value == -2
    now[0] += 61 * 10**9
    owner.collect_expired()
    assert owner._folded == {}
    assert "b" in owner.pruned  # the marker itself stays


def test_without_the_fold_a_returning_replica_under_counts_rather_than_twice() -> None:
    owner = ReplicaState("a", replica_id="a", fold_keep_s=1e-9)
    late = ReplicaState("b", replica_id="b")
    late.store("t").counter("c").increment(3)
    owner.merge(late.full_state())
    owner.prune("b")
    owner.collect_expired()  # the fold is forgotten at once
    late.store("t").counter("c").increment(4)  # never gossiped
    late.merge(owner.full_state())
    assert late.store("t").counter("c").value == 3  # the 4 are lost, the 3 are not doubled


async def test_gossip_with_short_prune_after_keeps_totals_exact_across_pause_and_partition() -> None:
    config = GossipConfig.for_tests(prune_after_s=2.0)
    clock = VirtualClock()
    network = InMemoryNetwork(seed=7, loss=0.05, duplicate=0.05, jitter_s=0.01, clock=clock)
    replicas: dict[str, ReplicaState] = {}
    nodes: dict[str, Gossip] = {}
    for i in range(4):
        name = f"n{i}"
        replicas[name] = ReplicaState(name, replica_id=name)
        replicas[name].live_agents.add(f"worker-{name}")
        nodes[name] = Gossip(
            name, network.transport(), replicas[name], config, clock=clock, rng=random.Random(i)
        )
        await nodes[name].start(autotick=False)
    x = replicas["n3"]
    ticking = set(nodes)
    step_s = config.gossip_interval_s / 2
    counted = 0

    async def run_for(seconds: float, *, counting: bool = True) -> None:
        nonlocal counted
        end = clock.now + seconds
        k = 0
        while clock.now < end:
            await network.run_until(clock.now + step_s)
            for name in sorted(ticking):
                node = nodes[name]
                if node.node != replicas[name].replica_id:  # what the worker's upkeep does
                    await node.rejoin(replicas[name].replica_id)
                await node.tick()
            k += 1
            if counting and k % 4 == 0:
                for name in sorted(replicas):
                    if name in ticking or name == "n3":
                        replicas[name].store("acme").counter("tasks").increment(k % 5 + 1)
                        counted += k % 5 + 1

    def exact() -> bool:
        values = {r.store("acme").counter("tasks").value for r in replicas.values()}
        return values == {counted} and len({r.digest() for r in replicas.values()}) == 1

    async def settle(what: str) -> None:
        for _ in range(400):
            if exact():
                return
            await run_for(0.1, counting=False)
        views = {n: r.store("acme").counter("tasks").value for n, r in replicas.items()}
        raise AssertionError(f"{what}: expected {counted} everywhere, got {views}")

    await run_for(2.0)
    await settle("before the pause")

    # 1. a pause (SIGSTOP): no ticks, nothing received; it counted a little just before
    x.store("acme").counter("tasks").increment(7)  # never gossiped before the pause
    counted += 7
    ticking.discard("n3")
    network.partition(["n0", "n1", "n2"], ["n3"])  # what it misses is lost, as core NATS would
    await run_for(8.0, counting=False)
    assert nodes["n0"].pruner.pruned == ["n3"]
    network.heal()
    ticking.add("n3")
    await run_for(3.0)
    await settle("after the pause")
    first = x.replica_id
    assert first != "n3"
    assert nodes["n3"].node == first  # gossip follows the new id
    assert x.former_ids == ["n3"]

    # 2. a partition: it keeps counting on its side, longer than prune_after_s
    network.partition(["n0", "n1", "n2"], [first])
    await run_for(8.0)
    assert first in nodes["n0"].pruner.pruned
    network.heal()
    await run_for(3.0)
    await settle("after the partition")
    assert x.former_ids == ["n3", first]
    assert nodes["n3"].node == x.replica_id
    for r in replicas.values():
        assert {"n3", first} <= r.pruned
        assert "worker-n3" in r.live_agents
        dots = r._tenants[SYSTEM_TENANT].entries[LIVE_AGENTS].entries["worker-n3"]  # type: ignore[union-attr]
        assert {replica for replica, _ in dots} == {x.replica_id}
    for node in nodes.values():
        await node.stop()
