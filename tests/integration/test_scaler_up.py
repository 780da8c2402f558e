"""``agentbus up --autoscale --min 1 --max 2``, the real command: a backlog adds a worker, Ctrl-C drains.

The resize is printed on ``up``'s output with its reason (no ``--log-level`` needed).

The command runs as a subprocess in a temp directory; its ``.agentbus/up.json`` is
rewritten as workers come and go, which is how the test (and ``agentbus status``)
sees the pool grow.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agents.builtin.basic import EchoIn
from bus.connection import connect
from bus.publisher import Publisher, TaskSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


async def wait_for_state(path: Path, check: object, what: str, timeout_s: float = 60.0) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        state = _read_state(path)
        if state is not None and check(state):  # type: ignore[operator]
            return state
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _read_state(path: Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state


def _start_up(tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentbus",
                "up",
                "--workers",
                "1",
                "--kind",
                "echo",
                "--max-inflight",
                "1",
                "--autoscale",
                "--min",
                "1",
                "--max",
                "2",
                "--target-queue-depth",
                "1",
            ],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def test_up_autoscale_adds_a_worker_for_a_backlog_and_drains_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    proc = _start_up(tmp_path, log)
    state_file = tmp_path / ".agentbus" / "up.json"
    try:
        state = await wait_for_state(state_file, lambda s: "nats_url" in s, "up.json")
        nc = await connect(str(state["nats_url"]), name="test-up-autoscale")
        try:
            pub = Publisher(nc)
            await pub.submit_many(
                TaskSpec("acme", "echo", EchoIn(text=str(i), sleep_s=1.0)) for i in range(20)
            )
        finally:
            await nc.close()
        grown = await wait_for_state(
            state_file, lambda s: len(s.get("metrics_ports", {})) == 2, "a second worker"
        )
        ports = grown["metrics_ports"]
        assert isinstance(ports, dict)
        assert set(ports) == {"w1", "w2"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = _read_text(log)
    # each resize is printed by default, with its reason: sizes, the deciding metric, value vs target
    assert "agentbus up: resized 1 -> 2 workers (scale_up: queue_depth=" in text, text[-3000:]
    assert "target=1 -> " in text
    assert "metrics: " in text
    assert "vs target 1" in text
    assert "draining workers" in text


def _read_text(path: Path) -> str:
    return path.read_text()
