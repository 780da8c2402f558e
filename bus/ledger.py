"""Effects that happen once, and durable tenant state, in NATS KV with compare-and-set.

:meth:`Ledger.once` runs a step of a task at most once per ``(tenant, task id, step)``
across redeliveries, retries and worker deaths. The key ``<tenant>.<task_id>.<step>`` of
bucket ``agentbus_once`` goes through three states:

1. absent: the first attempt *claims* it with a KV create (compare-and-set on revision 0),
   writing ``pending`` with a lease (the attempt's time bound);
2. ``pending``: the step is running. Another attempt of the task (a redelivery while the
   first still runs) is told to retry after the lease; once the lease has passed, the claim
   is from a dead attempt and is taken over by a CAS update on its revision;
3. ``done``: the step's value is stored; every later attempt gets that value and the step
   does not run again. A step that raises releases its claim (a retry may run it again).

The window that remains, honestly: a worker that dies *after* the effect happened but
*before* ``done`` was stored (one KV round trip) leaves a ``pending`` claim, and the step
runs again after the lease. No ledger closes that window alone; an effect that must never
repeat takes :attr:`OnceKey.key` as its downstream idempotency key (payment APIs do).

:class:`TenantKV` is one tenant's view of bucket ``agentbus_kv``: keys are prefixed with
the tenant from the task's subject, so a handler cannot name another tenant's key.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from agentbus.errors import InvalidSubjectError, Retry
from bus.messages import now

__all__ = ["Ledger", "OnceKey", "TenantKV", "check_key"]

log = logging.getLogger("agentbus.ledger")

_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}(\.[A-Za-z0-9_-]{1,128}){0,7}")
_CLAIM_TRIES = 8  # CAS races lost in a row before giving up (each loser re-reads first)


def check_key(key: str) -> str:
    """A key of 1-8 dot-separated tokens of ``[A-Za-z0-9_-]`` (no wildcard, no tenant escape)."""
    if not _KEY.fullmatch(key):
        raise InvalidSubjectError("key", key, "1-8 dot-separated tokens of [A-Za-z0-9_-]")
    return key


class _Claim(msgspec.Struct, omit_defaults=True, gc=False):
    state: str  # "pending" or "done"
    until: float = 0.0
    worker: str = ""
    attempt: int = 0
    value: msgspec.Raw = msgspec.Raw(b"null")


_claim_decoder = msgspec.json.Decoder(_Claim)


@dataclass(frozen=True, slots=True)
class OnceKey:
    """Names one step of one task in the ledger."""

    tenant: str
    task_id: str
    step: str

    @property
    def key(self) -> str:
        """``<tenant>.<task_id>.<step>``: the ledger key, and an idempotency key for downstreams."""
        return f"{self.tenant}.{self.task_id}.{self.step}"


class Ledger:
    """The effects ledger over bucket ``agentbus_once``."""

    def __init__(self, kv: KeyValue, *, worker: str = "") -> None:
        self._kv = kv
        self._worker = worker

    async def once(
        self,
        name: OnceKey,
        step: Callable[[], Awaitable[Any]],
        *,
        lease_s: float,
        attempt: int = 0,
        type: Any = Any,
    ) -> Any:
        """Run ``step`` unless this task already ran it; its value as JSON decoded to ``type``.

        The value is stored as JSON and returned decoded in every attempt, so the first
        run and a replay return the same thing. Raises :class:`~agentbus.errors.Retry` while
        another live attempt holds the step.
        """
        key = check_key(name.key)
        pending = msgspec.json.encode(
            _Claim(state="pending", until=now() + lease_s, worker=self._worker, attempt=attempt)
        )
        revision = 0
        for _ in range(_CLAIM_TRIES):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                entry = None
            try:
                if entry is None or entry.value is None:
                    revision = await self._kv.create(key, pending)
                    break
                claim = _claim_decoder.decode(entry.value)
                if claim.state == "done":
                    return msgspec.json.decode(claim.value, type=type)
                if claim.until > now():
                    raise Retry(f"step {name.step} is running elsewhere", delay_s=claim.until - now() + 0.1)
                assert entry.revision is not None
                log.warning("step %r of task %r: taking over a claim whose lease ran out", name.step, key)
                revision = await self._kv.update(key, pending, last=entry.revision)
                break
            except KeyWrongLastSequenceError:
                continue  # another attempt moved first: read again
        else:
            raise Retry(f"step {name.step}: the ledger kept changing", delay_s=1.0)
        try:
            value = await step()
            data = msgspec.json.encode(value)
        except BaseException:
            try:
                await self._kv.delete(key, last=revision)  # the step may run again
            except Exception as exc:  # the lease frees it later
                log.debug("could not release claim %r: %s", key, exc)
            raise
        done = _Claim(state="done", worker=self._worker, attempt=attempt, value=msgspec.Raw(data))
        try:
            await self._kv.update(key, msgspec.json.encode(done), last=revision)
        except KeyWrongLastSequenceError:
            log.warning("step %r ran past its lease and was taken over: it may have run twice", key)
        return msgspec.json.decode(data, type=type)


class TenantKV:
    """One tenant's keys in bucket ``agentbus_kv``; values are bytes, writes can be CAS."""

    def __init__(self, kv: KeyValue, tenant: str) -> None:
        self._kv = kv
        self._prefix = tenant + "."

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """``(value, revision)``, or None if absent."""
        try:
            entry = await self._kv.get(self._prefix + check_key(key))
        except KeyNotFoundError:
            return None
        assert entry.revision is not None
        return entry.value or b"", entry.revision

    async def create(self, key: str, value: bytes) -> int | None:
        """Store ``value`` if ``key`` is absent: its revision, or None if it exists."""
        try:
            return await self._kv.create(self._prefix + check_key(key), value)
        except KeyWrongLastSequenceError:
            return None

    async def update(self, key: str, value: bytes, revision: int) -> int | None:
        """Store ``value`` if ``key`` is still at ``revision``: the new revision, or None."""
        try:
            return await self._kv.update(self._prefix + check_key(key), value, last=revision)
        except KeyWrongLastSequenceError:
            return None

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value`` unconditionally."""
        return await self._kv.put(self._prefix + check_key(key), value)
