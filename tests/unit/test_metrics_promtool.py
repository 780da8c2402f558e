"""/metrics of a real worker passes ``promtool check metrics`` and carries the scaler's inputs."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Callable

import pytest
from conftest import WorkerProcess, async_wait_until
from nats.aio.client import Client

from bus.publisher import Publisher

REQUIRED = (
    "agentbus_tasks_total",
    "agentbus_handler_seconds",
    "agentbus_inflight",
    "agentbus_consumer_pending",
    "agentbus_dead_letters_total",
    "process_cpu_seconds_total",
    "agentbus_prefetched",
    "agentbus_state_tenants",
    "agentbus_state_gossip_peers",
    "agentbus_state_gossip_packets_total",
)


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


@pytest.mark.integration
async def test_metrics_pass_promtool(nc: Client, start_worker: Callable[..., WorkerProcess]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: `make test` installs it (Debian package `prometheus`), "
            "or run `apt-get install -y --no-install-recommends prometheus`"
        )
    worker = start_worker("w1", "--kind", "echo")
    pub = Publisher(nc)
    for i in range(5):
        result = await pub.call("acme", "echo", {"text": f"t{i}"}, timeout_s=30)
        assert result.ok
    rejected = await pub.call("acme", "echo", {"text": "bad", "fail": "reject"}, timeout_s=30)
    assert not rejected.ok

    def consumer_read() -> bool:
        return 'agentbus_consumer_pending{kind="echo"}' in worker.get("/metrics")[1]

    await async_wait_until(consumer_read, 30, "consumer pending counts in /metrics")
    status, text = worker.get("/metrics")
    assert status == 200

    check = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(check.communicate(text.encode()), 60)
    assert check.returncode == 0, out.decode()

    samples = _samples(text)
    names = {key.split("{", 1)[0] for key in samples}
    missing = [n for n in REQUIRED if n not in names and f"{n}_count" not in names]
    assert missing == []
    assert samples['agentbus_tasks_total{kind="echo",outcome="ok",tenant="acme"}'] == 5
    assert samples['agentbus_dead_letters_total{kind="echo",reason="rejected",tenant="acme"}'] == 1
    assert samples['agentbus_handler_seconds_count{kind="echo"}'] == 6
    assert samples['agentbus_inflight{kind="echo"}'] == 0
    assert samples["process_cpu_seconds_total"] > 0
    assert samples['agentbus_worker_state{state="running"}'] == 1


def test_promtool_flags_a_broken_exposition() -> None:
    """The check above is only worth something if promtool rejects bad input."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make test` installs it (Debian package `prometheus`)")
    bad = b"# TYPE agentbus_x counter\nagentbus_x 1\n"  # a counter without the _total suffix
    check = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, timeout=60)
    assert check.returncode != 0
