"""Where the cloud resumes an edge site's source: after leader changes, restarts and
re-provisioning (never again from the start, although the work queue deleted every
processed task), when first set up (from edge sequence 1, not from the cloud's latest
task), and after an uplink outage (at once, not after nats-server's retry backoff).

Real servers: the cloud cluster and the edge leaf node of ``test_edge``'s fixtures, the
uplink through a TCP proxy per hub node; a plain pull consumer stands for the workers
(it acks every task, so ``TASKS`` is empty between steps, as in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import wait_until
from helpers_a import poll
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError
from test_edge import Site, _env, hub, site  # noqa: F401 (fixtures: the tests' arguments)

from bus.cluster import NatsCluster
from bus.connection import connect
from bus.edge import (
    EDGE_STREAM,
    cloud_api,
    ensure_edge_stream,
    resume_on_reconnect,
    source_edge,
    source_status,
)
from bus.embedded import free_port
from bus.topology import TASKS_STREAM, StreamLimits, ensure_streams
from loadtest.chaos_net import ProxyNet

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

N = 10
SUBJECT = "tasks.acme.echo"


class Probe:
    """A pull consumer of every task in ``TASKS`` that acks what it gets and keeps the payloads."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.got: list[str] = []

    async def start(self) -> Probe:
        config = ConsumerConfig(durable_name="probe", ack_policy=AckPolicy.EXPLICIT, filter_subject="tasks.>")
        await self.js.add_consumer(TASKS_STREAM, config)
        self._sub = await self.js.pull_subscribe_bind("probe", TASKS_STREAM)
        return self

    async def until(self, marker: str, timeout_s: float = 60.0) -> list[str]:
        """Payloads taken until ``marker`` (included). The source copies in edge order and the
        consumer delivers in stream order, so anything copied again before the marker is here."""
        start = len(self.got)
        deadline = time.monotonic() + timeout_s
        while marker not in self.got[start:]:
            assert time.monotonic() < deadline, f"{marker!r} did not reach the cloud; got {self.got[start:]}"
            try:
                msgs: list[Msg] = await self._sub.fetch(50, timeout=0.5)
            except (NatsTimeoutError, TimeoutError, NotFoundError):
                continue
            except Exception:  # a server restarting under the fetch: ask again
                await asyncio.sleep(0.2)
                continue
            for m in msgs:
                self.got.append(m.data.decode())
                await m.ack_sync()
        return self.got[start:]


async def stepdown(cloud: Client) -> None:
    reply = await cloud.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{TASKS_STREAM}", b"", timeout=10)
    assert b'"success":true' in reply.data, reply.data


async def leader(js: JetStreamContext) -> str:
    info = await js.stream_info(TASKS_STREAM)
    return info.cluster.leader or "" if info.cluster is not None else ""


async def empty(js: JetStreamContext) -> bool:
    return (await js.stream_info(TASKS_STREAM)).state.messages == 0


async def new_leader(js: JetStreamContext, old: str) -> str:
    """The TASKS leader once there is one other than ``old``."""
    found = ""

    async def elected() -> bool:
        nonlocal found
        with contextlib.suppress(Exception):
            found = await leader(js)
        return found not in ("", old)

    await poll(elected, timeout_s=60, every_s=0.2, what="a new TASKS leader")
    return found


@dataclass
class Sides:
    """Both ends of a site: the cloud's and the edge's connections, streams and a probe of TASKS."""

    cloud: Client
    at_edge: Client
    js: JetStreamContext
    edge_js: JetStreamContext
    probe: Probe


@contextlib.asynccontextmanager
async def sides(at: Site) -> AsyncIterator[Sides]:
    """Connections to the cloud and the edge, ``TASKS`` (R3) and ``EDGE_TASKS`` provisioned."""
    cloud = await connect(at.hub.url, name="cloud")
    at_edge = await connect(at.edge.url, name="edge-publisher")
    try:
        js, edge_js = cloud.jetstream(), at_edge.jetstream()
        await ensure_streams(js, StreamLimits(replicas=3))
        await ensure_edge_stream(edge_js)
        yield Sides(cloud, at_edge, js, edge_js, await Probe(js).start())
    finally:
        await cloud.close()
        await at_edge.close()


