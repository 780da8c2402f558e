"""start_eager and step_eager: run the first step inline, make a Task only when the coroutine suspends."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from agents._eager import Finished, start_eager, step_eager

var: contextvars.ContextVar[str] = contextvars.ContextVar("test_eager_var", default="unset")


async def test_synchronous_completion_returns_none_and_ran_inline() -> None:
    ran: list[str] = []

    async def quick() -> int:
        ran.append("done")
        return 42

    assert start_eager(quick(), contextvars.copy_context()) is None
    assert ran == ["done"]  # ran before start_eager returned, without a loop turn


async def test_suspension_returns_a_task_with_the_result() -> None:
    steps: list[str] = []

    async def slow() -> str:
        steps.append("first")
        await asyncio.sleep(0)
        steps.append("second")
        return "result"

    task = start_eager(slow(), contextvars.copy_context())
    assert isinstance(task, asyncio.Task)
    assert steps == ["first"]  # the first step ran inline
    assert await task == "result"
    assert steps == ["first", "second"]


async def test_a_future_awaited_after_suspension_delivers_its_value() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def waits() -> int:
        return await fut + 1

    task = start_eager(waits(), contextvars.copy_context())
    assert task is not None
    assert not task.done()
    fut.set_result(1)
    assert await task == 2


async def test_exceptions_after_suspension_reach_the_task() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    task = start_eager(fails(), contextvars.copy_context())
    assert task is not None
    with pytest.raises(ValueError, match="boom"):
        await task


async def test_context_vars_set_inside_do_not_leak_and_persist_across_suspension() -> None:
    seen: list[str] = []

    async def handler(value: str) -> None:
        var.set(value)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(var.get())

    var.set("caller")
    tasks = [start_eager(handler(f"tenant-{i}"), contextvars.copy_context()) for i in range(5)]
    assert var.get() == "caller"  # the first steps ran in their own contexts
    await asyncio.gather(*[t for t in tasks if t is not None])
    assert sorted(seen) == [f"tenant-{i}" for i in range(5)]
    assert var.get() == "caller"


async def test_context_set_before_start_is_seen_by_the_coroutine() -> None:
    ctx = contextvars.copy_context()
    ctx.run(var.set, "prepared")
    seen: list[str] = []

    async def read() -> None:
        seen.append(var.get())
        await asyncio.sleep(0)
        seen.append(var.get())

    task = start_eager(read(), ctx)
    assert task is not None
    await task
    assert seen == ["prepared", "prepared"]
    assert var.get() == "unset"


async def test_synchronous_completion_does_not_leak_context() -> None:
    async def sets() -> None:
        var.set("inside")

    assert start_eager(sets(), contextvars.copy_context()) is None
    assert var.get() == "unset"


@pytest.mark.parametrize("loop_turns_before_cancel", [0, 1, 3])
async def test_cancellation_propagates_into_the_coroutine(loop_turns_before_cancel: int) -> None:
    """Also when the Task is cancelled before its first step (a drain right after delivery)."""
    started = asyncio.Event()
    cleanup: list[str] = []

    async def long() -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cleanup.append("cancelled")
            raise
        finally:
            cleanup.append("finally")

    task = start_eager(long(), contextvars.copy_context())
    assert task is not None
    assert started.is_set()
    for _ in range(loop_turns_before_cancel):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert cleanup == ["cancelled", "finally"]


async def test_early_cancellation_cancels_the_awaited_future() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        await fut

    task = start_eager(waits(), contextvars.copy_context())
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.cancelled()


@pytest.mark.parametrize("loop_turns_before_cancel", [0, 1])
async def test_a_coroutine_may_swallow_cancellation_and_return(loop_turns_before_cancel: int) -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "handed back"
        return "finished"

    task = start_eager(stubborn(), contextvars.copy_context())
    assert task is not None
    for _ in range(loop_turns_before_cancel):
        await asyncio.sleep(0)
    task.cancel()
    assert await task == "handed back"


async def test_many_suspensions_relay_every_value() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()

    async def consumer() -> int:
        total = 0
        for _ in range(100):
            total += await q.get()
        return total

    task = start_eager(consumer(), contextvars.copy_context())
    assert task is not None
    for i in range(100):
        q.put_nowait(i)
        await asyncio.sleep(0)
    assert await task == sum(range(100))


async def test_step_eager_reports_what_a_finished_coroutine_returned_or_raised() -> None:
    async def returns() -> int:
        return 7

    async def raises() -> None:
        raise KeyError("k")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    assert step_eager(returns(), contextvars.copy_context()) == Finished(7, None)
    finished = step_eager(raises(), contextvars.copy_context())
    assert isinstance(finished, Finished)
    assert isinstance(finished.error, KeyError)
    finished = step_eager(cancelled(), contextvars.copy_context())
    assert isinstance(finished, Finished)
    assert isinstance(finished.error, asyncio.CancelledError)


async def test_step_eager_gives_a_suspended_coroutine_a_task_in_its_context() -> None:
    context = contextvars.copy_context()
    context.run(var.set, "scoped")

    async def reads_later() -> str:
        await asyncio.sleep(0)
        return var.get()

    task = step_eager(reads_later(), context)
    assert isinstance(task, asyncio.Task)
    assert await task == "scoped"
    assert var.get() == "unset"  # nothing leaked into the caller's context


async def test_in_own_task_runs_in_another_task_times_out_and_cancels_with_its_caller() -> None:
    from agents._eager import in_own_task

    async def where() -> asyncio.Task[object] | None:
        await asyncio.sleep(0)
        return asyncio.current_task()

    outer: list[asyncio.Task[object] | None] = []

    async def handler() -> asyncio.Task[object] | None:
        outer.append(asyncio.current_task())  # in its eager first step: the caller's task
        return await in_own_task(where())

    task = start_eager(handler(), contextvars.copy_context())
    assert task is not None
    inner = await task
    assert inner is not None
    assert inner is not outer[0]
    assert inner is not task
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await in_own_task(forever(), 0.01)
    assert cancelled.is_set()  # a timed-out call is cancelled, not left running
    cancelled.clear()
    caller = asyncio.ensure_future(in_own_task(forever()))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert cancelled.is_set()  # cancelling the caller cancels the call
