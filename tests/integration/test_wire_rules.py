"""Hostile input from the wire is dead-lettered before any handler runs (issue 16, bus.admission).

A real nats-server and an in-process worker whose agent counts its runs: each hostile task
must end in the DLQ with its precise reason while the handler never saw it, and ordinary
tasks of other tenants around it complete. Also the forgeries: a fake MAX_DELIVERIES advisory
moves nothing, one tenant's ids do not drop another tenant's tasks, a reply subject cannot
make the worker publish into another tenant's space.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from conftest import dlq_messages
from helpers_a import poll
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agents import Context, Registry, Retry, agent
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.messages import HDR_MSG_ID, HDR_REPLY, DeadLetter, DlqReason
from bus.publisher import Publisher
from bus.topology import DLQ_STREAM, TASKS_STREAM, ConsumerSpec, ensure_consumer, ensure_streams

pytestmark = pytest.mark.integration

_letter = msgspec.json.Decoder(DeadLetter)


class CountIn(msgspec.Struct):
    text: str
    fail: bool = False


class CountOut(msgspec.Struct):
    text: str


def counting_registry(runs: Counter[str]) -> Registry:
    """Agents ``count`` and ``other`` that count their runs by tenant:task id."""

    async def count(ctx: Context, task: CountIn) -> CountOut:
        runs[f"{ctx.tenant}:{ctx.task_id}"] += 1
        if task.fail:
            raise Retry("asked to fail", delay_s=0.01)
        return CountOut(text=task.text)

    return Registry(
        [
            agent(kind="count", input=CountIn, output=CountOut, timeout_s=10)(count),
            agent(kind="other", input=CountIn, output=CountOut, timeout_s=10)(count),
        ]
    )


def config(nats_url: str, **changes: Any) -> WorkerConfig:
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "worker_id": "wire",
        "http_port": -1,
        "kinds": ("count",),
        "max_deliver": 3,
        "retry_base_s": 0.01,
        "retry_max_s": 0.05,
        "gossip": False,
    }
    return WorkerConfig(**(base | changes))


@pytest.fixture
def runs() -> Counter[str]:
    return Counter()


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
async def worker(
    nats_url: str, nc: Client, runs: Counter[str], request: pytest.FixtureRequest
) -> AsyncIterator[Worker]:
    """The worker under test, with nats-py's fast path on and off (``AGENTBUS_NATS_FAST_PATH``)."""
    w = Worker(config(nats_url, nats_fast_path=request.param), counting_registry(runs))
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def letters(js: JetStreamContext) -> list[tuple[str, DeadLetter]]:
    """``(subject, letter)`` of every dead letter, in stream order."""
    return [(subject, _letter.decode(data)) for subject, data in await dlq_messages(js)]


async def wait_letters(
    js: JetStreamContext, count: int, timeout_s: float = 30.0
) -> list[tuple[str, DeadLetter]]:
    deadline = time.monotonic() + timeout_s
    while len(found := await letters(js)) < count:
        if time.monotonic() > deadline:
            got = [(s, lt.reason, lt.task_id, lt.detail[:80]) for s, lt in found]
            raise AssertionError(f"{len(found)} of {count} dead letters after {timeout_s}s: {got}")
        await asyncio.sleep(0.05)
    return found


def envelope(task_id: Any, text: str = "x", **fields: Any) -> bytes:
    return json.dumps({"id": task_id, "payload": {"text": text}, **fields}).encode()


class Hostile(msgspec.Struct):
    name: str
    data: bytes
    reason: DlqReason
    says: str
    subject: str = "tasks.acme.count"
    headers: dict[str, str] = {}
    dlq: str = "dlq.acme.count"


