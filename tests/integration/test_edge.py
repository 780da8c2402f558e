"""An edge site with a cut uplink: tasks published at the edge are stored there, cross to the cloud
when the uplink returns, run on cloud workers, and their results reach the edge's waiters.

Real servers throughout: a 3-node cloud cluster (domain ``hub``) with leaf node ports, an
edge leaf node (domain ``edge``) whose only way to the cloud is a TCP proxy per hub node,
and an ``agentbus worker`` process in the cloud.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, WorkerProcess, async_wait_until, wait_until
from helpers_a import ResultLog, consumer_totals, poll
from nats.aio.client import Client

from agents.builtin.basic import EchoIn, EchoOut
from bus.cluster import NatsCluster
from bus.connection import connect
from bus.edge import EDGE_STREAM, ensure_edge_stream, source_edge, start_edge_server
from bus.embedded import EmbeddedNats, free_port
from bus.publisher import Publisher, TaskRef, TaskSpec
from bus.topology import TASKS_STREAM, StreamLimits, ensure_streams
from loadtest.chaos_net import ProxyNet

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

N = 200


@dataclass
class Site:
    hub: NatsCluster
    uplink: ProxyNet
    edge: EmbeddedNats

    def cut(self) -> None:
        self.uplink.cut(range(self.hub.size))

    def leafs(self) -> int:
        """Leaf connections the edge server has now (its own /leafz)."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.edge.http_port}/leafz", timeout=2) as r:
            return int(json.loads(r.read()).get("leafnodes", 0))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[NatsCluster]:
    """The cloud: three clustered servers of JetStream domain ``hub`` with leaf node ports."""
    cluster = NatsCluster(3, base_dir=tmp_path / "hub", leafnodes=True, domain="hub")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def site(hub: NatsCluster, tmp_path: Path) -> Iterator[Site]:
    uplink = ProxyNet()
    edge: EmbeddedNats | None = None
    try:
        hops = [uplink.add(i, port) for i, port in enumerate(hub.leaf_ports)]
        edge = start_edge_server([f"nats-leaf://127.0.0.1:{p}" for p in hops], store_dir=tmp_path / "edge")
        site = Site(hub, uplink, edge)
        # A source set up while the leaf is still connecting fails, and the server retries it
        # with a growing backoff (tens of seconds): the tests start from a connected uplink.
        wait_until(lambda: site.leafs() == 1, 60, "the edge's leaf connection")
        yield site
    finally:
        if edge is not None:
            edge.stop()
        uplink.close()


async def delivered(cloud: Client) -> int:
    """Deliveries the cloud's echo consumers (one per tenant) have made so far."""
    return (await consumer_totals(cloud, "echo")).delivered


async def sourcing(cloud: Client) -> bool:
    """The cloud's TASKS has an active source of the edge stream, without an error."""
    sources = (await cloud.jetstream().stream_info(TASKS_STREAM)).sources or []
    return any(s.name == EDGE_STREAM and s.active is not None and s.error is None for s in sources)


