"""Liveness tells the truth, in-process: a worker whose NATS read loop ended or whose
connection closed fails /healthz, then stops with exit code 70 after its grace."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from conftest import async_wait_until

from agents.config import WorkerConfig
from agents.registry import Registry
from agents.worker import EXIT_LOST_NATS, Worker
from bus.embedded import EmbeddedNats

pytestmark = pytest.mark.integration


def _worker(nats_url: str, **changes: object) -> Worker:
    config = WorkerConfig(nats_url=nats_url, worker_id="live", kinds=("echo",), **changes)  # type: ignore[arg-type]
    return Worker(config, Registry.from_modules(("agents.builtin",)))


async def _get(port: int, path: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    return await asyncio.to_thread(get)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
async def test_a_worker_whose_read_loop_was_cancelled_reports_not_alive_then_exits_70(
    nats_url: str, fast_path: bool
) -> None:
    worker = _worker(nats_url, nats_lost_exit_s=1.0, nats_fast_path=fast_path)
    await worker.start()
    try:
        assert worker.http is not None
        assert (await _get(worker.http.port, "/healthz"))[0] == 200
        assert worker._nc is not None
        reading = worker._nc._reading_task
        assert reading is not None
        reading.cancel()
        await async_wait_until(reading.done, 10, "the read loop to end")
        status, body = await _get(worker.http.port, "/healthz")
        assert status == 503
        assert "nats=read-loop-ended" in body
        await asyncio.wait_for(worker.run_until_stopped(), 30)  # the watchdog asks for the stop
        assert worker.exit_code == EXIT_LOST_NATS
    finally:
        await worker.stop()


async def test_a_closed_connection_fails_liveness_and_a_drain_does_not(nats_url: str) -> None:
    worker = _worker(nats_url, nats_lost_exit_s=60.0)
    await worker.start()
    try:
        assert worker._nc is not None
        await worker._nc.close()  # what nats-py does after an -ERR from the server
        ok, detail = worker._alive()
        assert not ok
        assert "nats=closed" in detail
        assert worker._ready()[0] is False
    finally:
        await worker.stop()
    assert worker.exit_code == 0  # within its grace: not given up on yet


async def test_an_ordinary_drain_exits_0_and_is_never_reported_as_lost(nats_url: str) -> None:
    worker = _worker(nats_url, nats_lost_exit_s=0.2)
    await worker.start()
    assert worker._alive() == (True, "state=running")
    worker.request_stop()
    await asyncio.wait_for(worker.run_until_stopped(), 30)
    await asyncio.sleep(0.5)  # longer than the grace: the watchdog is gone with the drain
    assert worker.exit_code == 0


async def test_a_nats_outage_is_not_a_lost_connection(nats_server: EmbeddedNats) -> None:
    """While nats-py reconnects, the worker stays alive (an outage must not restart every worker)."""
    worker = _worker(nats_server.url, nats_lost_exit_s=0.5)
    await worker.start()
    try:
        assert worker._nc is not None
        nc = worker._nc
        nats_server.stop()
        await async_wait_until(lambda: nc.is_reconnecting, 10, "nats-py to start reconnecting")
        for _ in range(30):  # 3 s, six times the grace
            assert worker._alive()[0], worker._alive()[1]
            await asyncio.sleep(0.1)
        assert worker.exit_code == 0
        nats_server.start()
        await async_wait_until(lambda: worker._ready()[0], 30, "the worker to be ready again")
        assert worker._alive() == (True, "state=running")
    finally:
        await worker.stop()
    assert worker.exit_code == 0
