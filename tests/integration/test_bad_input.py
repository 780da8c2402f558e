"""Poison and bad input end in the DLQ with the right reason; good work around them completes.

Everything runs against a real nats-server. The DLQ is read back from JetStream
(stream ``DLQ``) and every :class:`~bus.messages.DeadLetter` is checked for its
reason, its attempts and the original bytes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import async_wait_until, dlq_messages
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agentbus.errors import InvalidSubjectError, PayloadTooLargeError, StreamFullError
from agents.config import WorkerConfig
from agents.lifecycle import State
from agents.registry import Registry
from agents.worker import Worker
from bus.connection import connect
from bus.embedded import EmbeddedNats
from bus.messages import DLQ_MAX_DATA_BYTES, HDR_MSG_ID, DeadLetter, DlqReason, Result, Task, encode, now
from bus.publisher import Publisher, TaskSpec
from bus.topology import TASKS_STREAM, StreamLimits, ensure_streams

pytestmark = pytest.mark.integration

_dead_letter = msgspec.json.Decoder(DeadLetter)
_result = msgspec.json.Decoder(Result[Any])


# -- helpers --------------------------------------------------------------------------------


async def read_dlq(js: JetStreamContext) -> list[tuple[str, DeadLetter]]:
    """Every message of the DLQ stream: ``(subject, DeadLetter)``, in stream order."""
    return [(subject, _dead_letter.decode(data)) for subject, data in await dlq_messages(js)]


async def wait_dlq(js: JetStreamContext, count: int, timeout_s: float = 30.0) -> list[tuple[str, DeadLetter]]:
    """Poll the DLQ stream until it holds ``count`` letters (a liveness bound, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while True:
        letters = await read_dlq(js)
        if len(letters) >= count:
            return letters
        if time.monotonic() > deadline:
            got = [(s, lt.reason, lt.task_id) for s, lt in letters]
            raise AssertionError(f"DLQ has {len(letters)} of {count} letters after {timeout_s}s: {got}")
        await asyncio.sleep(0.05)


async def tasks_in_stream(js: JetStreamContext) -> int:
    return (await js.stream_info(TASKS_STREAM)).state.messages


async def wait_tasks_empty(js: JetStreamContext, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (n := await tasks_in_stream(js)) != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"TASKS still holds {n} messages after {timeout_s}s")
        await asyncio.sleep(0.05)


async def http_get(port: int, path: str) -> tuple[int, str]:
    """A plain HTTP/1.1 GET on 127.0.0.1 (the worker's probe endpoint)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` (label order ignored) of an exposition, None if absent."""
    for match in _SAMPLE.finditer(text):
        if match[1] == name and dict(_LABEL.findall(match[2] or "")) == labels:
            return float(match[3])
    return None


# -- one worker, every kind of bad input ----------------------------------------------------


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
async def worker(nats_url: str, nc: Client, request: pytest.FixtureRequest) -> AsyncIterator[Worker]:
    """An in-process worker serving tenants acme and globex, fast retries, a fast unrouted sweep;
    nats-py's fast path on and off (``AGENTBUS_NATS_FAST_PATH``)."""
    config = WorkerConfig(
        nats_url=nats_url,
        nats_fast_path=request.param,
        worker_id="bad-input",
        http_port=0,
        max_deliver=3,
        retry_base_s=0.05,
        retry_max_s=0.2,
        unrouted_grace_s=0.5,
        sweep_interval_s=0.5,
        tenants=frozenset({"acme", "globex"}),
    )
    w = Worker(config, Registry.from_modules(["agents.builtin"]))
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


class Bad(msgspec.Struct):
    """One bad message and what its dead letter must say."""

    name: str
    subject: str
    data: bytes
    reason: DlqReason
    attempts: int
    task_id: str = ""


def _task(task_id: str, payload: Any, **fields: Any) -> bytes:
    return encode(Task(id=task_id, payload=payload, created_at=now(), **fields))


BIG_TEXT = "x" * (300 * 1024)  # over the agent's max_payload_bytes (256 KiB), under the 1 MiB stream limit

BAD = [
    Bad(
        "malformed",
        "tasks.acme.echo",
        b"\x00\x01 this is not json {",
        DlqReason.MALFORMED,
        1,
        "bad-malformed",
    ),
    Bad("not-an-object", "tasks.acme.echo", b"[1, 2, 3]", DlqReason.INVALID_ENVELOPE, 1, "bad-array"),
    Bad("no-id", "tasks.acme.echo", b'{"payload": {"text": "x"}}', DlqReason.INVALID_ENVELOPE, 1, "bad-noid"),
    Bad(
        "wrong-schema",
        "tasks.acme.echo",
        _task("bad-schema", {"sleep_s": 0}),  # no `text`
        DlqReason.INVALID_PAYLOAD,
        1,
        "bad-schema",
    ),
    Bad(
        "wrong-type",
        "tasks.acme.summarize",
        _task("bad-type", {"text": ["not", "a", "string"]}),
        DlqReason.INVALID_PAYLOAD,
        1,
        "bad-type",
    ),
    Bad(
        "other-tenant-in-body",
        "tasks.acme.echo",
        _task("bad-claims-globex", {"text": "x"}, tenant="globex"),
        DlqReason.INVALID_ENVELOPE,
        1,
        "bad-claims-globex",
    ),
    Bad(
        "unknown-kind",
        "tasks.acme.nosuchkind",
        _task("bad-kind", {"text": "x"}),
        DlqReason.UNKNOWN_KIND,
        0,
        "bad-kind",
    ),
    Bad(
        "oversized",
        "tasks.acme.echo",
        _task("bad-big", {"text": BIG_TEXT}),
        DlqReason.OVERSIZED,
        1,
        "bad-big",
    ),
    Bad(
        "always-fails",
        "tasks.acme.echo",
        _task("bad-poison", {"text": "x", "fail": "always"}),
        DlqReason.MAX_DELIVERIES,
        3,
        "bad-poison",
    ),
    Bad(
        "rejected",
        "tasks.acme.echo",
        _task("bad-reject", {"text": "x", "fail": "reject"}),
        DlqReason.REJECTED,
        1,
        "bad-reject",
    ),
    Bad(
        "deadline-passed",
        "tasks.acme.echo",
        _task("bad-late", {"text": "x"}, deadline=now() - 60),
        DlqReason.DEADLINE_EXCEEDED,
        1,
        "bad-late",
    ),
    Bad(
        "unknown-tenant",
        "tasks.evil.echo",
        _task("bad-tenant", {"text": "x"}),
        DlqReason.UNKNOWN_TENANT,
        1,
        "bad-tenant",
    ),
]


async def test_every_bad_input_is_dead_lettered_and_good_work_completes(nc: Client, worker: Worker) -> None:
    js = nc.jetstream()
    results: dict[str, Result[Any]] = {}

    async def on_result(msg: Msg) -> None:
        result = _result.decode(msg.data)
        results[result.task_id] = result

    sub = await nc.subscribe("results.>", cb=on_result)
    await nc.flush()
    pub = Publisher(nc)
    good: list[str] = []
    for i, bad in enumerate(BAD):
        # good tasks before and after every bad one, for both served tenants and two kinds
        for tenant in ("acme", "globex"):
            ref = await pub.submit(
                tenant, "echo", {"text": f"good-{i}-{tenant}"}, task_id=f"good-{i}-{tenant}"
            )
            good.append(ref.task_id)
        ack = await js.publish(bad.subject, bad.data, headers={HDR_MSG_ID: bad.task_id})
        assert not ack.duplicate
        ref = await pub.submit("acme", "summarize", {"text": "One sentence. Two."}, task_id=f"good-sum-{i}")
        good.append(ref.task_id)

    letters = await wait_dlq(js, len(BAD))
    by_id = {letter.task_id: (subject, letter) for subject, letter in letters}
    assert len(letters) == len(BAD), "a message was dead-lettered twice"
    assert sorted(by_id) == sorted(b.task_id for b in BAD)
    for bad in BAD:
        subject, letter = by_id[bad.task_id]
        tenant, kind = bad.subject.split(".")[1:]
        if bad.reason is DlqReason.UNKNOWN_TENANT:  # no subject, label or result of its own
            tenant = "_invalid"
            assert "'evil'" in letter.detail
        assert letter.reason == bad.reason, bad.name
        assert letter.attempts == bad.attempts, bad.name
        assert subject == f"dlq.{tenant}.{kind}", bad.name
        assert (letter.tenant, letter.kind) == (tenant, kind)
        assert letter.stream_seq > 0
        assert letter.failed_at > 0
        assert letter.detail
        assert letter.worker == "bad-input"  # unknown_kind too: this worker's sweeper moved it
        if len(bad.data) > DLQ_MAX_DATA_BYTES:
            assert letter.data_truncated
            assert letter.data == bad.data[:DLQ_MAX_DATA_BYTES]
        else:
            assert not letter.data_truncated
            assert letter.data == bad.data  # the original bytes, to inspect and replay

    assert "text" in by_id["bad-schema"][1].detail
    assert "poison task" in by_id["bad-poison"][1].detail
    assert by_id["bad-reject"][1].detail == "the task asked to be rejected"

    # good work interleaved with the bad all completes, exactly as asked
    await async_wait_until(lambda: all(g in results for g in good), 30, "every good task's result")
    for task_id in good:
        assert results[task_id].ok, results[task_id]
        assert results[task_id].attempts == 1
    output = results["good-3-globex"].output
    assert output is not None
    assert output["text"] == "good-3-globex"
    assert results["good-3-globex"].tenant == "globex"

    # a waiter learns the fate of a dead-lettered task (it has an id and the kind has an agent)
    for task_id in ("bad-schema", "bad-reject", "bad-late", "bad-poison"):
        await async_wait_until(partial(results.__contains__, task_id), 10, f"failed result of {task_id}")
        assert not results[task_id].ok
        assert results[task_id].error is not None
    assert results["bad-reject"].error.startswith("rejected")  # type: ignore[union-attr]
    assert results["bad-poison"].attempts == 3

    # the poison task was retried on exactly its first two deliveries, nothing else was retried
    echo = worker.stats.kinds["echo"]
    assert echo.tasks[("acme", "retried")] == 2
    assert echo.redelivered == 2
    assert echo.dead_letters[("_invalid", DlqReason.UNKNOWN_TENANT)] == 1
    assert not any(tenant == "evil" for tenant, _ in [*echo.dead_letters, *echo.tasks])
    assert "bad-tenant" not in results  # an unknown tenant's results subject is not written to
    assert echo.dead_letters[("acme", DlqReason.OVERSIZED)] == 1

    await wait_tasks_empty(js)
    assert len(await read_dlq(js)) == len(BAD)  # still one letter each, nothing dead-lettered late
    assert worker.lifecycle.state is State.RUNNING
    assert worker.http is not None
    status, body = await http_get(worker.http.port, "/readyz")
    assert status == 200, body
    _, metrics = await http_get(worker.http.port, "/metrics")
    assert metric(metrics, "agentbus_dead_letters_total", tenant="acme", kind="echo", reason="malformed") == 1
    assert metric(metrics, "agentbus_tasks_total", tenant="globex", kind="echo", outcome="ok") == len(BAD)
    await sub.unsubscribe()


async def test_redelivered_poison_is_one_letter_even_with_two_workers(nats_url: str, nc: Client) -> None:
    """Two replicas failing the same task still store its dead letter once (Msg-Id from the stream seq)."""
    js = nc.jetstream()
    workers = []
    for n in (1, 2):
        config = WorkerConfig(
            nats_url=nats_url,
            worker_id=f"poison-{n}",
            http_port=-1,
            kinds=("echo",),
            max_deliver=4,
            retry_base_s=0.01,
            retry_max_s=0.05,
        )
        w = Worker(config, Registry.from_modules(["agents.builtin"]))
        await w.start()
        workers.append(w)
    try:
        pub = Publisher(nc)
        refs = [
            await pub.submit("acme", "echo", {"text": "p", "fail": "always"}, task_id=f"poison-{i}")
            for i in range(10)
        ]
        letters = await wait_dlq(js, len(refs))
        await wait_tasks_empty(js)
        letters = await read_dlq(js)
        assert sorted(lt.task_id for _, lt in letters) == sorted(r.task_id for r in refs)
        assert {lt.attempts for _, lt in letters} == {4}
        assert {lt.reason for _, lt in letters} == {DlqReason.MAX_DELIVERIES}
        assert all(w.lifecycle.state is State.RUNNING for w in workers)
    finally:
        for w in workers:
            await w.stop()


# -- the publisher refuses what cannot be stored --------------------------------------------


async def test_publisher_refuses_a_payload_over_the_stream_limit(nc: Client) -> None:
    js = nc.jetstream()
    pub = Publisher(nc)  # the default limit matches the default stream's max_msg_bytes (1 MiB)
    with pytest.raises(PayloadTooLargeError) as info:
        await pub.submit("acme", "echo", {"text": "y" * (1 << 20)}, task_id="too-big")
    assert info.value.size > info.value.limit == StreamLimits().max_msg_bytes
    assert info.value.task_id == "too-big"
    assert info.value.subject == "tasks.acme.echo"
    # a payload just under the limit is stored
    ref = await pub.submit("acme", "echo", {"text": "y" * ((1 << 20) - 1024)})
    assert ref.seq == 1
    assert await tasks_in_stream(js) == 1


async def test_publisher_checks_the_stream_limit_it_is_given(nc: Client) -> None:
    limits = StreamLimits(max_msg_bytes=64 * 1024)
    await ensure_streams(nc.jetstream(), limits)
    pub = Publisher(nc, max_msg_bytes=limits.max_msg_bytes)
    with pytest.raises(PayloadTooLargeError) as info:
        await pub.submit("acme", "echo", {"text": "z" * 70_000})
    assert info.value.limit == 64 * 1024
    assert await tasks_in_stream(nc.jetstream()) == 0


async def test_the_servers_max_payload_bounds_the_publisher_too(tmp_path: Path) -> None:
    # a publisher configured above the server's max_payload gets our error, not nats-py's
    with EmbeddedNats(store_dir=tmp_path / "small", max_payload_bytes=64 * 1024) as server:
        client = await connect(server.url, name="test")
        try:
            await ensure_streams(client.jetstream())
            pub = Publisher(client)  # 1 MiB by default
            with pytest.raises(PayloadTooLargeError) as info:
                await pub.submit("acme", "echo", {"text": "x" * 100_000}, task_id="over-server")
            assert info.value.limit == 64 * 1024 < info.value.size
            assert (await pub.submit("acme", "echo", {"text": "small"})).seq == 1
        finally:
            await client.close()


async def test_a_stream_limit_below_the_publishers_is_a_payload_error(nc: Client) -> None:
    # the stream allows 64 KiB, the publisher thinks 1 MiB: JetStream refuses, and the refusal
    # is the same typed error (with the size), not a generic PublishError
    await ensure_streams(nc.jetstream(), StreamLimits(max_msg_bytes=64 * 1024))
    pub = Publisher(nc)
    with pytest.raises(PayloadTooLargeError) as info:
        await asyncio.wait_for(pub.submit("acme", "echo", {"text": "w" * 70_000}, task_id="big"), 10)
    assert info.value.size > 70_000
    assert info.value.task_id == "big"
    assert "refused" in str(info.value)
    assert await tasks_in_stream(nc.jetstream()) == 0


async def test_a_full_stream_refuses_the_next_publish(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamLimits(tasks_max_msgs=5))  # and no worker consumes
    pub = Publisher(nc)
    refs = [await pub.submit("acme", "echo", {"text": str(i)}) for i in range(5)]
    assert [r.seq for r in refs] == [1, 2, 3, 4, 5]
    # bounded: a publisher that hangs on a refused task is the bug this guards against
    with pytest.raises(StreamFullError) as info:
        await asyncio.wait_for(pub.submit("acme", "echo", {"text": "6"}, task_id="sixth"), 10)
    assert info.value.task_id == "sixth"
    assert info.value.subject == "tasks.acme.echo"
    out = await asyncio.wait_for(
        pub.submit_many(
            [TaskSpec("acme", "echo", {"text": "7"}), TaskSpec("globex", "order", {"request": "x"})],
            return_exceptions=True,
        ),
        10,
    )
    assert [type(r) for r in out] == [StreamFullError, StreamFullError]
    assert await tasks_in_stream(js) == 5
    await asyncio.wait_for(pub.flush(), 10)  # no ack is left pending forever


@pytest.mark.parametrize(
    ("tenant", "kind"),
    [("a.b", "echo"), ("*", "echo"), (">", "echo"), ("", "echo"), ("acme", "a.b"), ("acme", "*")],
)
async def test_invalid_subject_tokens_are_refused_before_publishing(
    nc: Client, tenant: str, kind: str
) -> None:
    pub = Publisher(nc)
    with pytest.raises(InvalidSubjectError):
        await pub.submit(tenant, kind, {"text": "x"})
    with pytest.raises(InvalidSubjectError):
        await pub.submit("acme", "echo", {"text": "x"}, task_id="has.dot")
    assert await tasks_in_stream(nc.jetstream()) == 0
