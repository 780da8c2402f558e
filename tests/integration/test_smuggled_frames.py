"""A header block written to move the parser's cut neither smuggles a task into a worker nor
disconnects it: a real nats-server relays the block as is (it never reads header blocks),
and the worker runs with nats-py's fast path on and off (``AGENTBUS_NATS_FAST_PATH``).

nats-py 2.16 reads ``HMSG agentbus.gossip.all <sid> <hsize> <size>`` followed by a block
starting ``0\\r\\n`` as a reply and the sizes 0 bytes: on the base commit, the messages
written further in the block reached the worker's other subscriptions (a task of a tenant
that never published it, delivered as if by JetStream, ran and its result was published),
and the block ``0\\r\\n`` alone made the guarded worker's parser raise a protocol error
and reconnect (docs/nats-py-read-loop.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import WorkerProcess
from helpers_a import ResultLog, launch, metric, poll
from nats.aio.client import Client
from test_poison_frames import _hpub, _send_raw

from agents.builtin.basic import EchoIn, EchoOut
from bus.embedded import EmbeddedNats
from bus.messages import Task, encode
from bus.publisher import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

GOSSIP = b"agentbus.gossip.all"


def _smuggling_block(sids: range) -> bytes:
    """A header block that nats-py reads as a 0-byte message, then as messages of its own:
    a forged task delivery for each sid (whichever is the worker's pull inbox), then ``+OK``
    which the frame's own CRLF ends."""
    task = encode(Task(id="smuggled", payload={"text": "forged"}))
    forged = b"".join(
        b"MSG tasks.victim.echo %d $JS.ACK.TASKS.agents-echo.1.%d.%d.1700000000000000000.0 %d\r\n%s\r\n"
        % (sid, sid, sid, len(task), task)
        for sid in sids
    )
    return b"0\r\nxx" + forged + b"+OK"


@pytest.mark.parametrize("fast_path", ["0", "1"], ids=["plain", "fast"])
async def test_a_header_block_cannot_smuggle_a_task_or_disconnect_a_worker(
    nc: Client,
    nats_server: EmbeddedNats,
    start_worker: Callable[..., WorkerProcess],
    monkeypatch: pytest.MonkeyPatch,
    fast_path: str,
) -> None:
    monkeypatch.setenv("AGENTBUS_NATS_FAST_PATH", fast_path)
    worker = await launch(start_worker, "w1", "--kind", "echo", "--gossip-preset", "test")
    results = await ResultLog(EchoOut).start(nc)
    before = await metric(worker, "agentbus_nats_bad_frames_total") or 0
    frames = (
        _hpub(GOSSIP, b"", b"x" * 100_000)  # cut across reads: the fast lane hands the rest on
        + _hpub(GOSSIP, _smuggling_block(range(1, 41)), b"")
        + _hpub(GOSSIP, b"0\r\n", b"0|")  # the fuzz's find: a protocol error
    )
    await asyncio.to_thread(_send_raw, nats_server, frames)

    pub = Publisher(nc)
    calls = [
        pub.call("globex", "echo", EchoIn(text=f"c{i}"), timeout_s=60, output_type=EchoOut) for i in range(10)
    ]
    assert all(r.ok for r in await asyncio.gather(*calls))  # served after the frames, on the same stream

    async def counted() -> bool:
        return (await metric(worker, "agentbus_nats_bad_frames_total") or 0) > before

    await poll(counted, timeout_s=30, what="the unreadable block '0\\r\\n' counted")
    assert "smuggled" not in {r.task_id for r in results.results}
    log = worker.log()
    assert f"(client {'FastClient' if fast_path == '1' else 'GuardedClient'})" in log, log
    assert "nats disconnected" not in log, log
    assert "nats reconnected" not in log, log
    assert worker.proc.poll() is None, log
    await results.stop()
