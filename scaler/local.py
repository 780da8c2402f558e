"""A local process supervisor: N worker processes, restarted when they crash, drained on stop.

Used by ``agentbus up``; the autoscaler's local actuator resizes it with
:meth:`LocalSupervisor.scale_to`. A replica that exits on its own with a non-zero
code (or a signal) is restarted with exponential backoff; a replica we asked to
stop (SIGTERM) is allowed its drain and not restarted. An exit code in ``give_up_on``
(a usage or configuration error: a restart would fail the same way) is not restarted
either: the supervisor records it as :attr:`LocalSupervisor.failure`, with the last
lines the replica wrote to stderr, and :meth:`LocalSupervisor.failed` returns it.

Each replica's stderr passes through this process line by line (to our stderr), so
its last lines are at hand when it fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["LocalSupervisor", "ReplicaFailure", "ReplicaInfo"]

log = logging.getLogger("agentbus.supervisor")

CommandFactory = Callable[[str], Sequence[str]]
"""Builds the command line of replica ``name``."""


@dataclass
class ReplicaInfo:
    """One supervised replica."""

    name: str
    seq: int = 0
    """Start order (1, 2, ...): the newest replica is the first to go when in-flight counts tie."""
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    retiring: bool = False
    exits: list[int] = field(default_factory=list)
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_TAIL_LINES))
    """The last lines the current process wrote to stderr."""


_TAIL_LINES = 20
_LINE_LIMIT = 1 << 20  # a longer stderr line is passed on in pieces


@dataclass(frozen=True)
class ReplicaFailure:
    """A replica that exited with a code the supervisor gives up on."""

    name: str
    code: int
    stderr_tail: tuple[str, ...]
    """Its last lines on stderr, oldest first."""


class LocalSupervisor:
    """Keeps ``size`` replicas alive until :meth:`stop`."""

    def __init__(
        self,
        command: CommandFactory,
        *,
        stop_timeout_s: float = 30.0,
        restart_backoff_s: float = 0.5,
        restart_backoff_max_s: float = 15.0,
        give_up_on: Collection[int] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._command = command
        self._give_up_on = frozenset(give_up_on)
        self._env = dict(env) if env is not None else None
        self.failure: ReplicaFailure | None = None
        """The first replica that exited with a code in ``give_up_on`` (None: none did)."""
        self._failed = asyncio.Event()
        self._stop_timeout_s = stop_timeout_s
        self._backoff_s = restart_backoff_s
        self._backoff_max_s = restart_backoff_max_s
        self.replicas: dict[str, ReplicaInfo] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._next = 0
        self._stopping = False
        self._pumps: dict[str, asyncio.Task[None]] = {}

    @property
    def size(self) -> int:
        """Replicas that are running or restarting (not retiring)."""
        return sum(1 for r in self.replicas.values() if not r.retiring)

    def active(self) -> list[ReplicaInfo]:
        """Replicas that are running or restarting (not retiring), oldest first."""
        return sorted((r for r in self.replicas.values() if not r.retiring), key=lambda r: r.seq)

    async def scale_to(self, n: int, *, retire: Sequence[str] = ()) -> None:
        """Start or retire replicas until ``n`` remain; ``retire`` names the preferred victims."""
        while self.size < n and self.failure is None:
            self._next += 1
            await self._spawn(ReplicaInfo(name=f"w{self._next}", seq=self._next))
        active = self.active()
        preferred = [r for r in active if r.name in retire]
        rest = [r for r in reversed(active) if r.name not in retire]  # newest first
        for replica in (preferred + rest)[: max(0, len(active) - n)]:
            await self._retire(replica)

    async def _spawn(self, replica: ReplicaInfo) -> None:
        self.replicas[replica.name] = replica
        await self._launch(replica)
        self._watchers[replica.name] = asyncio.create_task(self._watch(replica), name=f"watch-{replica.name}")

    async def _launch(self, replica: ReplicaInfo) -> None:
        argv = list(self._command(replica.name))
        replica.stderr_tail.clear()
        replica.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            limit=_LINE_LIMIT,
        )
        assert replica.process.stderr is not None
        self._pumps[replica.name] = asyncio.create_task(
            _pump(replica.process.stderr, replica.stderr_tail), name=f"stderr-{replica.name}"
        )
        log.info("started %s (pid %d)", replica.name, replica.process.pid)

    async def _watch(self, replica: ReplicaInfo) -> None:
        backoff = self._backoff_s
        loop = asyncio.get_running_loop()
        while True:
            assert replica.process is not None
            started = loop.time()
            code = await replica.process.wait()
            replica.exits.append(code)
            pump = self._pumps.pop(replica.name, None)
            if pump is not None:  # the last lines of stderr, unless a grandchild holds the pipe open
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pump), 2.0)
            if replica.retiring or self._stopping:
                log.info("%s exited with %d", replica.name, code)
                self.replicas.pop(replica.name, None)
                return
            if code in self._give_up_on:
                log.error("%s exited with %d: not restarting it", replica.name, code)
                self.replicas.pop(replica.name, None)
                if self.failure is None:
                    self.failure = ReplicaFailure(replica.name, code, tuple(replica.stderr_tail))
                    self._failed.set()
                return
            if loop.time() - started > 60:
                backoff = self._backoff_s
            log.warning("%s died (exit %d); restarting in %.1fs", replica.name, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max_s)
            if replica.retiring or self._stopping:
                self.replicas.pop(replica.name, None)
                return
            replica.restarts += 1
            await self._launch(replica)

    async def _retire(self, replica: ReplicaInfo) -> None:
        replica.retiring = True
        if replica.process is not None and replica.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                replica.process.send_signal(signal.SIGTERM)

    async def failed(self) -> ReplicaFailure:
        """Wait until a replica exits with a code in ``give_up_on``; return it."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def pids(self) -> dict[str, int]:
        """Live replicas' process ids by name."""
        return {
            r.name: r.process.pid
            for r in self.replicas.values()
            if r.process is not None and r.process.returncode is None
        }

    async def stop(self) -> None:
        """SIGTERM every replica, wait for their drains, SIGKILL the ones past the timeout."""
        self._stopping = True
        for replica in list(self.replicas.values()):
            await self._retire(replica)
        watchers = list(self._watchers.values())
        if watchers:
            _, pending = await asyncio.wait(watchers, timeout=self._stop_timeout_s)
            for replica in list(self.replicas.values()):
                if replica.process is not None and replica.process.returncode is None:
                    log.warning("%s did not drain in time: killing it", replica.name)
                    replica.process.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for pump in self._pumps.values():
            pump.cancel()


async def _pump(stream: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    """Pass a replica's stderr on to ours, whole lines at a time, keeping the last ones."""
    while True:
        try:
            line = (await stream.readline()).decode("utf-8", "replace")
        except ValueError:  # asyncio drops a line longer than the limit
            line = f"[a stderr line over {_LINE_LIMIT} bytes was dropped]\n"
        if not line:
            return
        tail.append(line.rstrip("\n"))
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(line)
            sys.stderr.flush()


def python_command(*args: str) -> list[str]:
    """``python -m agentbus <args>`` with this interpreter."""
    return [sys.executable, "-m", "agentbus", *args]
