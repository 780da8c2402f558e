"""Test an agent without a server: its handler runs in-process with a real :class:`Context`.

    from agents.testing import AgentTester

    async def test_answer() -> None:
        async with AgentTester(answer) as tester:
            outcome = await tester.run({"text": "hi"}, tenant="acme")
        assert outcome.fate == "ok"
        assert outcome.output == Answer(text="acme asked: hi")

What a worker would do, the tester does, in the same order: the agent's ``on_start``
runs on entry (with :class:`~agents.api.Services` whose stores are a real replica's,
so ``ctx.state`` works) and ``on_stop`` on exit; the payload goes to JSON and back
through the agent's input type (a mismatch is the ``invalid_payload`` dead letter a
worker would store); the handler runs in the tenant scope (``current_tenant()``) within
``timeout_s``, and its outcome is decided by the worker's rules: ``Retry`` and other
exceptions retry (the last allowed delivery dead-letters ``max_deliveries``), ``Reject``
dead-letters ``rejected``, a timeout retries. ``ctx.publish`` records the follow-up task
(:attr:`AgentTester.published`); ``ctx.stream`` records events when the task asks for
them (``stream=True``). No NATS, no threads, no sleeping: a retry's delay is reported,
not waited for.

:func:`bare_context` is a :class:`Context` alone, for calling a tool or a helper directly
(no agent, no tester): publishing or streaming from it fails the test.

The worker's wire rules (ids, headers, sizes, subjects) are not checked here; the real
server tests in ``tests/integration`` cover them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import msgspec

from agentbus.errors import Reject, Retry
from agents.api import AgentSpec, Context, Services
from agents.tenancy import _tenant
from bus.messages import DlqReason, encode
from bus.publisher import TaskRef, new_task_id
from bus.subjects import check_token, task_subject
from state.replica import ReplicaState

__all__ = ["AgentTester", "Outcome", "PublishedTask", "bare_context"]

Fate = Literal["ok", "retry", "dead_letter"]
Out = TypeVar("Out")


@dataclass(frozen=True, slots=True)
class PublishedTask:
    """A follow-up task a handler published with ``ctx.publish``."""

    tenant: str
    kind: str
    payload: Any
    task_id: str
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome(Generic[Out]):
    """What a worker would do with the task: ``ok`` (ack, ``output`` sent), ``retry`` (nak after
    ``delay_s``; None: the worker's backoff) or ``dead_letter`` (``reason``, ``detail``)."""

    fate: Fate
    attempt: int
    output: Out | None = None
    reason: DlqReason | None = None
    detail: str = ""
    delay_s: float | None = None
    error: BaseException | None = None
    events: list[Any] = field(default_factory=list)
    """What ``ctx.stream`` sent, decoded from JSON (only with ``stream=True``)."""

    @property
    def ok(self) -> bool:
        """The handler returned and the task would be acked."""
        return self.fate == "ok"


class AgentTester(Generic[Out]):
    """Runs one agent's tasks in-process (``async with``: ``on_start`` on entry, ``on_stop`` on exit).

    ``max_deliver`` is the worker's default; ``worker`` names the replica (``Services.worker``).
    """

    def __init__(self, spec: AgentSpec[Any, Out], *, max_deliver: int = 5, worker: str = "tester") -> None:
        if max_deliver < 1:
            raise ValueError("max_deliver must be >= 1")
        self.spec = spec
        self.max_deliver = max_deliver
        self.replica = ReplicaState(worker)
        """The shared state ``ctx.state`` reads and writes (one replica, no gossip)."""
        self.services = Services(worker=worker, stores=self.replica.store)
        self.published: list[PublishedTask] = []
        """Every follow-up task ``ctx.publish`` sent, in order."""
        self._decoder = msgspec.json.Decoder(spec.input)
        self._output = msgspec.json.Decoder(spec.output) if spec.output is not None else None
        self._log = logging.getLogger(f"agentbus.agents.{spec.kind}")
        self._started = False

    async def __aenter__(self) -> AgentTester[Out]:
        if self.spec.on_start is not None:
            await self.spec.on_start(self.services)
        self._started = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._started and self.spec.on_stop is not None:
            await self.spec.on_stop()
        self._started = False

    def state(self, tenant: str) -> Any:
        """The tenant's store, to arrange or inspect what handlers see as ``ctx.state``."""
        return self.replica.store(tenant)

    async def run(
        self,
        payload: Any,
        *,
        tenant: str,
        attempt: int = 1,
        task_id: str | None = None,
        deadline: float | None = None,
        stream: bool = False,
    ) -> Outcome[Out]:
        """Run one delivery of a task with ``payload`` (a Struct, dict, ...) for ``tenant``."""
        if not self._started:
            raise RuntimeError("use `async with AgentTester(spec) as tester:` (it runs on_start)")
        check_token("tenant", tenant)
        task_id = task_id or new_task_id()
        try:
            task = self._decoder.decode(encode(payload))
        except msgspec.ValidationError as exc:
            return Outcome(
                "dead_letter", attempt, reason=DlqReason.INVALID_PAYLOAD, detail=str(exc), error=exc
            )
        events: list[Any] = []

        async def emit(subject: str, data: bytes) -> None:
            if subject.endswith(".stream"):  # not the audit record (ctx.audit)
                events.append(msgspec.json.decode(data))

        ctx = Context(
            tenant=tenant,
            kind=self.spec.kind,
            task_id=task_id,
            attempt=attempt,
            deadline=deadline,
            log=self._log,
            submit=self._submit,
            emit=emit,
            stores=self.replica.store,
            streaming=stream,
        )
        scope = contextvars.copy_context()
        scope.run(_tenant.set, tenant)
        timeout_s = self.spec.timeout_s
        try:
            value = await asyncio.wait_for(scope.run(self._call, ctx, task), timeout_s)
        except Reject as exc:
            return Outcome(
                "dead_letter", attempt, reason=DlqReason.REJECTED, detail=exc.reason, error=exc, events=events
            )
        except Retry as exc:
            return self._retry(attempt, exc.reason, exc.delay_s, exc, events)
        except TimeoutError as exc:
            return self._retry(attempt, f"timed out after {timeout_s:g}s", None, exc, events)
        except Exception as exc:
            return self._retry(attempt, f"{type(exc).__name__}: {exc}", None, exc, events)
        output: Any = value
        if self._output is not None:
            try:  # what the publisher decodes from the result, so an unsendable output fails here too
                output = self._output.decode(encode(value))
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                detail = f"output of type {type(value).__name__} cannot be sent: {exc!r}"
                return Outcome("dead_letter", attempt, reason=DlqReason.REJECTED, detail=detail, error=exc)
        return Outcome("ok", attempt, output=output, events=events)

    async def run_until_settled(self, payload: Any, *, tenant: str, **kwargs: Any) -> list[Outcome[Out]]:
        """Deliver the task again after every ``retry`` (attempt 1, 2, ...) until it is acked or
        dead-lettered, as the server would without the waits; every delivery's outcome, in order."""
        task_id = kwargs.pop("task_id", None) or new_task_id()
        outcomes: list[Outcome[Out]] = []
        for attempt in range(1, self.max_deliver + 1):
            outcome = await self.run(payload, tenant=tenant, attempt=attempt, task_id=task_id, **kwargs)
            outcomes.append(outcome)
            if outcome.fate != "retry":
                break
        return outcomes

    def _call(self, ctx: Context, task: Any) -> asyncio.Task[Any]:
        # a Task created in the tenant scope runs in it (copies it): current_tenant() works there
        return asyncio.ensure_future(self.spec.handler(ctx, task))

    def _retry(
        self, attempt: int, reason: str, delay_s: float | None, error: BaseException, events: list[Any]
    ) -> Outcome[Out]:
        if attempt >= self.max_deliver:
            detail = f"failed on all {attempt} deliveries; last: {reason}"
            return Outcome(
                "dead_letter",
                attempt,
                reason=DlqReason.MAX_DELIVERIES,
                detail=detail,
                error=error,
                events=events,
            )
        return Outcome("retry", attempt, detail=reason, delay_s=delay_s, error=error, events=events)

    async def _submit(
        self,
        tenant: str,
        kind: str,
        payload: Any,
        *,
        task_id: str | None = None,
        deadline: float | None = None,
    ) -> TaskRef:
        check_token("kind", kind)
        tid = task_id or new_task_id()
        subject = task_subject(tenant, kind)
        for seq, done in enumerate(self.published, 1):  # JetStream drops a repeated id: so do we
            if (done.tenant, done.kind, done.task_id) == (tenant, kind, tid):
                return TaskRef(task_id=tid, subject=subject, seq=seq, duplicate=True)
        self.published.append(PublishedTask(tenant, kind, payload, tid, deadline))
        return TaskRef(task_id=tid, subject=subject, seq=len(self.published), duplicate=False)


def bare_context(tenant: str = "acme", *, kind: str = "test", task_id: str = "t1") -> Context:
    """A first delivery's :class:`Context` with no deadline; ``ctx.publish`` and ``ctx.stream`` raise."""

    async def unused(*_: Any, **__: Any) -> Any:
        raise AssertionError("a bare context cannot publish or stream")

    return Context(
        tenant=tenant,
        kind=kind,
        task_id=task_id,
        attempt=1,
        deadline=None,
        log=logging.getLogger(f"agents.testing.{kind}"),
        submit=unused,
        emit=unused,
    )
