"""One hostile frame no longer stops the fleet: worker processes, a raw-protocol publisher,
fast path on and off (``AGENTBUS_NATS_FAST_PATH``).

Measured on main before the guard: after any one of these frames, 0 of the canary tasks
completed while every worker stayed up and answered 200 on /healthz.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from conftest import WorkerProcess
from helpers_a import dead_letters, launch, metric, poll
from nats.aio.client import Client

from agents.builtin.basic import EchoIn, EchoOut
from bus.embedded import EmbeddedNats
from bus.messages import DlqReason, Task, encode
from bus.publisher import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


def _hpub(subject: bytes, headers: bytes, payload: bytes) -> bytes:
    size = len(headers) + len(payload)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(headers), size, headers, payload)


def _send_raw(server: EmbeddedNats, frames: bytes) -> None:
    """Publish ``frames`` as any client with publish permission could, then wait for the server's PONG."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n' + frames + b"PING\r\n")
        got = b""
        while b"PONG\r\n" not in got:
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk
        assert b"-ERR" not in got, got


# What a stored poison task ends as: a dead letter with a precise reason, never a redelivery loop.
LETTER = {
    "task-subject-not-utf8": ("_invalid", DlqReason.INVALID_SUBJECT),
    "task-header-NATS/1.0": ("acme", DlqReason.INVALID_ENVELOPE),
}

POISON = {
    # a task on a subject that is not UTF-8: stored by JetStream, delivered to a worker
    "task-subject-not-utf8": lambda task: b"PUB tasks.\xff\xfe.echo %d\r\n%s\r\n" % (len(task), task),
    # one frame on the gossip subject every worker subscribes
    "gossip-header-NATS/1.0": lambda task: _hpub(b"agentbus.gossip.all", b"NATS/1.0", b"x"),
    # a task whose stored header block is only ``NATS/1.0`` (JetStream keeps it as sent)
    "task-header-NATS/1.0": lambda task: _hpub(b"tasks.acme.echo", b"NATS/1.0", task),
}


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "plain"])
@pytest.mark.parametrize("case", list(POISON))
async def test_one_hostile_frame_does_not_stop_the_fleet(
    nc: Client,
    nats_server: EmbeddedNats,
    start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    fast_path: str,
) -> None:
    monkeypatch.setenv("AGENTBUS_NATS_FAST_PATH", fast_path)
    args = ("--kind", "echo", "--gossip-preset", "test")
    workers = [await launch(start_worker, name, *args) for name in ("w1", "w2")]
    task = encode(Task(id="poison-1", payload={"text": "poison"}))
    await asyncio.to_thread(_send_raw, nats_server, POISON[case](task))

    pub = Publisher(nc)
    calls = [
        pub.call("globex", "echo", EchoIn(text=f"c{i}"), timeout_s=60, output_type=EchoOut) for i in range(30)
    ]
    results = await asyncio.gather(*calls)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]

    async def counted() -> bool:
        totals = [await metric(w, "agentbus_nats_bad_frames_total") for w in workers]
        return sum(t or 0 for t in totals) >= 1

    if case != "task-subject-not-utf8":
        await poll(counted, timeout_s=30, what="the bad frame in some worker's /metrics")
    # else: no tenant consumer can name the subject, so it is never delivered as a frame: the
    # workers' discovery sees its U+FFFD and moves it to the DLQ by sequence (docs/fairness.md)
    for worker in workers:
        assert worker.proc.poll() is None, worker.log()
        assert f"(client {'FastClient' if fast_path == '1' else 'GuardedClient'})" in worker.log()
        assert (await asyncio.to_thread(worker.get, "/healthz"))[0] == 200
    if case in LETTER:
        tenant, reason = LETTER[case]

        async def lettered() -> bool:
            return any((d.tenant, d.reason) == (tenant, reason) for d in await dead_letters(nc))

        await poll(lettered, timeout_s=30, what=f"the poison task dead-lettered {reason}")