@contextlib.asynccontextmanager
async def resuming(at: Site, at_edge: Client) -> AsyncIterator[None]:
    """What ``agentbus edge`` runs: a source stalled by a moved leaf connection resumes at once."""
    task = asyncio.create_task(
        resume_on_reconnect(at_edge, "edge", at.edge.http_port, api=cloud_api("hub"), grace_s=2.0)
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_processed_edge_tasks_never_cross_again(site: Site) -> None:  # noqa: F811
    """A late first source brings the edge's older tasks; then a leader stepdown, a killed
    leader, a restart of every cloud node, ``source_edge`` and ``ensure_streams`` again each
    let exactly the next edge task cross, none of the processed (deleted) ones."""
    async with sides(site) as x:
        js, edge_js, probe = x.js, x.edge_js, x.probe
        for i in range(N):
            await edge_js.publish(SUBJECT, f"edge-{i}".encode())
        # The cloud runs a task of its own after the edge stored those: TASKS' latest message
        # is newer than every edge task, and (acked) no longer in the work queue.
        await js.publish(SUBJECT, b"cloud-0")
        assert await probe.until("cloud-0") == ["cloud-0"]

        await source_edge(js, "edge")
        await edge_js.publish(SUBJECT, b"first")
        assert await probe.until("first") == [*(f"edge-{i}" for i in range(N)), "first"]

        async def kill_the_leader() -> None:
            i = site.hub.index_of(await leader(js))
            await asyncio.to_thread(site.hub.kill, i)
            await new_leader(js, site.hub.server_name(i))
            await asyncio.to_thread(site.hub.restart, i)

        async def restart_every_node() -> None:
            await asyncio.to_thread(site.hub.stop)
            with ThreadPoolExecutor(site.hub.size) as pool:
                list(pool.map(site.hub.restart, range(site.hub.size)))
            await asyncio.to_thread(site.hub.wait_ready)

        async def step_down() -> None:
            old = await leader(js)
            await stepdown(x.cloud)
            await new_leader(js, old)

        steps: dict[str, Callable[[], Awaitable[None]]] = {
            "stepdown": step_down,
            "kill-leader": kill_the_leader,
            "restart-all": restart_every_node,
            "source-edge-again": lambda: source_edge(js, "edge"),
            "ensure-streams-again": lambda: ensure_streams(js, StreamLimits(replicas=3)),
        }
        async with resuming(site, x.at_edge):
            for name, step in steps.items():
                # Every task processed: the work queue keeps none of them.
                await poll(lambda: empty(js), timeout_s=30, what="the acked tasks gone from TASKS")
                before = (await js.stream_info(TASKS_STREAM)).state
                await step()
                await edge_js.publish(SUBJECT, f"after-{name}".encode())
                assert await probe.until(f"after-{name}") == [f"after-{name}"], name
                after = (await js.stream_info(TASKS_STREAM)).state
                assert after.last_seq == before.last_seq + 1, name  # TASKS stored that task only
        status = await source_status(x.cloud, "edge")
        assert status is not None
        assert status.seq == (await edge_js.stream_info(EDGE_STREAM)).state.last_seq


async def test_an_edge_backlog_survives_a_leader_change_during_the_outage(
    site: Site,  # noqa: F811
) -> None:
    """Edge tasks stored in a cut, a newer cloud task processed, a TASKS leader change while
    cut: the backlog still crosses after the uplink returns, once."""
    async with sides(site) as x:
        js, edge_js, probe = x.js, x.edge_js, x.probe
        await source_edge(js, "edge")
        await edge_js.publish(SUBJECT, b"before")
        assert await probe.until("before") == ["before"]
        async with resuming(site, x.at_edge):
            site.cut()
            wait_until(lambda: site.leafs() == 0, 30, "the edge cut off")
            for i in range(3):
                await edge_js.publish(SUBJECT, f"cut-{i}".encode())
            await js.publish(SUBJECT, b"cloud")
            assert await probe.until("cloud") == ["cloud"]
            old = await leader(js)
            await stepdown(x.cloud)
            await new_leader(js, old)
            site.uplink.heal()

            await edge_js.publish(SUBJECT, b"after")
            assert await probe.until("after", timeout_s=90) == ["cut-0", "cut-1", "cut-2", "after"]


def _start(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``agentbus <argv>`` with its output in ``log_path``."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agentbus", *argv], env=_env(), stdout=out, stderr=subprocess.STDOUT
        )


