"""``agentbus scaler``'s own HTTP endpoint listens where ``--http-host`` (or its variable) says.

A real worker on a real nats-server is the scrape target; the scaler runs as the
subprocess the chart runs, in ``--dry-run`` (no Deployment to resize). It binds
127.0.0.2, a loopback address other than the default, so a host that was ignored
shows up as a refused connection there and an answer on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, WorkerProcess, wait_until

from bus.embedded import free_port

pytestmark = pytest.mark.integration

HOST = "127.0.0.2"  # not the default 127.0.0.1


def get(host: str, port: int, path: str) -> tuple[int, str]:
    """``(status, body)`` of a GET; ``(0, "")`` if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


class ScalerProcess:
    """``agentbus scaler --dry-run`` scraping one worker, its HTTP endpoint on ``port``."""

    def __init__(self, log_dir: Path, worker: WorkerProcess, *args: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = log_dir / "scaler.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
        clean["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agentbus",
                    "scaler",
                    "--dry-run",
                    "--scrape",
                    f"http://127.0.0.1:{worker.http_port}/metrics",
                    "--interval-s",
                    "1",
                    "--http-port",
                    str(self.port),
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**clean, **env},
            )

    def wait_ready(self, host: str, timeout_s: float = 30.0) -> None:
        """Wait for ``/readyz`` on ``host`` to answer 200."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                log = self.log_path.read_text(errors="replace")
                raise AssertionError(f"scaler exited {self.proc.returncode}:\n{log}")
            return get(host, self.port, "/readyz")[0] == 200

        wait_until(ready, timeout_s, f"the scaler's /readyz on {host}")

    def stop(self) -> int:
        """SIGTERM, then the exit code (SIGKILL past a bound)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_scaler(tmp_path: Path) -> Iterator[Callable[..., ScalerProcess]]:
    """Start ``agentbus scaler`` processes; stopped after the test."""
    started: list[ScalerProcess] = []

    def start(worker: WorkerProcess, *args: str, env: dict[str, str] | None = None) -> ScalerProcess:
        scaler = ScalerProcess(tmp_path, worker, *args, env=env or {})
        started.append(scaler)
        return scaler

    yield start
    for scaler in started:
        scaler.stop()


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--http-host", HOST), {}),
        ((), {"AGENTBUS_SCALER_HTTP_HOST": HOST}),
    ],
    ids=["flag", "env"],
)
def test_scaler_serves_probes_and_metrics_on_the_host_it_was_given(
    start_worker: Callable[..., WorkerProcess],
    start_scaler: Callable[..., ScalerProcess],
    args: tuple[str, ...],
    env: dict[str, str],
) -> None:
    worker = start_worker("w1", "--kind", "echo")
    scaler = start_scaler(worker, *args, env=env)
    scaler.wait_ready(HOST)
    assert get(HOST, scaler.port, "/healthz")[0] == 200
    status, metrics = get(HOST, scaler.port, "/metrics")
    assert status == 200
    assert "agentbus_scaler_current_replicas 1.0" in metrics  # the dry run's simulated pool
    assert get("127.0.0.1", scaler.port, "/readyz") == (0, "")  # nothing on the default host
    assert scaler.stop() == 0
