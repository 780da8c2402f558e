"""``agentbus publish``: tasks from arguments or JSON lines on stdin, optionally waiting for results.

    agentbus publish echo '{"text": "hi"}' --tenant acme --wait
    printf '%s\\n' '{"tenant": "acme", "kind": "echo", "payload": {"text": "a"}}' | agentbus publish -

Prints one JSON line per task: the stored reference, or the result with ``--wait``.
Exits 1 if any task was refused or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import msgspec

from agentbus.cli._connection import nats_connection
from agentbus.errors import AgentbusError, UsageError
from bus.connection import connect
from bus.messages import DoneEvent, stream_event_decoder
from bus.publisher import Publisher, TaskRef, new_task_id
from bus.subjects import stream_subject

__all__ = ["register"]


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    payload: Any
    tenant: str | None = None
    kind: str | None = None
    id: str | None = None
    deadline: float | None = None


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("publish", help="publish tasks (arguments or JSON lines)")
    p.add_argument("kind", help="agent kind, or '-' to read JSON lines from stdin")
    p.add_argument("payload", nargs="?", default="{}", help="task payload as JSON (default {})")
    p.add_argument("--tenant", default="default", help="tenant (default %(default)s)")
    p.add_argument("--id", dest="task_id", help="task id (default: random); reuse it to deduplicate")
    p.add_argument("--count", type=int, default=1, help="publish the payload N times (default 1)")
    p.add_argument("--wait", action="store_true", help="wait for each task's result and print it")
    p.add_argument(
        "--stream",
        action="store_true",
        help="with --wait: ask for each task's stream events and print them live, then the result",
    )
    p.add_argument("--timeout-s", type=float, default=30.0, help="result wait (default %(default)s)")
    p.add_argument("--nats-url", help="NATS server (default: $AGENTBUS_NATS_URL or a running `agentbus up`)")
    p.set_defaults(run=run)


def _tasks(args: argparse.Namespace) -> Iterator[_Line]:
    if args.kind == "-":
        decoder = msgspec.json.Decoder(_Line)
        for n, raw in enumerate(sys.stdin, 1):
            if raw.strip():
                try:
                    yield decoder.decode(raw)
                except msgspec.DecodeError as exc:
                    raise UsageError(f"stdin line {n}: {exc}") from exc
        return
    try:
        payload = msgspec.json.decode(args.payload)
    except msgspec.DecodeError as exc:
        raise UsageError(f"payload is not JSON: {exc}") from exc
    for i in range(args.count):
        task_id = args.task_id if args.count == 1 else (f"{args.task_id}-{i}" if args.task_id else None)
        yield _Line(payload=payload, id=task_id)


def run(args: argparse.Namespace) -> int:
    """Publish, print one JSON line per task, exit 1 on any failure."""
    if args.stream and not args.wait:
        raise UsageError("--stream needs --wait (the events are printed while waiting for the result)")
    return asyncio.run(_publish(args))


async def _publish(args: argparse.Namespace) -> int:
    url, auth = nats_connection(args.nats_url, args.tenant)
    nc = await connect(url, name="agentbus-publish", first_connect_timeout_s=5.0, auth=auth)
    failed = 0
    out = sys.stdout
    enc = msgspec.json.Encoder()
    followed: dict[int, _Follower] = {}
    try:
        pub = Publisher(nc)
        pending: list[asyncio.Future[TaskRef] | asyncio.Task[Any]] = []
        for line in _tasks(args):
            tenant = line.tenant or args.tenant
            kind = line.kind or args.kind
            if args.wait and args.stream:  # subscribe before publishing: core NATS keeps nothing
                line.id = line.id or new_task_id()
                followed[len(pending)] = await _Follower.start(nc, tenant, line.id, out)
            if args.wait:
                call = pub.call(
                    tenant,
                    kind,
                    line.payload,
                    timeout_s=args.timeout_s,
                    task_id=line.id,
                    deadline=line.deadline,
                    stream=args.stream,
                )
                pending.append(asyncio.ensure_future(call))
            else:
                pending.append(
                    await pub.submit_nowait(
                        tenant, kind, line.payload, task_id=line.id, deadline=line.deadline
                    )
                )
        for n, fut in enumerate(pending):
            try:
                res = await fut
            except AgentbusError as exc:
                failed += 1
                out.write(enc.encode({"error": str(exc), "type": type(exc).__name__}).decode() + "\n")
                continue
            if isinstance(res, TaskRef):
                row: Any = {
                    "task_id": res.task_id,
                    "subject": res.subject,
                    "seq": res.seq,
                    "duplicate": res.duplicate,
                }
            else:
                row = res
                failed += 0 if res.ok else 1
                if n in followed:
                    await followed[n].finish()
            out.write(enc.encode(row).decode() + "\n")
        out.flush()
    finally:
        await nc.drain()
    return 1 if failed else 0


class _Follower:
    """Prints one task's stream events as they arrive (``--stream``)."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._sub: Any = None
        self._ended = asyncio.Event()  # set while the last event seen is a ``done``

    @classmethod
    async def start(cls, nc: Any, tenant: str, task_id: str, out: Any) -> _Follower:
        follower = cls(out)
        follower._sub = await nc.subscribe(stream_subject(tenant, task_id), cb=follower._on_event)
        return follower

    async def _on_event(self, msg: Any) -> None:
        self._out.write(msg.data.decode(errors="replace") + "\n")
        self._out.flush()
        try:
            done = isinstance(stream_event_decoder.decode(msg.data), DoneEvent)
        except msgspec.DecodeError:
            done = False
        self._ended.set() if done else self._ended.clear()

    async def finish(self) -> None:
        """After the result: let the events still in flight print (briefly), then stop listening."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), 2.0)
        await self._sub.unsubscribe()
