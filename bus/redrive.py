"""DLQ redrive: list, show, replay and purge dead letters (operator credentials only).

Dead letters live in stream ``DLQ`` on ``dlq.<tenant>.<kind>`` (:mod:`bus.dlq`). A
:class:`DlqFilter` narrows by tenant and kind (the subject) and by reason and age (read
from each letter). :meth:`Redrive.replay` republishes a letter's original bytes to
``tasks.<tenant>.<kind>`` as a new attempt lineage (deliveries count from 1 again) with
header ``Agentbus-Replay-Of: DLQ:<seq>`` and ``Nats-Msg-Id: replay-DLQ-<seq>`` (with
``:<mac>`` of the operator's key on a connection with a seed, :mod:`bus.msgid`: a tenant may
publish any id on its own subject, and one publishing ``replay-DLQ-<seq>`` first would have
the replay answered as a duplicate and not stored). Before it
publishes, it creates the KV marker ``dlq-<seq>`` in bucket ``agentbus_redrive``
(compare-and-set on revision 0): a second replay of the same letter finds the marker and is
refused with :class:`~agentbus.errors.AlreadyReplayedError`, so the task does not run twice.
If the publish fails the marker is removed again; a process killed between marker and
publish leaves a marker with no task (refused later: replay the bytes by hand, ``dlq show``).

These calls read every tenant's dead letters and write any tenant's task subject: NATS
permissions give them to the operator role only (docs/wire.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from agentbus.errors import AlreadyReplayedError, PublishError, RecordNotFoundError
from bus.messages import HDR_MSG_ID, HDR_REPLAY_OF, DeadLetter, now
from bus.msgid import key_of, signed
from bus.publisher import TaskRef, map_publish_error
from bus.records import REDRIVE_BUCKET, bucket
from bus.subjects import DLQ_PREFIX, INVALID_TOKEN, check_token, task_subject
from bus.topology import DLQ_STREAM, TASKS_STREAM

__all__ = ["DlqFilter", "Redrive", "StoredLetter"]

_letter_decoder = msgspec.json.Decoder(DeadLetter)


@dataclass(frozen=True, kw_only=True, slots=True)
class DlqFilter:
    """Which dead letters: by tenant, kind, reason and age (None: any)."""

    tenant: str | None = None
    kind: str | None = None
    reason: str | None = None
    older_than_s: float | None = None
    newer_than_s: float | None = None

    def __post_init__(self) -> None:
        if self.tenant is not None and self.tenant != INVALID_TOKEN:
            check_token("tenant", self.tenant)
        if self.kind is not None:
            check_token("kind", self.kind)

    @property
    def subject(self) -> str:
        """The DLQ subject filter of tenant and kind."""
        return f"{DLQ_PREFIX}.{self.tenant or '*'}.{self.kind or '*'}"

    @property
    def by_subject_only(self) -> bool:
        """Only tenant and kind are set: the server can select by subject alone."""
        return self.reason is None and self.older_than_s is None and self.newer_than_s is None

    def matches(self, letter: DeadLetter, stored_at: float, at: float) -> bool:
        """Whether a letter stored at ``stored_at`` passes the reason and age filters at time ``at``."""
        age = at - stored_at
        if self.reason is not None and str(letter.reason) != self.reason:
            return False
        if self.older_than_s is not None and age < self.older_than_s:
            return False
        return self.newer_than_s is None or age <= self.newer_than_s


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter with its DLQ sequence and when it was stored."""

    seq: int
    subject: str
    stored_at: float
    letter: DeadLetter


