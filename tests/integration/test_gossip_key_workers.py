"""Gossip between real worker processes with a cluster key, attacked over a real nats-server.

Two ``agentbus worker`` processes share ``AGENTBUS_CLUSTER_KEY_FILE``. A client without
the key publishes a forged full state on the gossip subjects (it is dropped as
``bad_mac``); a malicious peer that holds the key joins gossip and sends a full state
inflating both workers' usage slots, a delta batch claiming to be relayed for a worker,
and a prune marker naming a live worker (each refused by the merge rules). Real tasks
then run: every worker counts them exactly, both stay live under their ids, and the
refusals show in ``agentbus_gossip_rejected_total{reason}``. A worker given a key file
that is not a key exits 78 before it starts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import WorkerProcess
from helpers_a import metric, poll
from nats.aio.client import Client

from agentbus.cli.status import query_state
from bus.gossip import HDR_GOSSIP_FROM, NatsTransport
from bus.publisher import Publisher
from state.gossip import Gossip, GossipConfig
from state.gossip.wire import Deltas, Message, Packet, PushPull, encode_packet
from state.mac import ClusterKey
from state.replica import TASKS_COMPLETED, ReplicaState
from state.wire import Entry, GCounterState, StateMessage, encode

pytestmark = pytest.mark.integration

KEY_HEX = "5a" * 32


async def test_keyed_workers_drop_forgeries_and_count_exactly(
    nats_url: str, nc: Client, tmp_path: Path
) -> None:
    key_file = tmp_path / "cluster.key"
    key_file.write_text(KEY_HEX + "\n")
    env = {"AGENTBUS_CLUSTER_KEY_FILE": str(key_file)}
    workers = [
        WorkerProcess(nats_url, tmp_path, name, "--gossip-preset", "test", env=env) for name in ("w1", "w2")
    ]
    evil: Gossip | None = None
    try:
        for w in workers:
            await asyncio.to_thread(w.wait_ready)

        async def peers_alive() -> bool:
            values = [await metric(w, "agentbus_state_gossip_peers", state="alive") for w in workers]
            return all(v is not None and v >= 1 for v in values)

        await poll(peers_alive, timeout_s=20, what="the two workers to see each other")
        replicas: set[str] = set()
        for _ in range(50):  # one worker of the queue group answers each query
            report = await query_state(nc)
            if report is not None:
                replicas.add(report.replica)
            if len(replicas) == 2:
                break
        assert len(replicas) == 2
        w1_id, w2_id = sorted(replicas)
        inflated: dict[str, dict[str, Entry]] = {
            "acme": {TASKS_COMPLETED: GCounterState({w1_id: 10**6, w2_id: 10**6})}
        }

        # 1. no key: a forged full state on the broadcast subject
        unkeyed = encode_packet(
            Packet("agentbus", [PushPull(b"", encode(StateMessage("x", True, inflated)), False)])
        )
        for _ in range(3):
            await nc.publish("agentbus.gossip.all", unkeyed, headers={HDR_GOSSIP_FROM: "x"})

        # 2. the key, and malice: a peer that joins and lies
        config = GossipConfig.for_tests(key=ClusterKey(bytes.fromhex(KEY_HEX)))
        evil = Gossip("evil", NatsTransport(nc), ReplicaState("evil", replica_id="evil"), config)
        await evil.start(autotick=False)
        lies: list[Message] = [
            PushPull(b"", encode(StateMessage("evil", True, inflated, pruned={w1_id: 1})), False),
            Deltas(origin=w2_id, seq=1, data=encode(StateMessage(w2_id, False, inflated))),
            Deltas(origin="evil", seq=2, data=encode(StateMessage("evil", False, {}, pruned={w2_id: 1}))),
        ]
        for target in (w1_id, w2_id):
            data = evil._seal(target, encode_packet(Packet("agentbus", lies)))
            await nc.publish(f"agentbus.gossip.{target}", data, headers={HDR_GOSSIP_FROM: "evil"})
        await nc.flush()

        pub = Publisher(nc)
        results = await asyncio.gather(
            *(pub.call("acme", "echo", {"text": f"t{i}"}, timeout_s=30) for i in range(6))
        )
        assert all(r.ok for r in results)

        async def counted_everywhere() -> bool:
            seen = {}
            for _ in range(20):
                report = await query_state(nc)
                if report is not None and "acme" in report.tenants:
                    seen[report.replica] = report.tenants["acme"].tasks_completed
            return seen == {w1_id: 6, w2_id: 6}

        await poll(counted_everywhere, timeout_s=20, what="6 completed tasks on both replicas, no more")
        report = await query_state(nc)
        assert report is not None
        assert sorted(report.live_agents) == ["w1", "w2"]
        for w in workers:
            assert (await metric(w, "agentbus_gossip_rejected_total", reason="bad_mac") or 0) >= 1
        refused = {
            reason: sum(
                [(await metric(w, "agentbus_gossip_rejected_total", reason=reason)) or 0 for w in workers]
            )
            for reason in ("wrong_origin", "forged_marker", "forged_slot")
        }
        assert all(n >= 1 for n in refused.values()), refused
    finally:
        if evil is not None:
            await evil.stop(leave=False)
        for w in workers:
            w.stop()


def test_a_bad_key_file_stops_the_worker_with_78(nats_url: str, tmp_path: Path) -> None:
    key_file = tmp_path / "cluster.key"
    key_file.write_text("not a key\n")
    worker = WorkerProcess(nats_url, tmp_path, "bad", env={"AGENTBUS_CLUSTER_KEY_FILE": str(key_file)})
    try:
        assert worker.proc.wait(timeout=60) == 78
    finally:
        worker.stop()
    assert "cluster key file" in worker.log_path.read_text()
