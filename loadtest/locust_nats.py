"""A Locust user that talks NATS: agentbus's Publisher on an asyncio loop hosted in a gevent greenlet.

``import locust`` has monkey-patched the process with gevent before this module loads
(the locustfile imports locust first). The asyncio loop is a plain selector loop, whose
selector is now gevent's, running ``run_forever`` in one more greenlet of Locust's thread
(tooling.md section 5, variant a2: ~16k requests/s on one core). One loop, one NATS
connection and one :class:`~bus.publisher.Publisher` per Locust process, shared by its
users; a user greenlet hands a coroutine to the loop and waits for it.

The coroutine, not the user greenlet, records the Locust request: when Locust stops a
user mid-request (its greenlet is killed), the publish still completes on the loop and is
still counted, so Locust's totals can equal the cluster's counters exactly. The drain
bookkeeping (:class:`LoadProcess`) lets the load shape end the run only once every
process has recorded everything it started; workers of a distributed run report their
in-flight count to the master with their stats.

With a tenant's credential (``AGENTBUS_NATS_NKEY_SEED`` and ``AGENTBUS_NATS_INBOX_PREFIX``
from ``agentbus auth init``, docs/security.md) the NATS server accepts only that tenant's
tasks: ``--tenant NAME`` then publishes every scenario's tasks as that tenant.

This module and the other Locust modules are never imported by agentbus itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gevent
import msgspec
from locust import User
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from nats.aio.client import Client

from agentbus.errors import (
    InvalidSubjectError,
    NoStreamError,
    PayloadTooLargeError,
    PublishError,
    ResultTimeoutError,
    StreamFullError,
)
from agents.config import nats_auth_from_env, resolve_nats_url
from bus.connection import connect
from bus.publisher import Publisher
from loadtest.locust_report import (
    ACK_TIMEOUT,
    CALL,
    DLQ_PREFIX,
    REFUSED_PREFIX,
    RESULT_TIMEOUT,
    SUBMIT,
    WARM,
    FailureRecord,
    failures_path,
    request_name,
)

__all__ = ["ACK_TIMEOUT_S", "LoadProcess", "NatsBridge", "NatsUser", "TaskFailure"]

log = logging.getLogger("agentbus.loadtest")

T = TypeVar("T")

ACK_TIMEOUT_S = 5.0
"""A JetStream ack takes milliseconds on a healthy server; after 5 s it is gone or stalled."""
_REPORT_KEY = "agentbus"  # our part of a worker's stats report to the master


class TaskFailure(Exception):
    """A Locust failure whose error column reads as the task's fate (``dlq:rejected``)."""

    def __init__(self, fate: str) -> None:
        super().__init__(fate)
        self.fate = fate

    def __repr__(self) -> str:  # Locust names an error by its repr()
        return self.fate


def _refusal(exc: BaseException) -> str:
    """The fate of a publish that JetStream or the client refused."""
    if isinstance(exc, StreamFullError):
        return REFUSED_PREFIX + "stream_full"
    if isinstance(exc, PayloadTooLargeError):
        return REFUSED_PREFIX + "too_large"
    if isinstance(exc, NoStreamError):  # JetStream answered "no responders": no stream takes it
        return REFUSED_PREFIX + "no_stream"
    if isinstance(exc, InvalidSubjectError):
        return REFUSED_PREFIX + "invalid_subject"
    if isinstance(exc, PublishError):
        return REFUSED_PREFIX + "publish_error"
    return REFUSED_PREFIX + type(exc).__name__  # e.g. ConnectionClosedError