DEEP = b'{"id":"deep","payload":{"text":"x","more":' + b"[" * 2000 + b"]" * 2000 + b"}}"
HOSTILE = [
    Hostile("long-id", envelope("a" * 5000), DlqReason.INVALID_ENVELOPE, "id 'aaaa"),
    Hostile("space-id", envelope("a b"), DlqReason.INVALID_ENVELOPE, "id 'a b'"),
    Hostile(
        "space-reply",
        envelope("space-reply"),
        DlqReason.INVALID_ENVELOPE,
        "plain subject",
        headers={HDR_REPLY: "_INBOX.a b"},
    ),
    Hostile(
        "reply-into-dlq",
        envelope("reply-into-dlq"),
        DlqReason.INVALID_ENVELOPE,
        "allowed reply prefix",
        headers={HDR_REPLY: "dlq.victim.count"},
    ),
    Hostile(
        "reply-into-tasks",
        envelope("reply-into-tasks"),
        DlqReason.INVALID_ENVELOPE,
        "allowed reply prefix",
        headers={HDR_REPLY: "tasks.victim.count"},
    ),
    Hostile("deep-json", DEEP, DlqReason.MALFORMED, "deeper than 64 levels"),
    Hostile(
        "deadline-inf",
        b'{"id":"deadline-inf","payload":{"text":"x"},"deadline":1e999}',
        DlqReason.INVALID_ENVELOPE,
        "deadline",
    ),
    Hostile(
        "deadline-ms",
        envelope("deadline-ms", deadline=time.time() * 1000 + 60_000),
        DlqReason.INVALID_ENVELOPE,
        "milliseconds",
    ),
    Hostile(
        "created-negative",
        envelope("created-negative", created_at=-1.5),
        DlqReason.INVALID_ENVELOPE,
        "created_at",
    ),
    Hostile(
        "msg-id-of-globex",
        envelope("msg-id-of-globex"),
        DlqReason.INVALID_ENVELOPE,
        "another tenant or kind",
        headers={HDR_MSG_ID: "globex:count:msg-id-of-globex"},
    ),
    Hostile(
        "msg-id-too-long",
        envelope("msg-id-too-long"),
        DlqReason.INVALID_ENVELOPE,
        "printable",
        headers={HDR_MSG_ID: "m" * 400},
    ),
    Hostile(
        "msg-id-control",
        envelope("msg-id-control"),
        DlqReason.INVALID_ENVELOPE,
        "printable",
        headers={HDR_MSG_ID: "a\x1b[2Jb"},
    ),
    Hostile(
        "system-tenant",
        envelope("system-tenant"),
        DlqReason.INVALID_SUBJECT,
        "tenant token '_sys'",
        subject="tasks._sys.count",
        dlq="dlq._invalid.count",
    ),
    Hostile(
        "long-tenant",
        envelope("long-tenant"),
        DlqReason.INVALID_SUBJECT,
        "tenant token 'tttt",
        subject="tasks." + "t" * 100 + ".count",
        dlq="dlq._invalid.count",
    ),
]


@pytest.mark.parametrize("bad", HOSTILE, ids=lambda b: b.name)
async def test_hostile_task_is_dead_lettered_before_the_handler_runs(
    nc: Client, worker: Worker, runs: Counter[str], bad: Hostile
) -> None:
    js = nc.jetstream()
    leaked: list[str] = []

    async def on_leak(msg: Msg) -> None:
        leaked.append(msg.subject)

    # where a reply must never go (a core publish there would also be stored by JetStream)
    for subject in ("dlq.victim.>", "tasks.victim.>", "_INBOX.a"):
        await nc.subscribe(subject, cb=on_leak)
    await nc.flush()
    await js.publish(bad.subject, bad.data, headers={HDR_MSG_ID: bad.name} | bad.headers)
    pub = Publisher(nc)
    await pub.submit("globex", "count", CountIn(text="good"), task_id="good")  # after it, same queue

    ((subject, letter),) = await wait_letters(js, 1)
    assert (letter.reason, subject) == (bad.reason, bad.dlq)
    assert bad.says in letter.detail
    assert letter.detail.isascii()
    assert len(letter.detail) < 300
    assert letter.attempts == 1
    assert letter.data == bad.data
    if bad.reason is DlqReason.INVALID_SUBJECT:
        assert (letter.tenant, letter.kind) == ("_invalid", "count")
    assert letter.task_id == ("" if HDR_MSG_ID in bad.headers else bad.name)

    await poll(lambda: runs["globex:good"] == 1, timeout_s=20, what="the good task after it")
    await poll(lambda: _stream_empty(js), timeout_s=10, what="an empty work queue")
    assert runs == Counter({"globex:good": 1})  # the handler never saw the hostile task
    await nc.flush()
    assert leaked == []
    assert len(await letters(js)) == 1


