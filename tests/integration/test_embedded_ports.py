"""EmbeddedNats against ports taken between choosing them and the server binding them.

Free ports are chosen by binding port 0 and letting go, so another process can take one
before nats-server binds it (seen in a benchmark run: the monitor port). A real
nats-server here; the ports are taken by listening sockets of this test. And
:func:`keep_alive`, which restarts a killed server on its port (``agentbus up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator

import pytest

from agentbus.errors import ConfigError
from bus.embedded import EmbeddedNats, keep_alive

pytestmark = pytest.mark.integration


def _occupy(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.fixture
def server() -> Iterator[EmbeddedNats]:
    srv = EmbeddedNats()
    try:
        yield srv
    finally:
        srv.close()


def test_taken_chosen_ports_are_chosen_again(server: EmbeddedNats) -> None:
    taken = (server.port, server.http_port)
    blockers = [_occupy(port) for port in taken]
    try:
        server.start()
        assert server.port != taken[0]
        assert server.http_port != taken[1]
        assert server.proc is not None
        assert server.proc.poll() is None  # serving, on the new ports
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            assert conn.recv(4).startswith(b"INFO")
    finally:
        for sock in blockers:
            sock.close()


def test_a_restart_keeps_its_client_port(server: EmbeddedNats) -> None:
    server.start()
    port = server.port
    server.stop()
    blocker = _occupy(port)
    try:
        with pytest.raises(ConfigError, match="exited"):
            server.start(timeout_s=5)  # clients know this URL: it is not moved elsewhere
        assert server.port == port
    finally:
        blocker.close()
    server.start()
    assert server.port == port


def test_a_given_port_that_is_taken_is_an_error_naming_the_log(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.listen()
    srv = EmbeddedNats(port=port)
    try:
        with pytest.raises(ConfigError, match=r"nats-server exited with \d+; see .*nats-server.log"):
            srv.start(timeout_s=5)
        assert srv.port == port
    finally:
        probe.close()
        srv.close()


async def test_keep_alive_restarts_a_killed_server_on_its_port_once_the_port_is_free(
    server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9, and the port held by someone else for a while: retried with backoff, then back on it."""
    server.start()
    assert server.proc is not None
    port, store, first = server.port, server.store_dir, server.proc
    keeper = asyncio.create_task(keep_alive(server, backoff_s=0.1, backoff_max_s=0.5))
    try:
        os.kill(first.pid, signal.SIGKILL)
        blocker = await _occupy_when_free(port)
        try:
            await _until(lambda: caplog.text.count("did not start again") >= 2, "two failed restarts")
            assert first.returncode is not None  # reaped: no <defunct> left
        finally:
            blocker.close()
        await _until(lambda: server.restarts == 1, "the restart once the port is free")
        assert (server.port, server.store_dir) == (port, store)
        assert server.proc is not None
        assert server.proc.poll() is None
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(4).startswith(b"INFO")
        assert f"restarting it on port {port}" in caplog.text
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    server.stop()
    await asyncio.sleep(0.5)  # a stopped server stays stopped: the keeper is gone
    assert server.proc is None


async def _occupy_when_free(port: int) -> socket.socket:
    for _ in range(200):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
            return sock
        except OSError:  # the killed server's socket is not released yet
            sock.close()
            await asyncio.sleep(0.01)
    raise AssertionError(f"port {port} never freed")


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