class NatsBridge:
    """One Locust process's asyncio loop (in a greenlet), NATS connection and Publisher."""

    def __init__(self, environment: Environment) -> None:
        self._env = environment
        self._loop: asyncio.AbstractEventLoop | None = None
        self._greenlet: gevent.Greenlet[Any, Any] | None = None
        self._nc: Client | None = None
        self._pub: Publisher | None = None
        self._tenant: str | None = None  # --tenant: every task is this tenant's (a tenant credential)
        self.inflight = 0
        """Requests handed to the loop and not recorded yet (greenlet-local: no lock needed)."""

    def start(self, url: str) -> None:
        """Start the loop and connect (once per process; later calls do nothing)."""
        if self._loop is not None:
            return
        self._tenant = getattr(self._env.parsed_options, "tenant", None) or None
        # Not uvloop and not the policy's loop: only a selector loop yields to gevent's hub.
        loop = asyncio.SelectorEventLoop()
        self._loop = loop
        self._greenlet = gevent.spawn(loop.run_forever)
        try:
            connecting = connect(
                url, name="agentbus-locust", first_connect_timeout_s=5.0, auth=nats_auth_from_env()
            )
            self._nc = self._run(connecting, 10.0)
        except Exception as exc:  # every request then fails as refused:not_connected
            log.error("cannot connect to NATS at %s: %s", url, exc)
            return
        self._pub = Publisher(self._nc)

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        assert self._loop is not None
        # The patched Condition inside Future.result() parks only this greenlet.
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def submit(self, tenant: str, kind: str, payload: Any) -> None:
        """Publish one task, wait for the JetStream ack and record it (request type ``submit``)."""
        tenant = self._tenant or tenant
        self._request(self._submit(tenant, kind, payload, time.perf_counter()), ACK_TIMEOUT_S)

    def call(
        self, tenant: str, kind: str, payload: Any, *, result_timeout_s: float, request_type: str = CALL
    ) -> None:
        """Publish one task, wait for its Result and record it (request type ``call``, or
        ``warm`` for a call before the measured window)."""
        tenant = self._tenant or tenant
        coro = self._call(tenant, kind, payload, result_timeout_s, time.perf_counter(), request_type)
        self._request(coro, ACK_TIMEOUT_S + result_timeout_s)

    def _request(self, coro: Coroutine[Any, Any, None], timeout_s: float) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the NATS bridge is not started (no test_start yet)")
        self.inflight += 1  # before scheduling: the drain must see it even if this greenlet dies now
        # +5 s: the coroutine enforces the real bound and records the timeout itself.
        self._run(coro, timeout_s + 5.0)

    async def _submit(self, tenant: str, kind: str, payload: Any, started: float) -> None:
        try:
            failure: str | None = None
            if self._pub is None:
                failure = REFUSED_PREFIX + "not_connected"
            else:
                try:
                    async with asyncio.timeout(ACK_TIMEOUT_S):
                        await self._pub.submit(tenant, kind, payload)
                except TimeoutError:
                    failure = ACK_TIMEOUT
                except Exception as exc:
                    failure = _refusal(exc)
            self._record(SUBMIT, tenant, kind, started, failure)
        finally:
            self.inflight -= 1

    async def _call(
        self, tenant: str, kind: str, payload: Any, result_timeout_s: float, started: float, request_type: str
    ) -> None:
        try:
            failure: str | None = None
            if self._pub is None:
                failure = REFUSED_PREFIX + "not_connected"
            else:
                try:
                    # The outer bound fires only if the ack never came (call() waits for it unbounded).
                    async with asyncio.timeout(ACK_TIMEOUT_S + result_timeout_s):
                        result = await self._pub.call(tenant, kind, payload, timeout_s=result_timeout_s)
                    if not result.ok:
                        failure = DLQ_PREFIX + (result.error or "unknown").split(":", 1)[0]
                except ResultTimeoutError:  # first: it is a TimeoutError too
                    failure = RESULT_TIMEOUT
                except TimeoutError:
                    failure = ACK_TIMEOUT
                except Exception as exc:
                    failure = _refusal(exc)
            self._record(request_type, tenant, kind, started, failure)
        finally:
            self.inflight -= 1

    def _record(self, request_type: str, tenant: str, kind: str, started: float, failure: str | None) -> None:
        # On the loop's greenlet, in Locust's thread: firing Locust events here is safe.
        self._env.events.request.fire(
            request_type=request_type,
            name=request_name(tenant, kind),
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None if failure is None else TaskFailure(failure),
            context={"tenant": tenant, "kind": kind},
        )

    def close(self) -> None:
        """Drain the connection and stop the loop."""
        if self._loop is None:
            return
        if self._nc is not None:
            try:
                self._run(self._nc.drain(), 10.0)
            except Exception as exc:
                log.warning("closing the NATS connection: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._greenlet is not None:
            self._greenlet.join(timeout=5)
        self._loop.close()
        self._loop = None


class LoadProcess:
    """What one Locust process shares: the bridge (none on a master) and the drain bookkeeping."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.bridge = None if isinstance(environment.runner, MasterRunner) else NatsBridge(environment)
        self._reports: dict[str, tuple[float, int, int]] = {}
        """Worker id -> (received at, users, in flight) of its latest stats report (master only)."""
        events = environment.events
        events.test_start.add_listener(self._on_test_start)
        events.report_to_master.add_listener(self._on_report_to_master)
        events.worker_report.add_listener(self._on_worker_report)
        events.quit.add_listener(self._on_quit)
        events.quitting.add_listener(self._on_quitting)

    def drained_since(self, since: float) -> bool:
        """Every user stopped and every request recorded, as reported after ``since`` (monotonic)."""
        runner = self.environment.runner
        if isinstance(runner, MasterRunner):
            workers = [w.id for w in runner.clients.all]
            return bool(workers) and all(
                (r := self._reports.get(w)) is not None and r[0] > since and r[1] == 0 and r[2] == 0
                for w in workers
            )
        assert runner is not None
        return runner.user_count == 0 and (self.bridge is None or self.bridge.inflight == 0)

    def _on_test_start(self, environment: Environment, **_: Any) -> None:
        if self.bridge is not None:
            self.bridge.start(environment.host or resolve_nats_url(None))

    def _on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        # Locust's own listener has already put the stats into ``data``: this count goes with them.
        runner = self.environment.runner
        inflight = self.bridge.inflight if self.bridge is not None else 0
        data[_REPORT_KEY] = [runner.user_count if runner is not None else 0, inflight]

    def _on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        if _REPORT_KEY in data:
            users, inflight = data[_REPORT_KEY]
            self._reports[client_id] = (time.monotonic(), int(users), int(inflight))

    def _on_quit(self, exit_code: int, **_: Any) -> None:
        """Write Locust's error table beside its ``--json-file`` (which has no error breakdown)."""
        runner = self.environment.runner
        options = self.environment.parsed_options
        prefix = getattr(options, "json_file", None)
        if runner is None or isinstance(runner, WorkerRunner) or not prefix:
            return
        rows = [
            FailureRecord(method=e["method"], name=e["name"], error=e["error"], occurrences=e["occurrences"])
            for e in runner.stats.serialize_errors().values()
        ]
        failures_path(Path(prefix)).write_bytes(msgspec.json.encode(rows))

    def _on_quitting(self, environment: Environment, **_: Any) -> None:
        if self.bridge is not None:
            self.bridge.close()


class NatsUser(User):
    """Base of the scenario users: ``submit`` and ``call`` through the process's NATS bridge."""

    abstract = True
    process: ClassVar[LoadProcess | None] = None
    """Set by the locustfile's ``init`` listener, once per Locust process."""
    result_timeout_s: float = 10.0

    def _bridge(self) -> NatsBridge:
        process = type(self).process
        if process is None or process.bridge is None:
            raise RuntimeError("NatsUser needs the locustfile's init listener (loadtest/locustfile.py)")
        return process.bridge

    def submit(self, tenant: str, kind: str, payload: Any) -> None:
        """Fire-and-forget: a success is a task JetStream stored."""
        self._bridge().submit(tenant, kind, payload)

    def call(self, tenant: str, kind: str, payload: Any) -> None:
        """Request-style: a success is a task that completed; ``ok=false`` fails as ``dlq:<reason>``."""
        self._bridge().call(tenant, kind, payload, result_timeout_s=self.result_timeout_s)

    def warm(self, tenant: str, kind: str, payload: Any) -> None:
        """A call before the measured window (request type ``warm``): a task like any other,
        never in the call percentiles."""
        self._bridge().call(tenant, kind, payload, result_timeout_s=self.result_timeout_s, request_type=WARM)
