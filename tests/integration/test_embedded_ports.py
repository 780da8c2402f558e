"""EmbeddedNats against ports taken between choosing them and the server binding them.

Free ports are chosen by binding port 0 and letting go, so another process can take one
before nats-server binds it (seen in a benchmark run: the monitor port). A real
nats-server here; the ports are taken by listening sockets of this test.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from agentbus.errors import ConfigError
from bus.embedded import EmbeddedNats

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
