"""The embedded default heals itself: ``kill -9`` of the nats-server of ``agentbus up`` mid-backlog.

``local_cluster`` (what ``agentbus up`` runs) supervises its nats-server as it does its
workers: the dead server is reaped and started again on the same port and the same
store, the workers reconnect, and every task whose publish JetStream acknowledged
completes. Real processes throughout: the server, two workers, a test client.

Results are counted in the ``RESULTS`` stream where every result is stored (one message per
task, so the count is the number of distinct tasks that completed; docs/records.md):
a core subscription would miss results published while it is itself reconnecting.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable

import psutil
import pytest
from nats.js import JetStreamContext

from agentbus.cli.up import local_cluster, wait_ready
from agents.builtin.basic import EchoIn
from bus.connection import connect
from bus.publisher import Publisher, TaskRef, TaskSpec
from bus.records import RESULTS_STREAM
from bus.topology import DLQ_STREAM, TASKS_STREAM

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TASKS = 2000
RESULTS = RESULTS_STREAM


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 120.0) -> None:
    """Poll ``check`` (errors count as not yet: the server may be down); a liveness bound only."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            if await check():
                return
        except Exception:  # NATS is expected to be away for a while
            pass
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.1)


async def messages(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


def nats_servers() -> list[int]:
    """Live nats-server children of this process."""
    pids = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "nats-server" in p.name() and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def listens(pid: int, port: int) -> bool:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def reaped(pid: int) -> bool:
    """No zombie left with this pid (a new process reusing it would not be a zombie)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_killed_embedded_server_is_restarted_and_every_acked_task_completes() -> None:
    worker_args = ["--kind", "echo", "--max-inflight", "4", "--ack-wait-s", "5"]
    async with local_cluster(workers=2, worker_args=worker_args, stop_timeout_s=30) as cluster:
        port = int(cluster.url.rsplit(":", 1)[1])
        (first_pid,) = nats_servers()
        await wait_ready(cluster.ports, timeout_s=60)
        nc = await connect(cluster.url, name="test-heal")
        try:
            js = nc.jetstream()
            refs = await Publisher(nc).submit_many(
                TaskSpec("acme", "echo", EchoIn(text=str(i), sleep_s=0.02), task_id=f"heal-{i}")
                for i in range(TASKS)
            )
            assert sum(isinstance(r, TaskRef) for r in refs) == TASKS  # every publish acknowledged

            async def started() -> bool:
                return await messages(js, RESULTS) >= 100

            await eventually(started, "the workers to complete some of the backlog")
            assert await messages(js, TASKS_STREAM) > 0, "the backlog ended before the kill: make it longer"

            os.kill(first_pid, signal.SIGKILL)

            async def restarted() -> bool:
                return any(pid != first_pid and listens(pid, port) for pid in nats_servers())

            await eventually(restarted, f"a new nats-server listening on port {port}", timeout_s=60)
            assert reaped(first_pid), "the killed server was left <defunct>"
            server = cluster.server
            assert server is not None

            async def counted() -> bool:  # the new process listens before keep_alive counts it ready
                return server.restarts == 1

            await eventually(counted, "keep_alive to count the restart", timeout_s=60)
            assert server.store_dir.exists()  # the same store: the backlog below is the one published

            async def all_done() -> bool:
                return await messages(js, RESULTS) == TASKS and await messages(js, TASKS_STREAM) == 0

            await eventually(all_done, f"all {TASKS} acknowledged tasks to complete", timeout_s=180)
            assert await messages(js, DLQ_STREAM) == 0
            assert len(cluster.supervisor.pids()) == 2
        finally:
            await nc.close()
