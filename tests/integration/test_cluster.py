"""A 3-node NATS cluster (real nats-servers on loopback): R3 streams on disk before the ack,
clients that take several seed URLs and fail over, route proxies that really cut a node off,
and ``agentbus up --cluster 3`` end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, async_wait_until, stop_process
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamInfo
from nats.js.errors import ServiceUnavailableError

from agents.builtin.basic import EchoIn, EchoOut
from bus.cluster import NatsCluster
from bus.connection import connect
from bus.publisher import Publisher, TaskSpec
from bus.topology import TASKS_STREAM, StreamLimits, ensure_streams
from loadtest.chaos_net import RouteNet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[RouteNet]:
    """Proxies on every route of three clustered nats-servers (``net.cluster``), started."""
    nodes = NatsCluster(3, base_dir=tmp_path / "nats")
    routes = RouteNet(nodes).start()
    try:
        nodes.start()
        yield routes
    finally:
        nodes.stop()
        routes.close()


def port_of(nc: Client) -> int:
    """The port of the server ``nc`` is connected to."""
    assert nc.connected_url is not None
    return int(nc.connected_url.port or 0)


def routes(cluster: NatsCluster, i: int) -> set[str]:
    """Names of the servers node ``i`` has a route to."""
    body = cluster.monitor(i, "/routez")[1] or {}
    return {r.get("remote_name", "") for r in body.get("routes") or []}


async def test_r3_streams_fsync_and_a_client_fails_over_between_seeds(nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    for i in range(3):
        assert cluster.varz(i)["jetstream"]["config"]["sync_always"] is True  # the chart's setting
    nc = await connect(cluster.url, name="seeds")  # "nats://a,nats://b,nats://c": one pool of three
    try:
        js = nc.jetstream()
        await ensure_streams(js, StreamLimits(replicas=3))
        info = await js.stream_info(TASKS_STREAM)
        assert info.config.num_replicas == 3
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2
        pub = Publisher(nc)
        assert (await pub.submit("acme", "echo", EchoIn(text="before"))).seq == 1

        first = port_of(nc)
        connected = [n.port for n in cluster.nodes].index(first)
        await asyncio.to_thread(cluster.kill, connected)
        await async_wait_until(lambda: nc.is_connected and port_of(nc) != first, what="a reconnect elsewhere")

        async def stored() -> bool:
            try:
                await pub.submit("acme", "echo", EchoIn(text="after"), task_id="after-the-kill")
                return True
            except Exception:  # the stream elects a new leader meanwhile
                return False

        for _ in range(60):
            if await stored():
                break
            await asyncio.sleep(0.5)
        assert (await js.stream_info(TASKS_STREAM)).state.messages == 2  # both, on the two left
    finally:
        await nc.close()


async def test_an_isolated_node_loses_its_routes_and_gets_them_back(net: RouteNet) -> None:
    cluster = net.cluster
    # The routes through the proxies come up after the fixture's readiness: wait, don't assume.
    await async_wait_until(lambda: routes(cluster, 0) == {"n2", "n3"}, what="n1 routed to n2 and n3")
    net.isolate([0])
    await async_wait_until(lambda: routes(cluster, 0) == set(), what="n1 without routes")
    await async_wait_until(lambda: routes(cluster, 1) == {"n3"} and routes(cluster, 2) == {"n2"})
    await asyncio.sleep(1.0)  # the servers retry their routes meanwhile: none gets through
    assert routes(cluster, 0) == set()
    net.heal()
    await async_wait_until(lambda: all(len(routes(cluster, i)) == 2 for i in range(3)), what="routes back")
    await asyncio.to_thread(cluster.wait_ready, 30)


@pytest.fixture
def up_cluster(tmp_path: Path) -> Iterator[Path]:
    """``agentbus up --cluster 3 --workers 1`` in ``tmp_path``; must exit 0 on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(tmp_path / "up.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentbus",
                "up",
                "--cluster",
                "3",
                "--workers",
                "1",
                "--store-dir",
                "nats",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield tmp_path
    finally:
        stop_process(proc, 60)
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()


async def _stream_info(nc: Client, timeout_s: float = 60.0) -> StreamInfo:
    """TASKS's info, asked again while the new cluster still elects (a request to a cluster
    that has just formed can go unanswered for a few seconds on a busy machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await nc.jetstream().stream_info(TASKS_STREAM)
        except (NatsTimeoutError, ServiceUnavailableError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_up_cluster_runs_three_nodes_and_workers_complete_tasks(up_cluster: Path) -> None:
    state = up_cluster / ".agentbus" / "up.json"
    await async_wait_until(state.exists, 60, "up.json")
    seeds = json.loads(state.read_text())["nats_url"].split(",")
    assert len(seeds) == 3
    nc = await connect(",".join(seeds), name="test")
    try:
        info = await _stream_info(nc)
        assert info.config.num_replicas == 3  # up created R3, and the worker kept it
        result = await Publisher(nc).call(
            "acme", "echo", EchoIn(text="hi"), timeout_s=30, output_type=EchoOut
        )
        assert result.ok
        assert result.output == EchoOut(text="hi", tenant="acme", attempt=1)
    finally:
        await nc.close()
    assert sorted(p.name for p in (up_cluster / "nats").iterdir()) == ["n1", "n2", "n3"]


def test_up_refuses_a_cluster_and_a_nats_url_together(capsys: pytest.CaptureFixture[str]) -> None:
    from agentbus.cli import EXIT_USAGE, main

    assert main(["up", "--cluster", "3", "--nats-url", "nats://127.0.0.1:1"]) == EXIT_USAGE
    assert "--cluster" in capsys.readouterr().err


def _stream_messages(cluster: NatsCluster, i: int) -> int:
    """Messages of TASKS in node ``i``'s own copy (its /jsz), -1 if it has none."""
    body = cluster.monitor(i, "/jsz?accounts=true&streams=true")[1] or {}
    for acc in body.get("account_details") or []:
        for info in acc.get("stream_detail") or []:
            if info.get("name") == TASKS_STREAM:
                return int(info["state"]["messages"])
    return -1


async def test_a_reseeded_replica_rejoins_empty_and_catches_up_from_the_leader(
    nats_cluster: NatsCluster,
) -> None:
    cluster = nats_cluster
    nc = await connect(cluster.url, name="reseed")
    try:
        js = nc.jetstream()
        await ensure_streams(js, StreamLimits(replicas=3))
        await Publisher(nc).submit_many(
            [TaskSpec("acme", "echo", EchoIn(text=str(n)), task_id=f"r{n}") for n in range(50)]
        )
        info = await js.stream_info(TASKS_STREAM)
        assert info.cluster is not None
        assert info.cluster.replicas
        follower = cluster.index_of(info.cluster.replicas[0].name or "")
        group = cluster.stream_group(follower, TASKS_STREAM)
        assert group.startswith("S-R3F-")
        raft_dir = cluster.nodes[follower].store_dir / "js" / "jetstream" / "$SYS" / "_js_" / group
        marker = raft_dir / "marker"
        marker.write_text("the old group")

        await asyncio.to_thread(cluster.reseed_replica, follower, TASKS_STREAM)

        await async_wait_until(lambda: _stream_messages(cluster, follower) == 50, 60, "the copy caught up")
        assert raft_dir.is_dir()
        assert not marker.exists()  # a new group directory: the old one was deleted
        assert (await js.stream_info(TASKS_STREAM)).state.messages == 50
    finally:
        await nc.close()
