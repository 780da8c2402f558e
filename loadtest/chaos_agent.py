"""The chaos suite's agent kind ``chaos``: journals every completed run before it returns.

The journal is the history's record of completions: one JSON line per run, appended with
one ``write`` to ``chaos-journal-<pid>.jsonl`` in the worker's working directory (the
runner starts each worker in its run directory). A line written is in the kernel's page
cache, so a ``kill -9`` of the worker right after keeps it; the ack that follows may be
lost, and then the redelivery runs the task again: a duplicate the checker must explain.
"""

from __future__ import annotations

import asyncio
import os
import time

import msgspec

from agents.api import Context, agent

__all__ = ["JOURNAL_GLOB", "ChaosIn", "ChaosOut", "JournalLine", "chaos"]

JOURNAL_GLOB = "chaos-journal-*.jsonl"


class ChaosIn(msgspec.Struct):
    """``poison`` fails on every delivery (it must end in the DLQ); ``work_s`` pretends to work."""

    poison: bool = False
    work_s: float = 0.0


class ChaosOut(msgspec.Struct):
    """The delivery count the run saw."""

    attempt: int


class JournalLine(msgspec.Struct, array_like=True):
    """One completed run: task id, worker pid, delivery count, monotonic start and end, and
    which delivery it was (``Context.delivery``)."""

    task_id: str
    pid: int
    attempt: int
    start: float
    end: float
    delivery: str = ""


_encode = msgspec.json.Encoder().encode
_journal_fd: int | None = None


def _journal() -> int:
    global _journal_fd
    if _journal_fd is None:
        path = f"chaos-journal-{os.getpid()}.jsonl"
        _journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return _journal_fd


@agent(kind="chaos", input=ChaosIn, output=ChaosOut, max_inflight=64, timeout_s=30)
async def chaos(ctx: Context, task: ChaosIn) -> ChaosOut:
    """Run (or fail, for a poison task), then journal the run."""
    start = time.monotonic()
    if task.poison:
        raise RuntimeError("poison: fails on every delivery")
    if task.work_s > 0:
        await asyncio.sleep(task.work_s)
    line = JournalLine(ctx.task_id, os.getpid(), ctx.attempt, start, time.monotonic(), ctx.delivery)
    os.write(_journal(), _encode(line) + b"\n")
    return ChaosOut(attempt=ctx.attempt)