class Redrive:
    """The operator's API over stream ``DLQ``."""

    def __init__(self, nc: Client, *, timeout_s: float = 5.0) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout_s)
        self._timeout_s = timeout_s

    async def letters(
        self, flt: DlqFilter | None = None, *, limit: int | None = 100
    ) -> AsyncIterator[StoredLetter]:
        """The matching dead letters, oldest first, at most ``limit`` (None: all)."""
        flt = flt or DlqFilter()
        at, seq, found = now(), 1, 0
        while limit is None or found < limit:
            try:
                raw = await self._js.get_msg(DLQ_STREAM, seq=seq, subject=flt.subject, next=True)
            except NotFoundError:
                return
            if raw.seq is None:
                return
            seq = raw.seq + 1
            stored = _stored(
                raw.seq, raw.subject or "", raw.data or b"", raw.time.timestamp() if raw.time else at
            )
            if stored is not None and flt.matches(stored.letter, stored.stored_at, at):
                found += 1
                yield stored

    async def show(self, seq: int) -> StoredLetter:
        """The dead letter at DLQ sequence ``seq``."""
        try:
            raw = await self._js.get_msg(DLQ_STREAM, seq=seq)
        except NotFoundError:
            raise RecordNotFoundError(f"no dead letter at DLQ sequence {seq}") from None
        stored_at = raw.time.timestamp() if raw.time else now()
        stored = _stored(seq, raw.subject or "", raw.data or b"", stored_at)
        if stored is None:
            raise RecordNotFoundError(f"DLQ sequence {seq} holds no readable dead letter")
        return stored

    async def replay(self, seq: int) -> TaskRef:
        """Republish dead letter ``seq``'s original task once; :class:`AlreadyReplayedError` after that."""
        stored = await self.show(seq)
        letter = stored.letter
        if letter.data_truncated:
            raise PublishError(f"dead letter {seq} keeps only the start of its task: it cannot be replayed")
        if letter.tenant == INVALID_TOKEN or not letter.data:
            raise PublishError(f"dead letter {seq} has no task subject or bytes to replay")
        if stored.subject != f"{DLQ_PREFIX}.{letter.tenant}.{letter.kind}":  # not a worker's letter
            raise PublishError(f"dead letter {seq} names another tenant or kind than its subject")
        subject = task_subject(letter.tenant, letter.kind)
        markers = await bucket(self._js, REDRIVE_BUCKET)
        marker = f"dlq-{seq}"
        try:
            revision = await markers.create(marker, msgspec.json.encode({"at": now(), "state": "publishing"}))
        except KeyWrongLastSequenceError:
            raise AlreadyReplayedError(seq) from None
        replay_id = f"replay-{DLQ_STREAM}-{seq}"
        if (key := key_of(self._nc)) is not None:  # unguessable by a tenant (see above)
            replay_id = signed(key, replay_id)
        headers = {HDR_MSG_ID: replay_id, HDR_REPLAY_OF: f"{DLQ_STREAM}:{seq}"}
        try:
            ack = await self._js.publish(subject, letter.data, headers=headers, stream=TASKS_STREAM)
        except Exception as exc:
            await markers.delete(marker, last=revision)  # nothing was stored: may be replayed again
            raise map_publish_error(exc, letter.task_id, subject, len(letter.data)) from exc
        done = {"at": now(), "state": "published", "task_seq": ack.seq}
        await markers.update(marker, msgspec.json.encode(done), last=revision)
        return TaskRef(letter.task_id, subject, ack.seq, bool(ack.duplicate))

    async def purge(self, flt: DlqFilter | None = None) -> int:
        """Delete the matching dead letters; how many were deleted."""
        flt = flt or DlqFilter()
        if flt.by_subject_only:  # one request, however many
            before = (await self._js.stream_info(DLQ_STREAM)).state.messages
            await self._js.purge_stream(DLQ_STREAM, subject=flt.subject)
            return before - (await self._js.stream_info(DLQ_STREAM)).state.messages
        seqs = [s.seq async for s in self.letters(flt, limit=None)]
        for seq in seqs:
            await self._js.delete_msg(DLQ_STREAM, seq)
        return len(seqs)


def _stored(seq: int, subject: str, data: bytes, stored_at: float) -> StoredLetter | None:
    try:
        letter = _letter_decoder.decode(data)
    except msgspec.DecodeError:  # not ours, or a reason this version does not know
        return None
    return StoredLetter(seq, subject, stored_at, letter)
