"""What becomes of one attempt of an LLM task: its stream events, and its fate when it fails.

:class:`Events` numbers the attempt's events and sends them to
``results.<tenant>.<task_id>.stream`` when the publisher follows the task
(:attr:`~agents.api.Context.streaming`); they are numbered either way. :func:`fate` maps
a model failure to the task's fate: an open breaker or a rate limit -> ``Retry``
after the delay it carries (spread by up to 20 %), an unavailable model -> ``Retry``,
a spent budget, a refused request or unusable output -> ``Reject``.
"""

from __future__ import annotations

import random
from typing import Any

from agentbus.errors import (
    BudgetExceededError,
    CircuitOpenError,
    LLMError,
    ModelOutputError,
    ModelUnavailableError,
    RateLimitedError,
    Reject,
    Retry,
    TaskFate,
)
from agents.api import Context
from bus.messages import TokenEvent

__all__ = ["Events", "fate"]


class Events:
    """Numbers and sends one attempt's stream events (numbered even when not sent)."""

    __slots__ = ("attempt", "ctx", "on", "seq", "turn")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.on = ctx.streaming
        self.attempt = ctx.attempt
        self.seq = 0
        self.turn = 0

    def next(self) -> int:
        self.seq += 1
        return self.seq

    async def token(self, text: str) -> None:
        self.seq += 1
        if self.on:
            await self.ctx.stream(TokenEvent(seq=self.seq, text=text, turn=self.turn, attempt=self.attempt))

    async def send(self, event: Any) -> None:
        if self.on:
            await self.ctx.stream(event)


def fate(exc: LLMError | TaskFate) -> TaskFate:
    """The fate of a task that ended with ``exc``."""
    if isinstance(exc, TaskFate):
        return exc
    if isinstance(exc, CircuitOpenError | RateLimitedError):
        # spread the returns over +20% so a burst of nakked tasks does not come back at once
        return Retry(str(exc), delay_s=exc.retry_after_s * (1 + 0.2 * random.random()))
    if isinstance(exc, ModelUnavailableError):
        return Retry(str(exc), delay_s=exc.retry_after_s)
    if isinstance(exc, BudgetExceededError):
        return Reject(str(exc))
    if isinstance(exc, ModelOutputError):
        return Reject(f"model output unusable: {exc}")
    return Reject(str(exc))  # ModelHTTPError and the rest: retrying the same request cannot help
