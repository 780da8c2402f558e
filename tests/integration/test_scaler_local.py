"""The local actuator over real processes: scale-down retires the idlest replicas first, with SIGTERM.

Each replica is a small Python process serving ``/metrics`` with a fixed
``agentbus_inflight`` (or nothing at all: unknown counts as busy) and exiting 0 on
SIGTERM, as a draining worker does. The file_sd file follows the live replicas.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from bus.embedded import free_port
from scaler.actuators.local import LocalActuator
from scaler.local import LocalSupervisor

pytestmark = pytest.mark.integration

FAKE_WORKER = """
import http.server, os, signal, sys, time
port, inflight = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
if inflight == "silent":
    while True:
        time.sleep(1)
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('agentbus_inflight{kind="echo"} %s\\n' % inflight).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Metrics).serve_forever()
"""

INFLIGHT = {"w1": "3", "w2": "0", "w3": "1", "w4": "silent", "w5": "0"}


async def wait_for(check: object, what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_scale_down_retires_the_idlest_first_and_file_sd_follows(tmp_path: Path) -> None:
    ports: dict[str, int] = {}

    def command(name: str) -> list[str]:
        ports[name] = ports.get(name) or free_port()
        return [sys.executable, "-c", FAKE_WORKER, str(ports[name]), INFLIGHT[name]]

    supervisor = LocalSupervisor(command, stop_timeout_s=10)
    file_sd = tmp_path / "targets.json"
    act = LocalActuator(supervisor, ports, file_sd_path=file_sd)
    replicas = {}
    try:
        result = await act.scale(5)
        assert (result.before, result.after, await act.current()) == (0, 5, 5)
        replicas = dict(supervisor.replicas)

        async def all_answer() -> bool:
            counts = await act.inflight()
            return sum(1 for v in counts.values() if v != float("inf")) == 4  # w4 never answers

        await wait_for(all_answer, "the fake workers' /metrics")
        assert json.loads(file_sd.read_text())[0]["targets"] == [
            f"127.0.0.1:{ports[n]}" for n in sorted(ports)
        ]

        result = await act.scale(2)
        # idle first (w5 before w2: the newest goes first on a tie), then w3 with 1 in flight;
        # w1 (3 in flight) and w4 (unknown, so treated as busy) stay.
        assert result.retired == ("w5", "w2", "w3")
        assert result.inflight == {"w1": 3, "w2": 0, "w3": 1, "w4": float("inf"), "w5": 0}
        assert await act.current() == 2

        async def retired_exited() -> bool:
            return all(replicas[n].exits for n in result.retired)

        await wait_for(retired_exited, "the retired replicas to exit")
        assert all(replicas[n].exits == [0] for n in result.retired)  # SIGTERM, not SIGKILL
        await act.current()  # refreshes the file_sd file
        assert json.loads(file_sd.read_text())[0]["targets"] == [
            f"127.0.0.1:{ports[n]}" for n in ("w1", "w4")
        ]
        assert sorted(supervisor.replicas) == ["w1", "w4"]
    finally:
        await supervisor.stop()
        await act.aclose()
