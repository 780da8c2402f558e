"""``agentbus dlq ls | show | replay | purge``: the dead-letter queue, for operators.

    agentbus dlq ls --tenant acme --reason invalid_payload --older-than-s 60
    agentbus dlq show 42
    agentbus dlq replay 42            # once: a second replay of 42 is refused
    agentbus dlq replay --all --tenant acme --reason invalid_payload
    agentbus dlq purge --kind echo --yes

Every line printed is JSON. Needs operator NATS credentials (it reads every tenant's dead
letters and publishes to any tenant's task subject). ``replay`` republishes the original
bytes as a new attempt lineage (header ``Agentbus-Replay-Of: DLQ:<seq>``), see ``bus.redrive``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError

from agentbus.cli._connection import nats_connection
from agentbus.errors import AgentbusError, BusError, UsageError
from bus.connection import connect
from bus.messages import now
from bus.redrive import DlqFilter, Redrive, StoredLetter

__all__ = ["register"]

_encoder = msgspec.json.Encoder()


def register(sub: Any) -> None:
    """Add the subcommand and its actions."""
    p: argparse.ArgumentParser = sub.add_parser("dlq", help="list, show, replay or purge dead letters")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="list dead letters (one JSON line each)")
    show = actions.add_parser("show", help="one dead letter in full, its task bytes included")
    show.add_argument("seq", type=int, help="DLQ sequence (from `dlq ls`)")
    replay = actions.add_parser("replay", help="republish dead letters' tasks, each at most once")
    replay.add_argument("seq", type=int, nargs="*", help="DLQ sequences")
    replay.add_argument("--all", action="store_true", help="every dead letter the filters select")
    purge = actions.add_parser("purge", help="delete the dead letters the filters select")
    purge.add_argument("--yes", action="store_true", help="really delete (else: count only)")
    for q in (ls, replay, purge):
        q.add_argument("--tenant", help="only this tenant")
        q.add_argument("--kind", help="only this kind")
        q.add_argument("--reason", help="only this reason (invalid_payload, rejected, ...)")
        q.add_argument("--older-than-s", type=float, help="only letters stored at least this long ago")
        q.add_argument("--newer-than-s", type=float, help="only letters stored at most this long ago")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default %(default)s)")
    for q in (ls, show, replay, purge):
        q.add_argument(
            "--nats-url", help="NATS server (default: $AGENTBUS_NATS_URL or a running `agentbus up`)"
        )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the action; 1 if any replay was refused or failed."""
    return asyncio.run(_dlq(args))


def _filter(args: argparse.Namespace) -> DlqFilter:
    return DlqFilter(
        tenant=args.tenant,
        kind=args.kind,
        reason=args.reason,
        older_than_s=args.older_than_s,
        newer_than_s=args.newer_than_s,
    )


def _row(stored: StoredLetter, *, full: bool = False) -> dict[str, Any]:
    letter = stored.letter
    row: dict[str, Any] = {
        "seq": stored.seq,
        "tenant": letter.tenant,
        "kind": letter.kind,
        "reason": str(letter.reason),
        "task_id": letter.task_id,
        "attempts": letter.attempts,
        "age_s": round(max(0.0, now() - stored.stored_at), 3),
        "worker": letter.worker,
        "detail": letter.detail,
    }
    if full:
        row["data"] = letter.data.decode(errors="replace")
        row["data_truncated"] = letter.data_truncated
        row["stream_seq"] = letter.stream_seq
    return row


def _print(row: dict[str, Any]) -> None:
    sys.stdout.write(_encoder.encode(row).decode() + "\n")


async def _dlq(args: argparse.Namespace) -> int:
    url, auth = nats_connection(args.nats_url, "operator")
    nc = await connect(url, name="agentbus-dlq", first_connect_timeout_s=5.0, auth=auth)
    try:
        return await _action(Redrive(nc), args)
    except NatsTimeoutError:  # nats-server drops a request the identity may not make
        raise BusError(
            "no answer from NATS: the DLQ needs the operator credential (docs/security.md), "
            "or the server is busy"
        ) from None
    finally:
        await nc.drain()


async def _action(redrive: Redrive, args: argparse.Namespace) -> int:
    if args.action == "ls":
        async for stored in redrive.letters(_filter(args), limit=args.limit):
            _print(_row(stored))
        return 0
    if args.action == "show":
        _print(_row(await redrive.show(args.seq), full=True))
        return 0
    if args.action == "purge":
        if not args.yes:
            count = len([s async for s in redrive.letters(_filter(args), limit=None)])
            _print({"would_delete": count, "hint": "add --yes to delete"})
            return 0
        _print({"deleted": await redrive.purge(_filter(args))})
        return 0
    return await _replay(redrive, args)


async def _replay(redrive: Redrive, args: argparse.Namespace) -> int:
    if bool(args.seq) == bool(args.all):
        raise UsageError("dlq replay: give DLQ sequences or --all (with filters), not both")
    seqs = list(args.seq) or [s.seq async for s in redrive.letters(_filter(args), limit=None)]
    failed = 0
    for seq in seqs:
        try:
            ref = await redrive.replay(seq)
        except AgentbusError as exc:
            failed += 1
            _print({"seq": seq, "error": str(exc), "type": type(exc).__name__})
            continue
        _print({"seq": seq, "task_id": ref.task_id, "subject": ref.subject, "task_seq": ref.seq})
    return 1 if failed else 0
