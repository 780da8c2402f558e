"""``agentbus status``: queue depth per tenant and kind, in-flight, rates and DLQ size, as a table."""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from typing import Any

import msgspec
from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table

from agents.config import resolve_nats_url
from bus.connection import connect
from bus.topology import DLQ_STREAM, TASKS_STREAM

__all__ = ["Snapshot", "register", "snapshot"]


class KindRow(msgspec.Struct):
    """One kind's consumer."""

    kind: str
    queued: int
    inflight: int
    redelivered: int
    waiting_pulls: int
    delivered_per_s: float


class Snapshot(msgspec.Struct):
    """What ``status`` shows; ``--json`` prints it as is."""

    queued: dict[str, int]
    """Queued tasks by ``tenant/kind``."""
    dead_letters: dict[str, int]
    """DLQ entries by ``tenant/kind``."""
    kinds: list[KindRow]
    published_per_s: float
    completed_per_s: float
    tasks_total: int
    dlq_total: int


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("status", help="queue depth, in-flight, rates, DLQ size")
    p.add_argument("--nats-url", help="NATS server (default: $AGENTBUS_NATS_URL or a running `agentbus up`)")
    p.add_argument("--interval-s", type=float, default=1.0, help="sampling interval for rates")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


async def _sample(js: JetStreamContext) -> tuple[Any, Any, list[Any]]:
    tasks = await js.stream_info(TASKS_STREAM, subjects_filter="tasks.>")
    dlq = await js.stream_info(DLQ_STREAM, subjects_filter="dlq.>")
    consumers = await js.consumers_info(TASKS_STREAM)
    return tasks, dlq, consumers


def _by_tenant_kind(subjects: dict[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for subject, n in (subjects or {}).items():
        _, tenant, kind = subject.split(".", 2)
        out[f"{tenant}/{kind}"] += n
    return dict(sorted(out.items()))


async def snapshot(js: JetStreamContext, interval_s: float = 1.0) -> Snapshot:
    """Two samples ``interval_s`` apart; counts from the second, rates from the difference."""
    t0, _, c0 = await _sample(js)
    await asyncio.sleep(interval_s)
    t1, d1, c1 = await _sample(js)
    before = {c.name: c for c in c0}
    rows = []
    for c in sorted(c1, key=lambda c: c.name):
        prev = before.get(c.name)
        delivered = (c.delivered.consumer_seq or 0) - ((prev.delivered.consumer_seq or 0) if prev else 0)
        rows.append(
            KindRow(
                kind=(c.config.filter_subject or c.name).rsplit(".", 1)[-1],
                queued=c.num_pending or 0,
                inflight=c.num_ack_pending or 0,
                redelivered=c.num_redelivered or 0,
                waiting_pulls=c.num_waiting or 0,
                delivered_per_s=delivered / interval_s,
            )
        )
    published = (t1.state.last_seq - t0.state.last_seq) / interval_s
    removed0 = t0.state.last_seq - t0.state.messages
    removed1 = t1.state.last_seq - t1.state.messages
    return Snapshot(
        queued=_by_tenant_kind(t1.state.subjects),
        dead_letters=_by_tenant_kind(d1.state.subjects),
        kinds=rows,
        published_per_s=published,
        completed_per_s=(removed1 - removed0) / interval_s,
        tasks_total=t1.state.messages,
        dlq_total=d1.state.messages,
    )


def run(args: argparse.Namespace) -> int:
    """Print the snapshot."""
    snap = asyncio.run(_status(args))
    if args.json:
        print(msgspec.json.encode(snap).decode())
        return 0
    console = Console()
    kinds = Table(title="Agent kinds (consumers)")
    for col in ("kind", "queued", "in flight", "redelivered", "waiting pulls", "delivered/s"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for r in snap.kinds:
        kinds.add_row(
            r.kind,
            str(r.queued),
            str(r.inflight),
            str(r.redelivered),
            str(r.waiting_pulls),
            f"{r.delivered_per_s:,.0f}",
        )
    console.print(kinds)
    queues = Table(title="Queue depth and dead letters by tenant/kind")
    for col in ("tenant/kind", "queued", "dead letters"):
        queues.add_column(col, justify="left" if col == "tenant/kind" else "right")
    for key in sorted(set(snap.queued) | set(snap.dead_letters)):
        queues.add_row(key, str(snap.queued.get(key, 0)), str(snap.dead_letters.get(key, 0)))
    console.print(queues)
    console.print(
        f"queued {snap.tasks_total}  dlq {snap.dlq_total}  "
        f"published {snap.published_per_s:,.0f}/s  completed {snap.completed_per_s:,.0f}/s"
    )
    return 0


async def _status(args: argparse.Namespace) -> Snapshot:
    nc = await connect(resolve_nats_url(args.nats_url), name="agentbus-status", first_connect_timeout_s=5.0)
    try:
        return await snapshot(nc.jetstream(), args.interval_s)
    finally:
        await nc.close()
