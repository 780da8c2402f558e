"""A real ``agentbus up --workers 3`` for the poison suite, and what a case reads back from it.

:class:`~loadtest.fuzz_fleet.UpFleet` (shared with the fleet fuzz) runs the command as
users run it, a subprocess in a temp directory found through its ``.agentbus/up.json``,
and learns its workers' pids from the process tree. :class:`Observer` is one case's view of
the bus: results of the tenants it names (never a subject a poison is sent to), dead
letters read back from stream ``DLQ`` as plain JSON (so a reason this tree does not
know yet still reads), and canary tasks that must all complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from conftest import dlq_messages
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agents.builtin.basic import EchoIn
from bus.connection import connect
from bus.publisher import Publisher, TaskRef, TaskSpec
from loadtest import fuzz_fleet
from loadtest.fuzz_fleet import UpFleet, metric_sum

__all__ = ["Letter", "Observer", "UpFleet", "http_get", "metric_sum", "start_fleet"]

WORKERS = 3
CANARIES = 300
CANARY_BOUND_S = 60.0
"""The contract's generous liveness bound for 300 canaries (a fixed fleet needs a second or two)."""


async def http_get(port: int, path: str) -> tuple[int, str]:
    """``GET http://127.0.0.1:<port><path>`` off the event loop: ``(status, body)``, ``(0, "")`` if down."""
    return await asyncio.to_thread(fuzz_fleet.http_get, port, path)


def start_fleet(workdir: Path, env: dict[str, str]) -> UpFleet:
    """``agentbus up --workers 3`` with the workers' default settings, ready."""
    return UpFleet(workdir, env, workers=WORKERS).start()


class Letter(msgspec.Struct):
    """A dead letter as plain data (the reason as a string: this tree may not know it yet)."""

    subject: str
    reason: str
    task_id: str
    data: bytes
    stream_seq: int
    detail: str = ""


class _LetterBody(msgspec.Struct):
    reason: str
    task_id: str = ""
    data: bytes = b""
    stream_seq: int = 0
    detail: str = ""


_letter = msgspec.json.Decoder(_LetterBody)


class _ResultBody(msgspec.Struct):
    task_id: str
    tenant: str
    ok: bool
    output: Any = None


_result = msgspec.json.Decoder(_ResultBody)


@dataclass
class Observer:
    """One case's connection to the fleet, and what it saw."""

    fleet: UpFleet
    tenants: tuple[str, ...]
    """Tenants whose ``results.<tenant>.*`` this case follows."""
    nc: Client = field(init=False)
    results: list[_ResultBody] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Every broken promise of the case; the test asserts this is empty, so one run names them all."""
    _subs: list[Subscription] = field(default_factory=list)
    _pids: dict[str, int] = field(default_factory=dict)

    async def __aenter__(self) -> Observer:
        self.nc = await connect(self.fleet.url, name="chaos-observer")
        for tenant in self.tenants:
            self._subs.append(await self.nc.subscribe(f"results.{tenant}.*", cb=self._on_result))
        await self.nc.flush()
        self._pids = self.fleet.pids()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.nc.close()

    async def _on_result(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            self.results.append(_result.decode(msg.data))

    def ok(self, tenant: str, task_id: str) -> bool:
        """A successful result of ``task_id`` of ``tenant`` arrived."""
        return any(r.ok and r.tenant == tenant and r.task_id == task_id for r in self.results)

    async def wait_ok(self, tenant: str, task_id: str, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.ok(tenant, task_id):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def letters(self, subject_prefix: str = "dlq.") -> list[Letter]:
        """Dead letters stored under ``subject_prefix`` (stream ``DLQ``, in order)."""
        out: list[Letter] = []
        for subject, data in await dlq_messages(self.nc.jetstream()):
            if not subject.startswith(subject_prefix):
                continue
            try:
                body = _letter.decode(data)
            except msgspec.DecodeError:
                out.append(Letter(subject, "<not a DeadLetter>", "", data, 0))
                continue
            out.append(Letter(subject, body.reason, body.task_id, body.data, body.stream_seq, body.detail))
        return out

    async def wait_letter(self, subject_prefix: str, marker: bytes, timeout_s: float = 30.0) -> Letter | None:
        """The first dead letter under ``subject_prefix`` whose original bytes contain ``marker``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for letter in await self.letters(subject_prefix):
                if marker in letter.data:
                    return letter
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.1)

    async def expect_letter(self, subject: str, marker: bytes, reason: str, timeout_s: float = 30.0) -> None:
        """A dead letter on exactly ``subject`` with ``reason`` holds the bytes ``marker``."""
        letter = await self.wait_letter(subject, marker, timeout_s)
        if letter is None:
            found = [(lt.subject, lt.reason, lt.task_id[:40]) for lt in await self.letters()]
            self.problems.append(f"no dead letter on {subject} within {timeout_s:g}s (DLQ: {found[:10]})")
        elif letter.subject != subject or letter.reason != reason:
            self.problems.append(f"dead letter {letter.subject} {letter.reason!r}, want {subject} {reason!r}")

    async def canaries(self, tenant: str, n: int = CANARIES, timeout_s: float = CANARY_BOUND_S) -> None:
        """``n`` ordinary echo tasks of ``tenant`` must all complete within ``timeout_s``."""
        pub = Publisher(self.nc)
        ids = [f"{tenant}-{i}" for i in range(n)]  # unique across cases: no dedupe window in play
        specs = [TaskSpec(tenant, "echo", EchoIn(text=i), task_id=i) for i in ids]
        refs = await asyncio.wait_for(pub.submit_many(specs, return_exceptions=True), 30)
        stored = {r.task_id for r in refs if isinstance(r, TaskRef) and not r.duplicate}
        if len(stored) != n:
            self.problems.append(f"only {len(stored)} of {n} canaries were stored: {refs[:3]}")
        deadline = time.monotonic() + timeout_s
        done: set[str] = set()
        while time.monotonic() < deadline:
            done = {r.task_id for r in self.results if r.ok and r.tenant == tenant}
            if done >= stored:
                break
            await asyncio.sleep(0.1)
        else:
            self.problems.append(
                f"{len(done & stored)} of {n} canaries of {tenant} completed in {timeout_s:g}s"
            )

    async def check_liveness(self) -> None:
        """Same worker pids as when the case began; every /healthz and /readyz answers 200."""
        pids = self.fleet.pids()
        if pids != self._pids:
            self.problems.append(f"worker processes changed (restarted?): {self._pids} -> {pids}")
        for name, port in self.fleet.ports.items():
            for path in ("/healthz", "/readyz"):
                status, body = await http_get(port, path)
                if status != 200:
                    self.problems.append(f"{name} {path} answered {status}: {body[:200]}")

    async def worker_metric(self, name: str) -> dict[str, float | None]:
        """``name`` (summed over labels) from each worker's /metrics."""
        out: dict[str, float | None] = {}
        for worker, port in self.fleet.ports.items():
            status, body = await http_get(port, "/metrics")
            out[worker] = metric_sum(body, name) if status == 200 else None
        return out
