"""A worker whose NATS connection was closed for good fails /healthz, exits 70, is
restarted by ``agentbus up``'s supervisor, and the fleet completes work again.

The worker process reaches nats-server through a TCP proxy run by this test
(:class:`loadtest.chaos_net.TcpProxy`); the proxy
injects ``-ERR 'Unknown Protocol Operation'`` into the server-to-client stream, after
which nats-py 2.16 closes the connection and never reconnects (its ``_process_err``).
Before, the worker stayed up and kept answering 200 on ``/healthz`` while it would never
read a task again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from conftest import async_wait_until

from agentbus.cli.up import _http_status, local_cluster, wait_ready
from agents.builtin.basic import EchoIn, EchoOut
from agents.worker import EXIT_LOST_NATS
from bus.connection import connect
from bus.embedded import EmbeddedNats
from bus.publisher import Publisher
from loadtest.chaos_net import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

POISON = b"-ERR 'Unknown Protocol Operation'\r\n"


@contextlib.asynccontextmanager
async def proxy_to(server: EmbeddedNats) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(server.port).start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def _echo_all(pub: Publisher, n: int, tag: str) -> None:
    calls = [
        pub.call("acme", "echo", EchoIn(text=f"{tag}-{i}"), timeout_s=60, output_type=EchoOut)
        for i in range(n)
    ]
    results = await asyncio.gather(*calls)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert sorted(r.output.text for r in results if r.output is not None) == sorted(
        f"{tag}-{i}" for i in range(n)
    )


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "plain"])
async def test_a_worker_that_lost_nats_exits_70_is_restarted_and_work_completes(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch, fast_path: str
) -> None:
    monkeypatch.setenv("AGENTBUS_NATS_FAST_PATH", fast_path)
    monkeypatch.setenv("AGENTBUS_NATS_LOST_EXIT_S", "2")
    nc = await connect(nats_server.url, name="test")  # the test's own connection: straight to the server
    try:
        async with (
            proxy_to(nats_server) as proxy,
            local_cluster(
                workers=1,
                nats_url=proxy.url,
                worker_args=["--kind", "echo", "--no-gossip", "--ack-wait-s", "5"],
                stop_timeout_s=20,
            ) as cluster,
        ):
            await wait_ready(cluster.ports, timeout_s=60)
            pub = Publisher(nc)
            await _echo_all(pub, 5, "before")
            port = cluster.ports["w1"]
            assert await _http_status(port, "/healthz") == 200

            assert proxy.inject(POISON) >= 1
            await async_wait_until_async(lambda: _http_status(port, "/healthz"), 503, "healthz to fail")
            replica = cluster.supervisor.replicas["w1"]
            await async_wait_until(lambda: EXIT_LOST_NATS in replica.exits, 60, "the worker to exit 70")
            await async_wait_until(lambda: replica.restarts >= 1, 30, "the supervisor to restart it")
            await wait_ready(cluster.ports, timeout_s=60)
            assert await _http_status(port, "/healthz") == 200
            await _echo_all(pub, 20, "after")
            assert replica.exits == [EXIT_LOST_NATS]
    finally:
        await nc.close()


async def async_wait_until_async(probe: object, want: int, what: str, timeout_s: float = 30.0) -> None:
    """Poll an async status probe until it answers ``want``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen = None
    while loop.time() < deadline:
        seen = await probe()  # type: ignore[operator]
        if seen == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last {seen})")
