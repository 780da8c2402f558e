"""Stored results (stream ``RESULTS``): a publisher that never listened gets its result later.

``RESULT_DELAY_S`` (default 2) is how long after completion the result is asked for; set
``RECORDS_RESULT_DELAY_S=10`` to run the issue's 10 s (the store has no clock of its own
below its TTL, so the delay only shows that nothing expires the result early).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os

import pytest
from helpers_a import poll
from nats.aio.client import Client

from agentbus.errors import InvalidSubjectError, RecordNotFoundError, ResultTimeoutError
from agents import Registry
from agents.builtin.basic import EchoIn, EchoOut, echo
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.connection import connect
from bus.publisher import Publisher
from bus.records import RESULTS_STREAM
from bus.subjects import stream_subject

pytestmark = pytest.mark.integration

RESULT_DELAY_S = float(os.environ.get("RECORDS_RESULT_DELAY_S", "2"))


async def test_result_fetched_later_by_a_publisher_that_never_subscribed(nc: Client, nats_url: str) -> None:
    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1, worker_id="w-res"), Registry([echo]))
    await worker.start()
    try:
        ref = await Publisher(nc).submit("acme", "echo", EchoIn(text="kept"))
        js = nc.jetstream()

        async def stored() -> bool:
            return (await js.stream_info(RESULTS_STREAM)).state.messages >= 1

        await poll(stored, timeout_s=20, what="the result stored")
        await asyncio.sleep(RESULT_DELAY_S)
        # a new connection, no inbox, no subscription: only the store can answer
        other = await connect(nats_url, name="later")
        try:
            result = await Publisher(other).result(ref.task_id, tenant="acme", output_type=EchoOut)
            assert result.ok
            assert result.output == EchoOut(text="kept", tenant="acme", attempt=1)
            assert result.worker == "w-res"
            # another tenant's subject holds nothing for this id
            with pytest.raises(RecordNotFoundError):
                await Publisher(other).result(ref.task_id, tenant="other")
        finally:
            await other.close()
    finally:
        await worker.stop()


async def test_result_wait_covers_a_task_that_completes_after_the_ask(nc: Client, nats_url: str) -> None:
    pub = Publisher(nc)
    ref = await pub.submit("acme", "echo", EchoIn(text="slow", sleep_s=0.3))
    waiting = asyncio.create_task(pub.result(ref.task_id, tenant="acme", timeout_s=30))
    await asyncio.sleep(0.2)  # asked before any worker runs
    assert not waiting.done()
    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1), Registry([echo]))
    await worker.start()
    try:
        result = await waiting
        assert result.ok
        assert result.task_id == ref.task_id
        with pytest.raises(ResultTimeoutError):
            await pub.result("never-published", tenant="acme", timeout_s=0.3)
    finally:
        await worker.stop()


async def test_stream_partials_and_hostile_names_stay_out_of_the_store(nc: Client) -> None:
    js = nc.jetstream()
    for n in range(20):  # what a streaming task sends: one token more than a result
        await nc.publish(stream_subject("acme", f"t{n}"), b'{"type":"token","seq":1,"text":"x"}')
    await nc.flush()
    assert (await js.stream_info(RESULTS_STREAM)).state.messages == 0
    pub = Publisher(nc)
    for tenant, task_id in (("acme", "a.>"), ("acme", "*"), ("a.b", "x"), (">", "x"), ("acme", "")):
        with pytest.raises(InvalidSubjectError):
            await pub.result(task_id, tenant=tenant)
    # a result stored for a task keeps only the newest (a replayed task replaces its failure)
    await nc.publish("results.acme.same", b'{"task_id":"same","tenant":"acme","kind":"echo","ok":false}')
    await nc.publish("results.acme.same", b'{"task_id":"same","tenant":"acme","kind":"echo","ok":true}')
    await nc.flush()  # the server has both; the stream stores them in order, a moment later

    async def newest() -> bool:
        try:
            return (await pub.result("same", tenant="acme")).ok
        except RecordNotFoundError:  # neither stored yet
            return False

    await poll(newest, what="the newest result stored")
    assert (await js.stream_info(RESULTS_STREAM)).state.messages == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"task_id":"forged","tenant":"acme","kind":"echo","ok":true}',  # another task's
        b'{"task_id":"x1","tenant":"beta","kind":"echo","ok":true}',  # another tenant's
        b'{"task_id":"x1","tenant":"acme"}',  # fields missing
    ],
)
async def test_a_forged_or_junk_stored_result_is_refused(nc: Client, body: bytes) -> None:
    await nc.publish("results.acme.x1", body)
    await nc.flush()
    with pytest.raises(RecordNotFoundError):
        await Publisher(nc).result("x1", tenant="acme")


async def test_agentbus_result_prints_the_stored_result_or_fails(nc: Client, nats_url: str) -> None:
    from agentbus.cli import main

    await nc.publish(
        "results.acme.c1", b'{"task_id":"c1","tenant":"acme","kind":"echo","ok":true,"output":1}'
    )
    await nc.flush()

    def run(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["result", *args, "--nats-url", nats_url])
        return code, out.getvalue()

    code, out = await asyncio.to_thread(run, "c1", "--tenant", "acme")
    assert code == 0
    assert json.loads(out)["output"] == 1
    code, out = await asyncio.to_thread(run, "c1", "--tenant", "beta")
    assert (code, out) == (1, "")
    code, _ = await asyncio.to_thread(run, "c2", "--tenant", "acme", "--wait", "--timeout-s", "0.3")
    assert code == 1
