"""Eager start of coroutines: run the first step now, make a task only if it suspends.

Most agent handlers on the hot path (and every no-op) finish without ever
suspending. Creating an ``asyncio.Task`` for each costs about as much as the whole
rest of a message's processing, so :func:`start_eager` drives the coroutine's
first step inline and wraps only a suspended coroutine in a Task, exactly what
Python 3.12's ``asyncio.eager_task_factory`` does, but available on 3.11 too.

The first step runs inside ``context`` and the continuing task is created with the
same context, so context variables (the tenant scope) set before and during the
first step are seen by the rest of the coroutine and never leak into the caller.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from contextvars import Context
from typing import Any, TypeVar

__all__ = ["start_eager"]

T = TypeVar("T")


def start_eager(coro: Coroutine[Any, Any, T], context: Context) -> asyncio.Task[T] | None:
    """Run ``coro`` until it first suspends; return None if it finished, else its Task.

    A coroutine that finished is done: its result or exception is its own
    business (callers pass coroutines that handle their own errors).
    """
    try:
        yielded = context.run(coro.send, None)
    except StopIteration:
        return None
    resume = _resume(coro, yielded)
    resume.send(None)  # run to its first yield, so a cancel before the Task's first step reaches coro
    return asyncio.get_running_loop().create_task(resume, context=context)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> Generator[Any, Any, T]:
    """Continue ``coro`` from where :func:`start_eager` left it, relaying sends and throws."""
    try:
        yield  # primed by start_eager; the Task's first step resumes (or throws) here
    except BaseException as exc:  # cancelled before the Task ever ran: as asyncio would, cancel
        if isinstance(yielded, asyncio.Future):  # what coro waits on, then throw into coro
            yielded.cancel()
        try:
            yielded = coro.throw(exc)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # cancellation included: hand it to the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
