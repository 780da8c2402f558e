"""One poison message must not stop the fleet (issue 16, must-show 1 and 2).

Each case sends ONE hostile message to a real ``agentbus up --workers 3`` and then 300
ordinary tasks of another tenant. Measured before the fixes: after (a), (b) or (c) none
of the 300 completed within 60 s while every worker stayed alive and /healthz said
200; the others ran a handler on input that was never valid, moved another tenant's
task or dropped it as a duplicate, or let a task choose where the worker publishes.

Every case asserts the whole contract, and names every broken part at once:

* the poison's own fate (the dead-letter reason, on the right subject; or the task
  is not moved, or is stored and completes);
* the other tenant's 300 canaries all complete within a generous 60 s;
* no worker process restarted (same pids), /healthz and /readyz answer 200.

The suite runs twice, with the worker's nats-py fast path on and off
(``AGENTBUS_NATS_FAST_PATH``). One fleet serves every case of a mode; a fleet that a
case left broken (on a tree without the fixes) is replaced before the next case, so
each case is judged on its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections.abc import Iterator
from typing import Any

import pytest
from fleet_helpers import Observer, UpFleet, http_get, start_fleet
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from agents.builtin.basic import EchoIn
from bus.publisher import Publisher
from bus.topology import TASKS_STREAM, ConsumerSpec, ensure_consumer
from loadtest.rawnats import RawNats

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

BAD_FRAMES = "agentbus_nats_bad_frames_total"


@pytest.fixture(scope="module", params=["1", "0"], ids=["fast-path-on", "fast-path-off"])
def up_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpFleet]:
    """``agentbus up --workers 3`` with the fast path on or off, shared by the cases of the mode."""
    mode = str(request.param)
    fleet = start_fleet(tmp_path_factory.mktemp(f"up-fast-path-{mode}"), {"AGENTBUS_NATS_FAST_PATH": mode})
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
async def fleet(up_fleet: UpFleet) -> UpFleet:
    """The shared fleet, replaced first if an earlier case left it broken."""
    if not await _healthy(up_fleet):
        await asyncio.to_thread(up_fleet.stop)
        await asyncio.to_thread(up_fleet.start)
    return up_fleet


async def _healthy(fleet: UpFleet) -> bool:
    if len(fleet.pids()) != len(fleet.ports):
        return False
    for port in fleet.ports.values():
        if (await http_get(port, "/healthz"))[0] != 200:
            return False
    tenant = f"probe{fleet.starts}x{random.randrange(1 << 30)}"
    async with Observer(fleet, (tenant,)) as obs:
        await obs.canaries(tenant, n=5, timeout_s=15)
        return not obs.problems


def envelope(task_id: str, text: str = "x", **extra: Any) -> bytes:
    """A task envelope as any JSON client would send it."""
    return json.dumps({"id": task_id, "payload": {"text": text, **extra}}).encode()


async def raw_client(fleet: UpFleet) -> RawNats:
    return await RawNats.for_url(fleet.url).open()


def report(obs: Observer, fleet: UpFleet) -> str:
    return "\n".join(obs.problems) + f"\n--- agentbus up log (tail) ---\n{fleet.log_tail(2500)}"


# -- (a) (b) (c): measured to stop the whole fleet ------------------------------------------


async def test_a_5000_char_id_is_an_invalid_envelope(fleet: UpFleet) -> None:
    long_id = "".join(random.Random(16).choices(string.ascii_letters + string.digits, k=5000))
    async with Observer(fleet, ("pa", "ca")) as obs:
        await obs.nc.jetstream().publish(
            "tasks.pa.echo", envelope(long_id), headers={"Nats-Msg-Id": "a-long-id"}
        )
        await obs.canaries("ca")
        await obs.expect_letter("dlq.pa.echo", long_id[:100].encode(), "invalid_envelope")
        if any(r.task_id == long_id for r in obs.results):
            obs.problems.append("the handler ran the 5,000-character id")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


async def test_b_invalid_utf8_subject_is_dead_lettered_as_invalid_subject(fleet: UpFleet) -> None:
    raw = await raw_client(fleet)
    async with Observer(fleet, ("cb",)) as obs:
        try:
            ack = await raw.publish(b"tasks.\xff\xfe.echo", envelope("b-utf8"), ack_timeout_s=10)
        finally:
            await raw.close()
        if not ack or "seq" not in ack:
            obs.problems.append(f"the poison was not stored in TASKS: {ack}")
        await obs.canaries("cb")
        await obs.expect_letter("dlq._invalid.echo", b'"b-utf8"', "invalid_subject")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


async def test_c_bare_header_line_on_gossip_is_dropped_and_counted(fleet: UpFleet) -> None:
    raw = await raw_client(fleet)
    async with Observer(fleet, ("cc",)) as obs:
        before = await obs.worker_metric(BAD_FRAMES)
        try:
            # hdr_len 8: nats-py 2.16 reads past the status line and raises IndexError
            await raw.publish(b"agentbus.gossip.all", b"", header_block=b"NATS/1.0")
            await raw.ping()  # the server has fanned the frame out to every worker
        finally:
            await raw.close()
        await obs.canaries("cc")
        for _ in range(100):  # the counters are read from the workers' /metrics: a bounded poll
            after = await obs.worker_metric(BAD_FRAMES)
            counted = [w for w, n in after.items() if n is not None and n >= (before.get(w) or 0) + 1]
            if len(counted) == len(fleet.ports):
                break
            await asyncio.sleep(0.1)
        else:
            obs.problems.append(f"{BAD_FRAMES} before {before}, after {after}: not counted by every worker")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


# -- (d) (e) (f): must fail before the handler runs -----------------------------------------


async def test_d_2000_deep_json_is_malformed(fleet: UpFleet) -> None:
    deep = b'{"id":"d-deep","payload":{"text":"x","extra":' + b"[" * 2000 + b"]" * 2000 + b"}}"
    async with Observer(fleet, ("pd", "cd")) as obs:
        await obs.nc.jetstream().publish("tasks.pd.echo", deep, headers={"Nats-Msg-Id": "d-deep"})
        await obs.canaries("cd")
        await obs.expect_letter("dlq.pd.echo", b'"d-deep"', "malformed")
        if obs.ok("pd", "d-deep"):
            obs.problems.append("the handler ran the 2,000-deep task")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


async def test_e_id_with_a_space_is_an_invalid_envelope(fleet: UpFleet) -> None:
    async with Observer(fleet, ("pe", "ce")) as obs:
        await obs.nc.jetstream().publish(
            "tasks.pe.echo", envelope("e has space"), headers={"Nats-Msg-Id": "e-space"}
        )
        await obs.canaries("ce")
        await obs.expect_letter("dlq.pe.echo", b'"e has space"', "invalid_envelope")
        if any(r.ok and r.tenant == "pe" for r in obs.results):
            obs.problems.append("the handler ran the task whose id has a space")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


async def test_f_reply_with_a_space_is_an_invalid_envelope(fleet: UpFleet) -> None:
    async with Observer(fleet, ("pf", "cf")) as obs:
        await obs.nc.jetstream().publish(
            "tasks.pf.echo",
            envelope("f-reply"),
            headers={"Nats-Msg-Id": "f-reply", "Agentbus-Reply": "_INBOX.f reply"},
        )
        await obs.canaries("cf")
        await obs.expect_letter("dlq.pf.echo", b'"f-reply"', "invalid_envelope")
        if obs.ok("pf", "f-reply"):
            obs.problems.append("the handler ran the task whose reply subject has a space")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


# -- (g) (h) (i): one tenant against another ------------------------------------------------


async def test_g_forged_max_deliveries_advisory_moves_nothing(fleet: UpFleet) -> None:
    async with Observer(fleet, ("pg", "cg")) as obs:
        js = obs.nc.jetstream()
        await ensure_consumer(js, ConsumerSpec(kind="parked"))  # a kind nobody serves: it stays queued
        pub = Publisher(obs.nc)
        running = await pub.submit("pg", "echo", EchoIn(text="victim", sleep_s=3), task_id="g-running")
        queued = await pub.submit("pg", "parked", {"text": "victim"}, task_id="g-queued")
        for ref in (running, queued):
            advisory = {
                "type": "io.nats.jetstream.advisory.v1.max_deliver",
                "id": f"forged-{ref.seq}",
                "timestamp": "2026-01-01T00:00:00Z",
                "stream": TASKS_STREAM,
                "consumer": "agents-echo",
                "stream_seq": ref.seq,
                "deliveries": 5,
            }
            await obs.nc.publish(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.agents-echo",
                json.dumps(advisory).encode(),
            )
        await obs.nc.flush()
        await obs.canaries("cg")
        if not await obs.wait_ok("pg", "g-running"):
            obs.problems.append("the victim's running task did not complete")
        moved = [(lt.subject, lt.reason, lt.task_id) for lt in await obs.letters("dlq.pg.")]
        if moved:
            obs.problems.append(f"a forged advisory moved the victim's tasks to the DLQ: {moved}")
        try:
            await js.get_msg(TASKS_STREAM, queued.seq)
        except NotFoundError:
            obs.problems.append("the victim's queued task is gone from TASKS")
        else:
            await js.delete_msg(TASKS_STREAM, queued.seq)
        await js.delete_consumer(TASKS_STREAM, "agents-parked")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


async def test_h_same_task_id_of_two_tenants_is_not_a_duplicate(fleet: UpFleet) -> None:
    async with Observer(fleet, ("ph-a", "ph-b", "ch")) as obs:
        pub = Publisher(obs.nc)
        first = await pub.submit("ph-a", "echo", EchoIn(text="A"), task_id="order-42")
        second = await pub.submit("ph-b", "echo", EchoIn(text="B"), task_id="order-42")
        if first.duplicate or second.duplicate:
            obs.problems.append(f"tenant B's order-42 was dropped as a duplicate of tenant A's: {second}")
        await obs.canaries("ch")
        for tenant in ("ph-a", "ph-b"):
            if not await obs.wait_ok(tenant, "order-42", timeout_s=10):
                obs.problems.append(f"{tenant}'s order-42 did not complete")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)


@pytest.mark.parametrize("target", ["dlq", "tasks"])
async def test_i_reply_into_another_tenants_subjects_is_refused(fleet: UpFleet, target: str) -> None:
    other = f"{target}.pi-other.echo"
    canary = f"ci-{target}"
    async with Observer(fleet, ("pi", canary)) as obs:
        leaked: list[str] = []

        async def on_leak(msg: Msg) -> None:
            leaked.append(msg.subject)

        sub = await obs.nc.subscribe(f"{target}.pi-other.>", cb=on_leak)
        await obs.nc.flush()
        task_id = f"i-{target}"
        await obs.nc.jetstream().publish(
            "tasks.pi.echo", envelope(task_id), headers={"Nats-Msg-Id": task_id, "Agentbus-Reply": other}
        )
        await obs.canaries(canary)
        await obs.expect_letter("dlq.pi.echo", f'"{task_id}"'.encode(), "invalid_envelope")
        await obs.nc.flush()
        await sub.unsubscribe()
        if leaked:
            obs.problems.append(f"the worker published on {leaked} because a task asked it to")
        if obs.ok("pi", task_id):
            obs.problems.append("the handler ran the task with a foreign reply subject")
        await obs.check_liveness()
    assert not obs.problems, report(obs, fleet)
