"""``agentbus status``: queue depth per tenant and kind, in-flight, rates, DLQ size, tenant usage.

Queues and consumers come from JetStream. Tenant usage (tasks completed and failed,
LLM tokens) and the live agents come from the shared state: one worker answers
``agentbus.state.query`` with its replica's view, which lags the cluster by at most a
gossip round or two (docs/state.md). No worker running: that part is left out.

Tenants, kinds and ids come from the wire: the table shows them through :func:`safe`,
so rich markup in them is printed as text and control characters are not printed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import defaultdict
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentbus.cli._connection import nats_connection
from bus.connection import connect
from bus.messages import StateQuery, StateReport, encode
from bus.subjects import STATE_QUERY_SUBJECT
from bus.topology import DLQ_STREAM, TASKS_STREAM

__all__ = ["Snapshot", "print_snapshot", "query_state", "register", "safe", "snapshot"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0/C1 controls, and the line separators and bidi overrides that reorder or break a terminal line."""


def safe(text: str) -> str:
    """``text`` from the wire, ready for rich: controls shown as ``?`` and markup escaped."""
    return escape(_CONTROL.sub("?", text))


class KindRow(msgspec.Struct):
    """One kind's consumers (per tenant, or the per-kind one), summed."""

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
    state: StateReport | None = None
    """Tenant usage and live agents from one worker's replica of the shared state (None: no answer)."""


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="queue depth, in-flight, rates, DLQ size, tenant usage"
    )
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
        _, tenant, kind = [*subject.split(".", 2), "?", "?"][:3]  # any subject a client stored
        out[f"{tenant}/{kind}"] += n
    return dict(sorted(out.items()))


async def snapshot(js: JetStreamContext, interval_s: float = 1.0) -> Snapshot:
    """Two samples ``interval_s`` apart; counts from the second, rates from the difference."""
    t0, _, c0 = await _sample(js)
    await asyncio.sleep(interval_s)
    t1, d1, c1 = await _sample(js)
    before = {c.name: c for c in c0}
    rows: dict[str, KindRow] = {}  # a kind's consumers summed: one per tenant (docs/fairness.md)
    for c in sorted(c1, key=lambda c: c.name):
        prev = before.get(c.name)
        delivered = (c.delivered.consumer_seq or 0) - ((prev.delivered.consumer_seq or 0) if prev else 0)
        kind = (c.config.filter_subject or c.name).rsplit(".", 1)[-1]
        row = rows.setdefault(kind, KindRow(kind, 0, 0, 0, 0, 0.0))
        row.queued += c.num_pending or 0
        row.inflight += c.num_ack_pending or 0
        row.redelivered += c.num_redelivered or 0
        row.waiting_pulls += c.num_waiting or 0
        row.delivered_per_s += delivered / interval_s
    published = (t1.state.last_seq - t0.state.last_seq) / interval_s
    removed0 = t0.state.last_seq - t0.state.messages
    removed1 = t1.state.last_seq - t1.state.messages
    return Snapshot(
        queued=_by_tenant_kind(t1.state.subjects),
        dead_letters=_by_tenant_kind(d1.state.subjects),
        kinds=sorted(rows.values(), key=lambda r: r.kind),
        published_per_s=published,
        completed_per_s=(removed1 - removed0) / interval_s,
        tasks_total=t1.state.messages,
        dlq_total=d1.state.messages,
    )


async def query_state(nc: Client, *, timeout_s: float = 2.0, max_tenants: int = 1000) -> StateReport | None:
    """Ask one worker for its view of the shared state; None when no worker answers."""
    try:
        reply = await nc.request(STATE_QUERY_SUBJECT, encode(StateQuery(max_tenants)), timeout=timeout_s)
    except (NoRespondersError, NatsTimeoutError):
        return None
    try:
        return msgspec.json.decode(reply.data, type=StateReport)
    except msgspec.DecodeError:
        return None


def run(args: argparse.Namespace) -> int:
    """Print the snapshot."""
    snap = asyncio.run(_status(args))
    if args.json:
        print(msgspec.json.encode(snap).decode())
        return 0
    print_snapshot(Console(), snap)
    return 0


def print_snapshot(console: Console, snap: Snapshot) -> None:
    """The tables of ``agentbus status``; every name from the wire goes through :func:`safe`."""
    kinds = Table(title="Agent kinds (consumers)")
    for col in ("kind", "queued", "in flight", "redelivered", "waiting pulls", "delivered/s"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for r in snap.kinds:
        kinds.add_row(
            safe(r.kind),
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
        queues.add_row(safe(key), str(snap.queued.get(key, 0)), str(snap.dead_letters.get(key, 0)))
    console.print(queues)
    console.print(
        f"queued {snap.tasks_total}  dlq {snap.dlq_total}  "
        f"published {snap.published_per_s:,.0f}/s  completed {snap.completed_per_s:,.0f}/s"
    )
    _print_state(console, snap.state)


def _print_state(console: Console, state: StateReport | None) -> None:
    if state is None:
        console.print("Tenant usage: no worker answered (none running?)")
        return
    worker = safe(state.worker)
    where = "cluster-wide, from gossip" if state.gossip else f"worker {worker} only: gossip is off"
    usage = Table(title=f"Tenant usage ({where})")
    for col in ("tenant", "tasks completed", "tasks failed", "llm tokens"):
        usage.add_column(col, justify="left" if col == "tenant" else "right")
    for tenant, u in sorted(state.tenants.items()):
        usage.add_row(safe(tenant), f"{u.tasks_completed:,}", f"{u.tasks_failed:,}", f"{u.llm_tokens:,}")
    console.print(usage)
    if state.tenants_total > len(state.tenants):
        console.print(f"({state.tenants_total - len(state.tenants)} quieter tenants not shown)")
    agents = ", ".join(safe(a) for a in state.live_agents) or "-"
    console.print(f"Live agents ({len(state.live_agents)}): {agents}")
    console.print(f"answered by {worker} (replica {safe(state.replica)}, {state.peers} gossip peers)")


async def _status(args: argparse.Namespace) -> Snapshot:
    url, auth = nats_connection(args.nats_url, "operator")
    nc = await connect(url, name="agentbus-status", first_connect_timeout_s=5.0, auth=auth)
    try:
        snap = await snapshot(nc.jetstream(), args.interval_s)
        snap.state = await query_state(nc)
        return snap
    finally:
        await nc.close()
