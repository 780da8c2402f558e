"""DLQ redrive: a dead letter is listed, shown, replayed once after the agent is fixed, purged."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
from collections import Counter

import msgspec
import pytest
from conftest import ROOT
from helpers_a import dead_letters, poll
from nats.aio.client import Client

from agentbus.cli import main
from agentbus.errors import AlreadyReplayedError, InvalidSubjectError, PublishError, RecordNotFoundError
from agents import Context, Registry, agent
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.messages import HDR_REPLAY_OF
from bus.publisher import Publisher
from bus.redrive import DlqFilter, Redrive
from bus.topology import DLQ_STREAM

pytestmark = pytest.mark.integration


class StrictIn(msgspec.Struct):
    n: int


class LenientIn(msgspec.Struct):
    n: int | str


class Out(msgspec.Struct):
    n: str


def _console(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``agentbus dlq ...`` as a user runs it: the console script in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agentbus", "dlq", *args, "--nats-url", nats_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _main(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command line through ``agentbus.cli.main`` in this process (a thread: its own loop)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["dlq", *args, "--nats-url", nats_url])
    return subprocess.CompletedProcess(args, code, out.getvalue(), "")


async def _cli(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_main, nats_url, *args)


async def test_replay_after_the_fix_runs_once_and_a_second_replay_is_refused(
    nc: Client, nats_url: str
) -> None:
    async def strict(ctx: Context, task: StrictIn) -> Out:
        return Out(n=str(task.n))

    runs: Counter[str] = Counter()
    lineage: list[str | None] = []

    async def lenient(ctx: Context, task: LenientIn) -> Out:
        runs[ctx.task_id] += 1
        lineage.append((ctx._headers or {}).get(HDR_REPLAY_OF))
        return Out(n=str(task.n))

    broken = agent(kind="count", input=StrictIn, output=Out, timeout_s=10)(strict)
    fixed = agent(kind="count", input=LenientIn, output=Out, timeout_s=10)(lenient)
    pub = Publisher(nc)
    ref = await pub.submit("acme", "count", {"n": "seven"})
    await pub.submit("other", "count", {"n": 1})  # runs fine: no dead letter

    cfg = WorkerConfig(nats_url=nats_url, http_port=-1, worker_id="w-broken")
    worker = Worker(cfg, Registry([broken]))
    await worker.start()
    try:
        await poll(lambda: _has_letters(nc), timeout_s=20, what="the dead letter")
    finally:
        await worker.stop()
    failed = await pub.result(ref.task_id, tenant="acme")
    assert not failed.ok
    assert (failed.error or "").startswith("invalid_payload")

    listed = await asyncio.to_thread(
        _console, nats_url, "ls", "--reason", "invalid_payload", "--tenant", "acme"
    )
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["tenant"], r["task_id"], r["reason"]) for r in rows] == [
        ("acme", ref.task_id, "invalid_payload")
    ]
    seq = rows[0]["seq"]
    assert (await _cli(nats_url, "ls", "--reason", "rejected")).stdout == ""
    assert (await _cli(nats_url, "ls", "--older-than-s", "3600")).stdout == ""
    shown = json.loads((await _cli(nats_url, "show", str(seq))).stdout)
    assert json.loads(shown["data"])["payload"] == {"n": "seven"}

    worker = Worker(cfg.with_(worker_id="w-fixed"), Registry([fixed]))
    await worker.start()
    try:
        first = await asyncio.to_thread(_console, nats_url, "replay", str(seq))
        assert first.returncode == 0, first.stderr
        await poll(lambda: runs[ref.task_id] == 1, timeout_s=20, what="the replayed task to run")
        second = await _cli(nats_url, "replay", str(seq))
        assert second.returncode == 1
        assert "AlreadyReplayedError" in second.stdout
        with pytest.raises(AlreadyReplayedError):
            await Redrive(nc).replay(seq)
        result = await pub.result(ref.task_id, tenant="acme", timeout_s=20)
        assert result.ok  # the stored result is now the replay's
        await asyncio.sleep(1.0)  # room for a wrongly republished task to run
    finally:
        await worker.stop()
    assert runs == {ref.task_id: 1}
    assert lineage == [f"{DLQ_STREAM}:{seq}"]


async def _has_letters(nc: Client) -> bool:
    return bool(await dead_letters(nc))


async def test_purge_by_filters_and_hostile_filters(nc: Client) -> None:
    from bus.dlq import DeadLetterQueue
    from bus.messages import DeadLetter, DlqReason

    dlq = DeadLetterQueue(nc, worker="t")
    for n, (tenant, reason) in enumerate(
        [("acme", DlqReason.REJECTED), ("acme", DlqReason.INVALID_PAYLOAD), ("beta", DlqReason.REJECTED)]
    ):
        await dlq.store(
            DeadLetter(reason=reason, detail="x", tenant=tenant, kind="k", task_id=f"t{n}", data=b"{}")
        )
    await nc.publish("dlq.acme.k", b"not a dead letter")  # junk on the subject is skipped, not fatal
    await nc.flush()
    redrive = Redrive(nc)
    listed = [s.letter.task_id async for s in redrive.letters(DlqFilter(tenant="acme"))]
    assert listed == ["t0", "t1"]
    assert await redrive.purge(DlqFilter(reason="rejected")) == 2
    left = [s.letter.task_id async for s in redrive.letters()]
    assert left == ["t1"]
    with pytest.raises(RecordNotFoundError):
        await redrive.show(10_000)
    for bad in ("a.*", ">", "a b"):
        with pytest.raises(InvalidSubjectError):
            DlqFilter(tenant=bad)
    assert await redrive.purge(DlqFilter(tenant="acme")) == 2  # the letter and the junk


async def test_a_letter_forged_onto_another_tenants_subject_is_not_replayed(nc: Client) -> None:
    from bus.messages import DeadLetter, DlqReason, encode

    forged = DeadLetter(
        reason=DlqReason.REJECTED, detail="x", tenant="beta", kind="k", task_id="t", data=b"{}"
    )
    ack = await nc.jetstream().publish("dlq.acme.k", encode(forged))
    with pytest.raises(PublishError, match="another tenant"):
        await Redrive(nc).replay(ack.seq)
    info = await nc.jetstream().stream_info("TASKS")
    assert info.state.messages == 0
