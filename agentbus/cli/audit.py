"""``agentbus audit``: a task's decision record (stream ``AUDIT``), one JSON line per attempt.

    agentbus audit 3f2a... --tenant acme

Each line: attempt, worker, fate, the brain's decisions and the tool calls with their
arguments and results, tokens. Exits 1 if the task has no audit record.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from agentbus.cli._connection import nats_connection
from agentbus.errors import RecordNotFoundError
from bus.connection import connect
from bus.messages import encode
from bus.records import audit_records

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("audit", help="print a task's decision audit record")
    p.add_argument("task_id", help="the task id")
    p.add_argument("--tenant", default="default", help="the task's tenant (default %(default)s)")
    p.add_argument("--nats-url", help="NATS server (default: $AGENTBUS_NATS_URL or a running `agentbus up`)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print every stored attempt of the task."""
    return asyncio.run(_audit(args))


async def _audit(args: argparse.Namespace) -> int:
    url, auth = nats_connection(args.nats_url, "operator")
    nc = await connect(url, name="agentbus-audit", first_connect_timeout_s=5.0, auth=auth)
    try:
        records = await audit_records(nc.jetstream(), args.tenant, args.task_id)
    finally:
        await nc.drain()
    if not records:
        raise RecordNotFoundError(f"no audit record for task {args.task_id} of tenant {args.tenant}")
    for record in records:
        sys.stdout.write(encode(record).decode() + "\n")
    return 0