async def test_a_forged_max_deliveries_advisory_moves_no_task(
    nats_url: str, nc: Client, worker: Worker, runs: Counter[str]
) -> None:
    """Any client can publish an advisory; a queued task of another tenant stays and completes."""
    js = nc.jetstream()
    await ensure_consumer(js, ConsumerSpec(kind="other"))  # queued: the running worker serves `count`
    pub = Publisher(nc)
    ref = await pub.submit("globex", "other", CountIn(text="queued"), task_id="victim")
    forged = {
        "type": "io.nats.jetstream.advisory.v1.max_deliver",
        "stream": TASKS_STREAM,
        "consumer": "agents-other",
        "stream_seq": ref.seq,
        "deliveries": 5,
    }
    for consumer in ("agents-other", "agents-count"):
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.{consumer}"
        await nc.publish(subject, json.dumps(forged).encode())
    # the advisory has reached every subscriber once a task published after it has completed
    await pub.submit("acme", "count", CountIn(text="after"), task_id="after")
    await poll(lambda: runs["acme:after"] == 1, timeout_s=20, what="a task after the advisory")
    await nc.flush()
    assert await letters(js) == []
    assert (await js.stream_info(TASKS_STREAM)).state.messages == 1  # the victim is still queued

    other = Worker(config(nats_url, worker_id="other", kinds=("other",)), counting_registry(runs))
    await other.start()
    try:
        await poll(lambda: runs["globex:victim"] == 1, timeout_s=20, what="the victim completing")
        await poll(lambda: _stream_empty(js), timeout_s=10, what="an empty work queue")
    finally:
        await other.stop()
    assert await letters(js) == []


async def _stream_empty(js: JetStreamContext) -> bool:
    return (await js.stream_info(TASKS_STREAM)).state.messages == 0


async def test_one_tenants_ids_do_not_drop_another_tenants_tasks(
    nc: Client, worker: Worker, runs: Counter[str]
) -> None:
    js = nc.jetstream()
    pub = Publisher(nc)
    # tenant acme publishes first: with our Publisher and raw with a bare id of its own
    a = await pub.submit("acme", "count", CountIn(text="a"), task_id="order-42")
    raw = await js.publish("tasks.acme.count", envelope("order-43"), headers={HDR_MSG_ID: "order-43"})
    assert not a.duplicate
    assert not raw.duplicate
    # tenant globex's tasks of the same ids are stored and run
    b = await pub.submit("globex", "count", CountIn(text="b"), task_id="order-42")
    c = await pub.submit("globex", "count", CountIn(text="c"), task_id="order-43")
    assert not b.duplicate
    assert not c.duplicate
    want = {"acme:order-42", "acme:order-43", "globex:order-42", "globex:order-43"}
    await poll(lambda: set(runs) == want, timeout_s=20, what="all four tasks running")
    # and a publisher's own duplicate is still dropped, per tenant and kind
    again = await pub.submit("globex", "count", CountIn(text="b"), task_id="order-42")
    assert again.duplicate
    raw_again = await js.publish("tasks.acme.count", envelope("order-43"), headers={HDR_MSG_ID: "order-43"})
    assert raw_again.duplicate
    await poll(lambda: _stream_empty(js), timeout_s=10, what="an empty work queue")
    assert runs == Counter(dict.fromkeys(want, 1))
    assert await letters(js) == []


async def test_a_task_whose_dead_letter_cannot_be_stored_is_tried_again_later(
    nats_url: str, nc: Client, runs: Counter[str]
) -> None:
    """The DLQ is gone while a task fails on every delivery: it is kept (nakked), never run past
    max_deliver, and dead-lettered as max_deliveries once the DLQ is back."""
    js = nc.jetstream()
    w = Worker(config(nats_url, max_deliver=2, provision=True), counting_registry(runs))
    await w.start()
    try:
        await js.delete_stream(DLQ_STREAM)
        await Publisher(nc).submit("acme", "count", CountIn(text="x", fail=True), task_id="doomed")
        stats = w.stats.kind("count")
        await poll(lambda: stats.redelivered >= 3, timeout_s=20, what="deliveries past max_deliver")
        assert runs["acme:doomed"] == 2  # only the allowed deliveries ran the handler
        assert (await js.stream_info(TASKS_STREAM)).state.messages == 1  # kept
        await ensure_streams(js)  # the DLQ is back
        ((subject, letter),) = await wait_letters(js, 1)
    finally:
        await w.stop()
    assert subject == "dlq.acme.count"
    assert letter.reason is DlqReason.MAX_DELIVERIES
    assert letter.task_id == "doomed"
    assert letter.attempts >= 2
    assert runs["acme:doomed"] == 2
    assert (await js.stream_info(TASKS_STREAM)).state.messages == 0


