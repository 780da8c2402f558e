"""The control loop: read the metrics, decide, resize, record; every ``interval_s``, forever.

The loop never raises out of :meth:`Scaler.run` and never shrinks the pool because
something failed: an unreadable metric holds the size (the policy's rule), an
actuator error is logged and counted and the next evaluation tries again. Each
evaluation is one structured log line (JSON) on the ``agentbus.scaler`` logger (INFO
for resizes, errors and the start of a hold; DEBUG for steady holds) and is handed to
``on_evaluation``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from prometheus_client.registry import CollectorRegistry

from agentbus.errors import ConfigError
from scaler.actuators import Actuator, ScaleResult
from scaler.metrics import ScalerMetrics
from scaler.policy import Decision, PolicyState, Reading, Reason, decide
from scaler.sources import MetricSource
from scaler.spec import PolicySpec

__all__ = ["Evaluation", "Scaler"]

log = logging.getLogger("agentbus.scaler")


class Evaluation(msgspec.Struct, frozen=True, omit_defaults=True):
    """One turn of the loop: the decision, what was done about it, and any error."""

    decision: Decision
    action: ScaleResult | None = None
    error: str = ""
    dry_run: bool = False
    wall_time: float = 0.0


_encoder = msgspec.json.Encoder()
_STEADY = frozenset({Reason.WITHIN_TOLERANCE, Reason.AT_MIN, Reason.AT_MAX})
"""Holds logged at DEBUG: the pool is where it should be. Any other hold is logged once, when it starts."""


class Scaler:
    """Drives one pool: ``source`` -> :func:`~scaler.policy.decide` -> ``actuator``."""

    def __init__(
        self,
        spec: PolicySpec,
        source: MetricSource,
        actuator: Actuator,
        *,
        interval_s: float = 15.0,  # the HPA's sync period; the embedded default uses 1 s
        read_timeout_s: float = 10.0,  # a source slower than this reads as missing: hold
        dry_run: bool = False,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_evaluation: Callable[[Evaluation], None] | None = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self.actuator = actuator
        self.interval_s = interval_s
        self.read_timeout_s = read_timeout_s
        self.dry_run = dry_run
        self.metrics = ScalerMetrics(registry if registry is not None else CollectorRegistry())
        self.state = PolicyState()
        self.last: Evaluation | None = None
        self._clock = clock
        self._on_evaluation = on_evaluation
        self._current = 0

    async def start(self) -> None:
        """Check the configuration against the source; raise ConfigError/MetricError at start."""
        unknown = sorted({m.name for m in self.spec.metrics} - self.source.metrics)
        if unknown:
            known = ", ".join(sorted(self.source.metrics))
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}: this source reads {known}")
        await self.source.check()

    async def evaluate(self) -> Evaluation:
        """One evaluation; never raises."""
        now = self._clock()
        try:
            self._current = await asyncio.wait_for(self.actuator.current(), self.read_timeout_s)
        except Exception as exc:
            self.metrics.errors.labels("current").inc()
            detail = f"cannot read the pool's size, holding: {exc!r}"
            decision = Decision(now, self._current, self._current, Reason.ACTUATOR_ERROR, detail)
            return self._record(Evaluation(decision, error=str(exc), dry_run=self.dry_run))
        try:
            readings = await asyncio.wait_for(self.source.read(now), self.read_timeout_s)
        except Exception as exc:  # a source should not raise; if it does, every metric is missing
            self.metrics.errors.labels("read").inc()
            readings = {m.name: Reading(None, now, f"source failed: {exc!r}") for m in self.spec.metrics}
        decision, self.state = decide(self.spec, self.state, readings, current=self._current, now_s=now)
        if not decision.changed or self.dry_run:
            return self._record(Evaluation(decision, dry_run=self.dry_run))
        try:
            action = await self.actuator.scale(decision.desired)
        except Exception as exc:
            self.metrics.errors.labels("scale").inc()
            return self._record(Evaluation(decision, error=f"resize failed, size kept: {exc}"))
        self.state = self.state.scaled(now, action.before, action.after)
        self._current = action.after
        return self._record(Evaluation(decision, action))

    def _record(self, ev: Evaluation) -> Evaluation:
        ev = msgspec.structs.replace(ev, wall_time=time.time())
        self.metrics.observe(ev.decision, ev.action)
        previous = self.last
        self.last = ev
        reason = ev.decision.reason
        entered = previous is None or previous.decision.reason != reason
        notable = ev.decision.changed or bool(ev.error) or (entered and reason not in _STEADY)
        log.log(logging.INFO if notable else logging.DEBUG, "%s", _encoder.encode(ev).decode())
        if self._on_evaluation is not None:
            try:
                self._on_evaluation(ev)
            except Exception:
                log.exception("on_evaluation callback failed")
        return ev

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Evaluate every ``interval_s`` until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            started = self._clock()
            try:
                await self.evaluate()
            except Exception:  # evaluate() does not raise; this is the belt to its braces
                log.exception("scaler evaluation failed")
            pause = max(0.0, self.interval_s - (self._clock() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def aclose(self) -> None:
        """Close the source and the actuator's connections (the pool keeps running)."""
        await self.source.aclose()
        await self.actuator.aclose()