async def test_tasks_published_at_a_cut_off_edge_complete_in_the_cloud_after_the_uplink_returns(
    site: Site, tmp_path: Path
) -> None:
    cloud = await connect(site.hub.url, name="cloud")
    at_edge = await connect(site.edge.url, name="edge-publisher")
    worker = WorkerProcess(
        site.hub.url, tmp_path, "cloud-1", "--kind", "echo", env={"AGENTBUS_STREAM_REPLICAS": "3"}
    )
    try:
        await ensure_streams(cloud.jetstream(), StreamLimits(replicas=3))
        await ensure_edge_stream(at_edge.jetstream())
        await source_edge(cloud.jetstream(), "edge")
        await asyncio.to_thread(worker.wait_ready)
        await poll(lambda: sourcing(cloud), timeout_s=60, what="the cloud's TASKS sourcing EDGE_TASKS")
        # The worker provisioned TASKS again at start: the edge's source is still there.
        sources = (await cloud.jetstream().stream_info(TASKS_STREAM)).config.sources or []
        assert [s.name for s in sources] == [EDGE_STREAM]
        results = await ResultLog().start(cloud)  # every result, seen in the cloud
        pub = Publisher(at_edge)

        up = await pub.call("acme", "echo", EchoIn(text="uplink up"), timeout_s=30)
        assert up.ok  # an edge waiter gets a cloud worker's result
        before = await delivered(cloud)

        site.cut()
        await async_wait_until(lambda: site.leafs() == 0, what="the edge cut off")
        waiting = [
            asyncio.ensure_future(
                pub.call("acme", "echo", EchoIn(text=f"wait-{i}"), timeout_s=120, output_type=EchoOut)
            )
            for i in range(5)
        ]
        refs = await asyncio.wait_for(
            pub.submit_many([TaskSpec("acme", "echo", EchoIn(text=str(i))) for i in range(N)]), 30
        )
        assert all(isinstance(r, TaskRef) for r in refs)  # the edge stored and acked all of them
        published = {r.task_id for r in refs if isinstance(r, TaskRef)}
        edge_state = (await at_edge.jetstream().stream_info(EDGE_STREAM)).state
        assert edge_state.messages == 1 + N + len(waiting)
        await asyncio.sleep(1.0)  # give a leak through the cut a chance to show; none may
        assert await delivered(cloud) == before, "a task crossed while the uplink was down"
        assert not any(w.done() for w in waiting)

        site.uplink.heal()
        await poll(lambda: results.ok_ids() >= published, timeout_s=90, what="every edge task completed")
        done = await asyncio.gather(*waiting)
        assert all(r.ok for r in done)
        assert sorted(r.output.text for r in done if r.output is not None) == [f"wait-{i}" for i in range(5)]
        assert await delivered(cloud) == before + N + len(waiting)  # each crossed once
    finally:
        await asyncio.to_thread(worker.stop)
        await cloud.close()
        await at_edge.close()


@pytest.fixture
def cloud_tasks(hub: NatsCluster) -> NatsCluster:
    """The hub with its R3 TASKS and DLQ streams."""

    async def provision() -> None:
        nc = await connect(hub.url, name="provision")
        await ensure_streams(nc.jetstream(), StreamLimits(replicas=3))
        await nc.close()

    asyncio.run(provision())
    return hub


@pytest.fixture
def edge_command(cloud_tasks: NatsCluster, tmp_path: Path) -> Iterator[str]:
    """``agentbus edge`` against the hub (the cloud's TASKS sourced through the leaf connection);
    yields the edge URL once the cloud sources the site."""
    port = free_port()
    log_path = tmp_path / "edge.log"
    argv = ["edge", "--hub", ",".join(cloud_tasks.leaf_urls), "--hub-domain", "hub", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentbus", *argv, "--store-dir", str(tmp_path / "edge")],
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: b"sources EDGE_TASKS" in log_path.read_bytes(), 60, "the cloud sourcing the edge")
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_agentbus_edge_then_publish_wait_at_the_edge(
    hub: NatsCluster, edge_command: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(
        hub.url, tmp_path, "cloud-1", "--kind", "echo", env={"AGENTBUS_STREAM_REPLICAS": "3"}
    )
    try:
        worker.wait_ready()
        publish = [
            "publish",
            "--nats-url",
            edge_command,
            "--tenant",
            "acme",
            "echo",
            '{"text": "from the edge"}',
        ]
        out = subprocess.run(
            [sys.executable, "-m", "agentbus", *publish, "--wait", "--timeout-s", "60"],
            env=_env(),
            capture_output=True,
            timeout=90,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode()
        result = json.loads(out.stdout)
        assert result["ok"] is True
        assert result["output"]["text"] == "from the edge"
        assert result["worker"] == "cloud-1"  # ran in the cloud, answered at the edge
    finally:
        worker.stop()