def _hub_leafs(cluster: NatsCluster) -> int:
    """Leaf connections the cloud's nodes have now (their /leafz)."""
    bodies = [cluster.monitor(i, "/leafz")[1] for i in range(cluster.size)]
    return sum(int(b.get("leafnodes", 0)) for b in bodies if isinstance(b, dict))


async def test_agentbus_edge_makes_the_cloud_resume_the_source_once_the_uplink_returns(
    hub: NatsCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The server's own retry of the source is lost in the cut and comes tens of seconds
    later; ``agentbus edge`` has the cloud resume as soon as the uplink is back."""
    cloud = await connect(hub.url, name="cloud")
    await ensure_streams(cloud.jetstream(), StreamLimits(replicas=3))
    uplink = ProxyNet()
    hops = [uplink.add(i, port) for i, port in enumerate(hub.leaf_ports)]
    port = free_port()
    log_path = tmp_path / "edge.log"
    argv = ["edge", "--hub", ",".join(f"nats-leaf://127.0.0.1:{p}" for p in hops), "--hub-domain", "hub"]
    argv += ["--port", str(port), "--store-dir", str(tmp_path / "edge"), "--resume-grace-s", "1"]
    proc = _start(argv, log_path)
    at_edge: Client | None = None
    attempts: list[float] = []
    try:
        wait_until(lambda: b"sources EDGE_TASKS" in log_path.read_bytes(), 60, "the cloud sourcing the edge")
        at_edge = await connect(f"nats://127.0.0.1:{port}", name="edge-publisher")
        probe = await Probe(cloud.jetstream()).start()
        await at_edge.jetstream().publish(SUBJECT, b"before")
        assert await probe.until("before") == ["before"]

        async def attempt(_: Msg) -> None:
            attempts.append(time.monotonic())

        # The cloud's requests to (re)create its source consumer at the edge, seen in the cloud.
        await cloud.subscribe(f"$JS.edge.API.CONSUMER.CREATE.{EDGE_STREAM}.>", cb=attempt)
        await cloud.subscribe(f"$JS.edge.API.CONSUMER.CREATE.{EDGE_STREAM}", cb=attempt)
        await cloud.flush()
        uplink.cut(range(hub.size))
        await poll(lambda: _hub_leafs(hub) == 0, timeout_s=30, what="the edge cut off")
        cut = time.monotonic()
        # The server notices the silent source and asks the edge again: that request is lost.
        await poll(lambda: any(t > cut for t in attempts), timeout_s=60, what="a retry during the cut")
        uplink.heal()
        healed = time.monotonic()
        await at_edge.jetstream().publish(SUBJECT, b"after")
        assert await probe.until("after", timeout_s=90) == ["after"]
        took = time.monotonic() - healed
        print(f"the first edge task reached TASKS {took:.1f}s after the heal")  # shown with -s
        # The server's own next retry waits for the lost request's reply (30 s) plus a backoff.
        assert took < 25, f"the cloud resumed the source {took:.0f}s after the uplink returned"
        assert b"restarting its sources" in log_path.read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        if at_edge is not None:
            await at_edge.close()
        await cloud.close()
        uplink.close()
