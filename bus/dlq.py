"""The dead-letter queue: NATS has none of its own, so this one is part of the product.

A task that will not be processed is copied to ``dlq.<tenant>.<kind>`` (stream
``DLQ``) as a :class:`~bus.messages.DeadLetter` with a typed reason *before* the
original is terminated: if the copy cannot be stored, the original is kept and
retried later, so nothing acknowledged is ever lost. The copy's ``Nats-Msg-Id``
is derived from the original's stream sequence, so two replicas (or a retry)
dead-lettering the same message store it once.

A task whose last delivery died with its worker (kill -9, OOM) needs no path of its own:
the consumers deliver without limit and the worker dead-letters a delivery past its
``max_deliver`` without running it (``agents._runner``). No ``MAX_DELIVERIES`` advisory is
followed any more: any client could publish one and move another tenant's queued task.

:meth:`DeadLetterQueue.sweep_unrouted` moves tasks whose kind has no consumer at all
(``unknown_kind``) once they are older than a grace period, so a typo in a kind is reported
instead of silently filling the stream (a subject whose tokens are not valid is moved as
``invalid_subject`` to ``dlq._invalid.<kind>``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus.admission import task_id_of
from bus.consumer import AckKind, ack
from bus.messages import DLQ_MAX_DATA_BYTES, HDR_MSG_ID, DeadLetter, DlqReason, encode, now
from bus.subjects import (
    INVALID_TOKEN,
    TASKS_PREFIX,
    dlq_subject,
    shown,
    split_task_subject,
    subject_problem,
)
from bus.topology import DLQ_STREAM, TASKS_STREAM

__all__ = ["DeadLetterQueue"]

log = logging.getLogger("agentbus.dlq")

_SWEEP_SKIPS = 1000


def _or_any(token: str) -> str:
    """A subject filter token: itself, or ``*`` for one that is not valid (it cannot be matched)."""
    return "*" if token == INVALID_TOKEN else token


class DeadLetterQueue:
    """Stores dead letters durably, then terminates the originals."""

    def __init__(self, nc: Client, *, worker: str = "", publish_timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._worker = worker
        self._timeout_s = publish_timeout_s

    async def store(self, letter: DeadLetter) -> None:
        """Store ``letter`` in the DLQ stream (idempotent per original stream sequence)."""
        letter.worker = letter.worker or self._worker
        letter.failed_at = letter.failed_at or now()
        msg_id = f"dlq-{TASKS_STREAM}-{letter.stream_seq}" if letter.stream_seq else ""
        headers = {HDR_MSG_ID: msg_id} if msg_id else None
        await self._js.publish(
            dlq_subject(letter.tenant, letter.kind),
            encode(letter),
            timeout=self._timeout_s,
            stream=DLQ_STREAM,
            headers=headers,
        )

    async def dead_letter(self, msg: Msg, letter: DeadLetter) -> None:
        """Store ``letter``, then terminate ``msg``; raises (and keeps ``msg``) if storing fails."""
        await self.store(letter)
        await ack(self._nc, msg, AckKind.TERM)

    async def _move(self, seq: int, reason: DlqReason, detail: str, attempts: int) -> bool:
        """Copy stream message ``seq`` of TASKS to the DLQ and delete it; False if it is gone."""
        try:
            raw = await self._js.get_msg(TASKS_STREAM, seq)
        except NotFoundError:
            return False
        subject = raw.subject or ""
        tenant, kind = split_task_subject(subject)  # invalid tokens read as _invalid
        if problem := subject_problem(subject):
            reason, detail = DlqReason.INVALID_SUBJECT, problem
        task_id = task_id_of((raw.headers or {}).get(HDR_MSG_ID), tenant, kind)
        data = raw.data or b""
        letter = DeadLetter(
            reason=reason,
            detail=detail,
            tenant=tenant,
            kind=kind,
            task_id=task_id,
            attempts=attempts,
            stream_seq=seq,
            data=data[:DLQ_MAX_DATA_BYTES],  # a whole 1 MiB task would not fit in a dead letter
            data_truncated=len(data) > DLQ_MAX_DATA_BYTES,
        )
        try:
            await self.store(letter)
            await self._js.delete_msg(TASKS_STREAM, seq)
        except NotFoundError:
            return False
        except Exception as exc:  # keep the task; the next sweep tries again
            log.warning("could not dead-letter seq %d: %s", seq, exc)
            return False
        log.info("dead-lettered seq %d (%s): %s", seq, reason, detail)
        return True

    async def sweep_unrouted(self, served_kinds: set[str], *, grace_s: float = 60.0) -> int:
        """Move tasks of kinds no consumer serves, older than ``grace_s``; returns how many moved.

        A subject with an invalid token (invalid UTF-8 reads as U+FFFD, which no filter matches)
        is swept through a filter with ``*`` in that place, skipping what a consumer serves (at
        most ``_SWEEP_SKIPS`` per filter and sweep: a deep backlog is walked as it drains).
        """
        info = await self._js.stream_info(TASKS_STREAM, subjects_filter=f"{TASKS_PREFIX}.>")
        subjects = info.state.subjects or {}
        consumers = {
            (c.config.filter_subject or "").rsplit(".", 1)[-1]
            for c in await self._js.consumers_info(TASKS_STREAM)
        }
        known = consumers | served_kinds
        filters = set()
        for subject in subjects:
            tenant, kind = split_task_subject(subject)
            if kind not in known:
                filters.add(f"{TASKS_PREFIX}.{_or_any(tenant)}.{_or_any(kind)}")
        moved = 0
        cutoff = time.time() - grace_s
        for subject in sorted(filters):
            seq, skips = 1, 0
            while skips <= _SWEEP_SKIPS:
                try:
                    raw = await self._js.get_msg(TASKS_STREAM, seq=seq, subject=subject, next=True)
                except NotFoundError:
                    break
                if raw.time is None or raw.time.timestamp() > cutoff or raw.seq is None:
                    break
                seq = raw.seq + 1
                _, kind = split_task_subject(raw.subject or "")
                if kind in known:  # only through a filter with a `*` for the kind
                    skips += 1
                    continue
                detail = f"no agent serves kind {shown(kind)}"
                if await self._move(raw.seq, DlqReason.UNKNOWN_KIND, detail, 0):
                    moved += 1
        return moved

    async def sweep_invalid(self, kind: str) -> int:
        """Move the tasks of ``kind`` whose tenant token is not valid (``invalid_subject``) at once.

        Per-tenant consumers (``bus.fair``) cannot name such a subject (invalid UTF-8 reads as
        U+FFFD in the stream's subject list), so they are walked through ``tasks.*.<kind>``,
        skipping at most ``_SWEEP_SKIPS`` valid ones per call. Returns how many moved.
        """
        seq, skips, moved = 1, 0, 0
        while skips <= _SWEEP_SKIPS:
            try:
                raw = await self._js.get_msg(
                    TASKS_STREAM, seq=seq, subject=f"{TASKS_PREFIX}.*.{kind}", next=True
                )
            except NotFoundError:
                break
            if raw.seq is None:
                break
            seq = raw.seq + 1
            problem = subject_problem(raw.subject or "")
            if not problem:
                skips += 1
                continue
            if await self._move(raw.seq, DlqReason.INVALID_SUBJECT, problem, 0):
                moved += 1
        return moved

    async def sweep_forever(self, served_kinds: set[str], *, interval_s: float, grace_s: float) -> None:
        """Run :meth:`sweep_unrouted` every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep_unrouted(served_kinds, grace_s=grace_s)
            except Exception as exc:  # a sweep is best effort; the next one retries
                log.debug("unrouted sweep failed: %s", exc)
