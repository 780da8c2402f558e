"""Effects once: a counting tool's side effects equal the number of tasks exactly, with a fifth
of the worker's acks lost on the wire and a worker killed (SIGKILL) in the middle of a run.

Workers are real ``agentbus worker`` processes reaching nats-server through
:class:`~ack_proxy.AckDropProxy`. The handler appends one line per effect (inside
``ctx.once``) and one per run to files, so the test sees both: runs exceed tasks (lost acks
and the kill redeliver), effects do not. The kill comes when every task in the first
worker has its effect recorded (read from the ledger) and sleeps: a kill between an effect
and its record is the one window no ledger closes alone (``bus.ledger``).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from ack_proxy import AckDropProxy
from conftest import ROOT, WorkerProcess
from helpers_a import consumer_totals, poll
from nats.aio.client import Client

from bus.embedded import EmbeddedNats
from bus.publisher import Publisher, TaskSpec
from bus.records import ONCE_BUCKET, RESULTS_STREAM

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TASKS = 40
FIRST = 8  # the first worker's slots: all of them are killed mid-run

AGENT = """
import asyncio, os
import msgspec
from agents import Context, agent

class CountIn(msgspec.Struct):
    n: int
    hold_s: float = 0.0

class CountOut(msgspec.Struct):
    n: int

def _line(var: str, text: str) -> None:
    with open(os.environ[var], "a") as f:
        f.write(text + "\\n")

@agent(kind="count", input=CountIn, output=CountOut, max_inflight=8, timeout_s=60)
async def count(ctx: Context, task: CountIn) -> CountOut:
    _line("RECORDS_RUNS_FILE", ctx.task_id)

    async def effect() -> int:
        _line("RECORDS_EFFECTS_FILE", ctx.task_id)
        return task.n

    await ctx.once("count", effect)
    if ctx.attempt == 1:
        await asyncio.sleep(task.hold_s)
    return CountOut(n=task.n)
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def test_counting_effects_equal_tasks_with_lost_acks_and_a_killed_worker(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    (tmp_path / "count_agents.py").write_text(AGENT)
    runs, effects = tmp_path / "runs.txt", tmp_path / "effects.txt"
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
        "RECORDS_RUNS_FILE": str(runs),
        "RECORDS_EFFECTS_FILE": str(effects),
    }
    proxy = await AckDropProxy(nats_server.port, share=0.2).start()
    args = ("--agents", "count_agents", "--ack-wait-s", "2", "--retry-base-s", "0.05", "--no-gossip")
    workers: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        worker = WorkerProcess(proxy.url, tmp_path, name, *args, env=env)
        workers.append(worker)
        return worker.wait_ready()

    try:
        first = await asyncio.to_thread(start, "w1")
        pub = Publisher(nc)
        held = [TaskSpec("acme", "count", {"n": n, "hold_s": 60.0}, task_id=f"t{n}") for n in range(FIRST)]
        await pub.submit_many(held)
        ledger = await nc.jetstream().key_value(ONCE_BUCKET)

        async def recorded() -> bool:
            for n in range(FIRST):
                try:
                    entry = await ledger.get(f"acme.t{n}.count")
                except Exception:
                    return False
                if b'"done"' not in (entry.value or b""):
                    return False
            return True

        await poll(recorded, timeout_s=60, what="every held task's effect recorded")
        first.proc.send_signal(signal.SIGKILL)  # mid-run: all of them are sleeping after their effect
        await asyncio.to_thread(first.proc.wait, 30)
        await asyncio.to_thread(start, "w2")
        rest = [TaskSpec("acme", "count", {"n": n}, task_id=f"t{n}") for n in range(FIRST, TASKS)]
        await pub.submit_many(rest)
        js = nc.jetstream()

        async def all_done() -> bool:
            stored = (await js.stream_info(RESULTS_STREAM)).state.messages
            info = await consumer_totals(nc, "count")  # acme's consumer of count (docs/fairness.md)
            return stored == TASKS and info.num_pending == 0 and info.num_ack_pending == 0

        await poll(all_done, timeout_s=120, what="every task acked")
    finally:
        for worker in workers:
            await asyncio.to_thread(worker.stop)
        await proxy.close()
    assert proxy.dropped > 0
    counted: Counter[str] = Counter(_lines(effects))
    assert sorted(counted) == sorted(f"t{n}" for n in range(TASKS))
    assert set(counted.values()) == {1}  # each task's effect exactly once
    assert len(_lines(runs)) > TASKS  # while tasks did run again (lost acks, the kill)
