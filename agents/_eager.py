"""Eager start of coroutines: run the first step now, make a task only if it suspends.

Most agent handlers on the hot path (and every no-op) finish without ever
suspending. Creating an ``asyncio.Task`` for each costs about as much as the whole
rest of a message's processing, so :func:`start_eager` drives the coroutine's
first step inline and wraps only a suspended coroutine in a Task, exactly what
Python 3.12's ``asyncio.eager_task_factory`` does, but available on 3.11 too.

The first step runs inside ``context`` and the continuing task is created with the
same context, so context variables (the tenant scope) set before and during the
first step are seen by the rest of the coroutine and never leak into the caller.

The Task drives a :class:`_Resume`, a slotted relay rather than a generator: it
is created for every suspended message and kept while it is in flight, and an
object of two slots costs 56 bytes where a generator frame costs about 250.
"""

from __future__ import annotations

import asyncio
import collections.abc
from collections.abc import Coroutine, Generator
from contextvars import Context
from typing import Any, NamedTuple, TypeVar

__all__ = ["Finished", "in_own_task", "start_eager", "step_eager"]

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
    return asyncio.get_running_loop().create_task(_Resume(coro, yielded), context=context)


class Finished(NamedTuple):
    """How a coroutine that :func:`step_eager` ran to its end ended: its value or its error."""

    value: Any
    error: BaseException | None


def step_eager(coro: Coroutine[Any, Any, T], context: Context) -> asyncio.Task[T] | Finished:
    """:func:`start_eager` for a coroutine whose outcome the caller handles: what it returned or
    raised (any ``Exception`` or a cancellation) if it finished in its first step, else its Task."""
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        return Finished(stop.value, None)
    except (Exception, asyncio.CancelledError) as exc:
        return Finished(None, exc)
    return asyncio.get_running_loop().create_task(_Resume(coro, yielded), context=context)


async def in_own_task(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Await ``coro`` in a Task of its own, within ``timeout_s`` (TimeoutError past it; it is cancelled).

    For code that must enter and leave in one task (anyio's cancel scopes: the MCP SDK,
    httpx) or reads ``current_task()`` (``asyncio.timeout``) while a handler may still be
    in its eager first step, which runs in the worker's own task until it first suspends.
    The timeout is a timer, not ``asyncio.timeout``, for the same reason; cancelling the
    caller cancels ``coro`` too.
    """
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.wait((task,))
        raise TimeoutError(f"no answer within {timeout_s:g}s")
    return task.result()


_RESUMED: Any = object()


class _Resume(collections.abc.Coroutine):  # type: ignore[type-arg]
    """``coro`` after its first step, for a Task to drive: its first step gets what coro awaits."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._first = yielded  # what coro waits on; _RESUMED once the Task has taken it

    def send(self, value: Any) -> Any:
        """The Task's step: hand over what coro awaits, then relay every value to coro."""
        first = self._first
        if first is _RESUMED:
            return self._coro.send(value)
        self._first = _RESUMED
        return first

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Relay an exception (cancellation) to coro, also before the Task's first step."""
        first = self._first
        if first is not _RESUMED:  # cancelled before the Task ever ran: as asyncio would,
            self._first = _RESUMED  # cancel what coro waits on, then throw into coro
            if isinstance(first, asyncio.Future):
                first.cancel()
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        """Close coro."""
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self.send(None)

    # what a Task's repr and get_stack() read: show the coroutine, not the relay
    @property
    def __name__(self) -> str:
        """The coroutine's qualified name."""
        return str(getattr(self._coro, "__qualname__", "coroutine"))

    @property
    def cr_code(self) -> Any:
        """The coroutine's code object."""
        return getattr(self._coro, "cr_code", None)

    @property
    def cr_frame(self) -> Any:
        """The coroutine's current frame."""
        return getattr(self._coro, "cr_frame", None)
