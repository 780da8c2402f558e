"""``agentbus result``: a task's stored result, from any process, within the results TTL.

    agentbus result 3f2a... --tenant acme --wait --timeout-s 60

Prints the result as one JSON line; exits 1 if there is none (or it is a failure).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from agentbus.cli._connection import nats_connection
from bus.connection import connect
from bus.messages import encode
from bus.publisher import Publisher

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("result", help="print a task's stored result")
    p.add_argument("task_id", help="the task id (printed by `agentbus publish`)")
    p.add_argument("--tenant", default="default", help="the task's tenant (default %(default)s)")
    p.add_argument("--wait", action="store_true", help="wait for a result that is not stored yet")
    p.add_argument("--timeout-s", type=float, default=30.0, help="with --wait (default %(default)s)")
    p.add_argument("--nats-url", help="NATS server (default: $AGENTBUS_NATS_URL or a running `agentbus up`)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the result; 1 if it is a failure."""
    return asyncio.run(_result(args))


async def _result(args: argparse.Namespace) -> int:
    url, auth = nats_connection(args.nats_url, args.tenant)
    nc = await connect(url, name="agentbus-result", first_connect_timeout_s=5.0, auth=auth)
    try:
        wait = args.timeout_s if args.wait else 0.0
        result = await Publisher(nc).result(args.task_id, tenant=args.tenant, timeout_s=wait)
    finally:
        await nc.drain()
    sys.stdout.write(encode(result).decode() + "\n")
    return 0 if result.ok else 1
