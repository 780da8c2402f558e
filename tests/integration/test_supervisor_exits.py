"""Which exits the local supervisor restarts: a crash or a lost connection yes, a usage or config error no.

Each replica is a small real Python process. The first run of the flaky replica exits
70 (a worker that lost NATS), the next exits 2 or 78 after a line on stderr: the
supervisor restarts it once, then gives up and reports that line.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from scaler.local import LocalSupervisor

pytestmark = pytest.mark.integration

FLAKY = """
import pathlib, sys, time
marker, code = pathlib.Path(sys.argv[1]), int(sys.argv[2])
if sys.argv[3] == "steady":
    time.sleep(600)
if not marker.exists():
    marker.write_text("ran")
    sys.exit(70)
print("agentbus: error: cannot import agent module 'nope'", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("code", [2, 78])
async def test_70_is_restarted_and_a_usage_or_config_error_is_not(tmp_path: Path, code: int) -> None:
    def command(name: str) -> list[str]:
        role = "flaky" if name == "w1" else "steady"
        return [sys.executable, "-c", FLAKY, str(tmp_path / name), str(code), role]

    supervisor = LocalSupervisor(command, stop_timeout_s=10, restart_backoff_s=0.1, give_up_on=(2, 78))
    try:
        await supervisor.scale_to(2)
        replica = supervisor.replicas["w1"]
        failure = await asyncio.wait_for(supervisor.failed(), 60)
        assert (failure.name, failure.code) == ("w1", code)
        assert failure.stderr_tail == ("agentbus: error: cannot import agent module 'nope'",)
        assert replica.exits == [70, code]
        assert replica.restarts == 1
        assert "w1" not in supervisor.replicas
        assert list(supervisor.pids()) == ["w2"]  # the others run on until the caller stops them
        await supervisor.scale_to(3)
        assert supervisor.size == 1  # nothing new is started after a failure
    finally:
        await supervisor.stop()
    assert supervisor.pids() == {}
