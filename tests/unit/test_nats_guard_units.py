"""Small pieces of the NATS guard: URL redaction, the fast-path switch, the bad-frame metric,
the subject check."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from agentbus.errors import BusError, UnsafeSubjectError
from agents.config import WorkerConfig
from agents.metrics import StatsCollector, WorkerStats
from bus._client import MAX_NAMES_BYTES, check_names
from bus.connection import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://alice:s3cret@nats.example:4222", "nats://***@nats.example:4222"),
        ("nats://s3cr3t-t0ken@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("tls://u:p%40ss@h:4222,nats://u:p@h2:4222", "tls://***@h:4222,nats://***@h2:4222"),
        ("u:pw@host:4222", "***@host:4222"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats error: connect to nats://a:b@h:1 failed", "nats error: connect to nats://***@h:1 failed"),
    ],
)
def test_credentials_never_show_in_a_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cr" not in redact_url(url)


async def test_the_connect_error_names_the_server_without_its_password() -> None:
    from bus.connection import connect
    from bus.embedded import free_port

    url = f"nats://alice:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BusError) as failed:
        await connect(url, first_connect_timeout_s=0.3, reconnect_wait_s=0.05)
    assert "hunter2" not in str(failed.value)
    assert "***@127.0.0.1" in str(failed.value)


@pytest.mark.parametrize(
    ("value", "on"),
    [("0", False), ("false", False), ("No", False), (" off ", False), ("1", True), ("yes", True)],
)
def test_the_fast_path_switch(value: str, on: bool) -> None:
    assert WorkerConfig.from_env({"AGENTBUS_NATS_FAST_PATH": value}).nats_fast_path is on
    assert WorkerConfig.from_env({}).nats_fast_path is True


def test_the_lost_nats_grace() -> None:
    assert WorkerConfig().nats_lost_exit_s == 10.0
    assert WorkerConfig.from_env({"AGENTBUS_NATS_LOST_EXIT_S": "2.5"}).nats_lost_exit_s == 2.5


def test_bad_frames_are_exported_by_reason() -> None:
    stats = WorkerStats("w1")
    registry = CollectorRegistry()
    StatsCollector(stats, registry)
    assert b"agentbus_nats_bad_frames_total{" not in generate_latest(registry)  # no client yet
    stats.bad_frames = lambda: {"subject": 2, "headers": 5, "handler": 0, "other": 0}
    text = generate_latest(registry).decode()
    assert 'agentbus_nats_bad_frames_total{reason="headers"} 5.0' in text
    assert 'agentbus_nats_bad_frames_total{reason="subject"} 2.0' in text


@pytest.mark.parametrize(
    ("subject", "reply"),
    [("", ""), ("a b", ""), ("a\tb", ""), ("a\x00", ""), ("ok", "r\r\n"), ("a" * MAX_NAMES_BYTES, "r")],
)
def test_unsafe_names_are_refused(subject: str, reply: str) -> None:
    with pytest.raises(UnsafeSubjectError):
        check_names(subject, reply)


def test_safe_names_pass() -> None:
    check_names("tasks.acme.echo", "_INBOX.abc")
    check_names("a" * (MAX_NAMES_BYTES - 1), "r")
    check_names("results.acme.é")


def test_an_untested_nats_py_gets_nats_pys_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from nats.aio.client import Client

    from bus import _client

    monkeypatch.setattr(_client, "SUPPORTED", False)
    assert _client.client_class(fast_path=True) is Client
    assert _client.client_class(fast_path=False) is Client
    assert not _client.publish_now(Client(), "s", b"")  # and nothing borrowed applies to it