async def raw_publish(nats_url: str, *frames: tuple[bytes, bytes]) -> None:
    """Publish ``(subject bytes, payload)`` frames over the bare protocol (no client decodes them)."""
    host, port = nats_url.rsplit("/", 1)[-1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        out = b'CONNECT {"verbose":false,"pedantic":false}\r\n'
        for subject, data in frames:
            out += b"PUB %s %d\r\n%s\r\n" % (subject, len(data), data)
        writer.write(out + b"PING\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 10) == b"PONG\r\n"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_invalid_utf8_subjects_no_agent_serves_are_swept_as_invalid_subject(
    nats_url: str, nc: Client, runs: Counter[str]
) -> None:
    js = nc.jetstream()
    cfg = config(nats_url, unrouted_grace_s=0.2, sweep_interval_s=0.2)
    w = Worker(cfg, counting_registry(runs))
    await w.start()
    try:
        frames = [
            (b"tasks.acme.\xff\xfe", envelope("bad-kind")),
            (b"tasks.\xff.\xfe", envelope("bad-both")),
            (b"tasks.acme.nosuch", envelope("unrouted")),
        ]
        await raw_publish(nats_url, *frames)
        await Publisher(nc).submit("globex", "count", CountIn(text="good"), task_id="good")
        found = await wait_letters(js, 3)
        await poll(lambda: runs["globex:good"] == 1, timeout_s=20, what="the good task")
    finally:
        await w.stop()
    by_data = {letter.data: (subject, letter) for subject, letter in found}
    for data in (envelope("bad-kind"), envelope("bad-both")):
        subject, letter = by_data[data]
        assert subject == "dlq._invalid._invalid"
        assert letter.reason is DlqReason.INVALID_SUBJECT
        assert (letter.tenant, letter.kind) == ("_invalid", "_invalid")
        assert "token '\\ufffd" in letter.detail
    subject, letter = by_data[envelope("unrouted")]
    assert (subject, letter.reason) == ("dlq.acme.nosuch", DlqReason.UNKNOWN_KIND)
    assert (await js.stream_info(TASKS_STREAM)).state.messages == 0
    assert runs == Counter({"globex:good": 1})


async def test_an_invalid_utf8_tenant_is_dead_lettered_by_the_worker(
    nats_url: str, nc: Client, worker: Worker, runs: Counter[str]
) -> None:
    """No tenant consumer can name it (the stream lists it with replacement characters): the
    worker's discovery sees an invalid token and moves it to ``dlq._invalid.count`` at once."""
    js = nc.jetstream()
    await raw_publish(nats_url, (b"tasks.\xff\xfe.count", envelope("bad-tenant")))
    await Publisher(nc).submit("globex", "count", CountIn(text="good"), task_id="good")
    ((subject, letter),) = await wait_letters(js, 1, timeout_s=10)
    assert subject == "dlq._invalid.count"
    assert letter.reason is DlqReason.INVALID_SUBJECT
    assert (letter.tenant, letter.kind) == ("_invalid", "count")
    assert letter.detail.startswith("tenant token '\\ufffd\\ufffd'")
    await poll(lambda: runs["globex:good"] == 1, timeout_s=20, what="the good task after it")
    assert runs == Counter({"globex:good": 1})


async def test_a_worker_that_does_not_provision_warns_of_a_bounded_server_max_deliver(
    nats_url: str, nc: Client, runs: Counter[str], caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await ensure_consumer(js, ConsumerSpec(kind="count"))
    info = await js.consumer_info(TASKS_STREAM, "agents-count")
    info.config.max_deliver = 5  # as older agentbus (or an operator) made it
    await js.add_consumer(TASKS_STREAM, info.config)
    changes = {"provision": False, "consumer_info_interval_s": 0.05, "fairness": "kind"}  # agents-count's
    w = Worker(config(nats_url, **changes), counting_registry(runs))
    await w.start()
    try:
        await poll(lambda: "has max_deliver 5 on the server" in caplog.text, timeout_s=10, what="the warning")
    finally:
        await w.stop()
    assert caplog.text.count("has max_deliver 5 on the server") == 1
