"""A circuit breaker per model endpoint: closed -> open -> half-open -> closed.

Closed, every call goes through and failed attempts (429, 5xx, connection errors,
timeouts) are counted; ``failure_threshold`` consecutive ones open the breaker. Open,
calls fail at once with :class:`~agentbus.errors.CircuitOpenError` carrying the time
left, which the task agent turns into ``Retry(delay_s=...)``: the task goes back to
JetStream for later instead of hammering an endpoint that is down. After ``open_s``
the breaker is half-open: ``half_open_probes`` calls are let through; a success closes
it, a failure opens it again for another ``open_s``.

A success means "the endpoint answered": a 400 is the request's fault, not the
endpoint's, so it closes a half-open breaker too. State is per process; the
``agentbus_llm_breaker_state`` gauge shows it (0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from agentbus.errors import CircuitOpenError
from agents.llm.config import BreakerConfig

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.IntEnum):
    """The breaker's state; the value is what the metric exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


_CLOSED = BreakerState.CLOSED


class CircuitBreaker:
    """The breaker of one endpoint. Not thread-safe: one event loop owns it."""

    __slots__ = ("_clock", "_failures", "_opened_at", "_probes", "_state", "config", "endpoint", "opened")

    def __init__(
        self, endpoint: str, config: BreakerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0
        self.opened = 0
        """How many times it opened (a counter for the metrics)."""

    @property
    def state(self) -> BreakerState:
        """The current state (open turns half-open once ``open_s`` has passed)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.config.open_s:
            self._state = BreakerState.HALF_OPEN
            self._probes = 0
        return self._state

    def acquire(self) -> bool:
        """Before an attempt: raise ``CircuitOpenError`` if refused; True if this attempt is a probe."""
        if self._state is _CLOSED:  # the common case, without a clock read
            return False
        state = self.state  # open, or half-open once open_s has passed
        if state is BreakerState.HALF_OPEN and self._probes < self.config.half_open_probes:
            self._probes += 1
            return True
        left = self.config.open_s - (self._clock() - self._opened_at)
        # half-open with every probe taken: come back about when the probe has answered
        raise CircuitOpenError(self.endpoint, max(left, self.config.open_s / 4))

    def success(self, probe: bool) -> None:
        """The endpoint answered."""
        if probe:
            self._probes -= 1
        self._failures = 0
        self._state = BreakerState.CLOSED

    def failure(self, probe: bool) -> None:
        """An attempt failed (429, 5xx, connection error, timeout)."""
        if probe:
            self._probes -= 1
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.config.failure_threshold:
            if self._state is not BreakerState.OPEN:
                self.opened += 1
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def cancelled(self, probe: bool) -> None:
        """An attempt ended without a verdict (the task was cancelled): free its probe slot."""
        if probe:
            self._probes -= 1
