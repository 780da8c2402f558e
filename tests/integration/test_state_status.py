"""``agentbus status`` shows the shared state: tenant usage and live agents, from gossip.

Two real ``agentbus worker`` processes (gossip on the ``test`` preset) serve echo tasks
of two tenants and one bad task; ``agentbus status --json`` and the table, run as a
user would, show each tenant's completed and failed tasks and both workers live;
after one worker drains, it is gone from the live agents and no count is lost. The
time from the last result to a status that counts it is printed (the gossip lag a
user sees).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from conftest import ROOT, WorkerProcess, wait_until
from helpers_a import consumer_totals
from nats.aio.client import Client

from agentbus.cli.status import query_state
from bus.publisher import Publisher

pytestmark = pytest.mark.integration


def status(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``agentbus status`` to completion, as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "agentbus", "status", "--nats-url", nats_url, "--interval-s", "0.1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def state_of(nats_url: str) -> dict[str, Any] | None:
    done = status(nats_url, "--json")
    assert done.returncode == 0, done.stderr
    state: dict[str, Any] | None = json.loads(done.stdout)["state"]
    return state


async def test_status_shows_tenant_usage_and_live_agents(
    nats_url: str, nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    assert state_of(nats_url) is None  # no worker yet: no answer, and no error
    w1 = start_worker("w1", "--gossip-preset", "test", "--max-deliver", "1")
    w2 = start_worker("w2", "--gossip-preset", "test", "--max-deliver", "1")
    pub = Publisher(nc)
    # a tenant's consumer exists once it has tasks: one each, then both workers find both
    # tenants (a standing pull request each) before the load, so both take part
    await asyncio.gather(*(pub.call(t, "echo", {"text": "warm"}, timeout_s=30) for t in ("acme", "globex")))
    for _ in range(600):
        if (await consumer_totals(nc, "echo")).num_waiting >= 4:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the two workers' pull requests never reached the server")

    calls = [pub.call("acme", "echo", {"text": f"a{i}"}, timeout_s=30) for i in range(19)]
    calls += [pub.call("globex", "echo", {"text": f"g{i}"}, timeout_s=30) for i in range(4)]
    calls.append(pub.call("globex", "echo", {"nope": 1}, timeout_s=30))  # dead-lettered: a failure
    results = await asyncio.gather(*calls)
    finished = time.monotonic()
    assert sum(r.ok for r in results) == 23
    assert {r.worker for r in results if r.ok} == {"w1", "w2"}
    want = {
        "acme": {"tasks_completed": 20, "tasks_failed": 0, "llm_tokens": 0},
        "globex": {"tasks_completed": 5, "tasks_failed": 1, "llm_tokens": 0},
    }

    # the lag a user sees, without the CLI's own start-up: the query `status` sends, in a loop
    while True:
        report = await query_state(nc)
        if report is not None and msgspec.to_builtins(report.tenants) == want:
            break
        assert time.monotonic() - finished < 20, f"usage never converged: {report}"
        await asyncio.sleep(0.01)
    print(f"the state query counted every task {time.monotonic() - finished:.3f}s after the last result")

    seen: dict[str, Any] = {}

    def converged() -> bool:
        state = state_of(nats_url)
        seen["state"] = state
        return state is not None and state["tenants"] == want and state["live_agents"] == ["w1", "w2"]

    await asyncio.to_thread(wait_until, converged, 20, "status showing the usage of both workers")
    state = seen["state"]
    assert state["gossip"] is True
    assert state["worker"] in ("w1", "w2")
    assert state["peers"] == 1
    assert state["tenants_total"] == 2

    table = status(nats_url)
    assert table.returncode == 0, table.stderr
    for text in ("Tenant usage (cluster-wide, from gossip)", "acme", "globex", "Live agents (2): w1, w2"):
        assert text in table.stdout, table.stdout

    w2.stop()  # drains: hands its counts over and leaves the live set
    assert w2.proc.returncode == 0, w2.log()

    def w1_alone() -> bool:
        state = state_of(nats_url)
        return state is not None and state["live_agents"] == ["w1"] and state["tenants"] == want

    await asyncio.to_thread(wait_until, w1_alone, 20, "w2 gone from the live agents, counts kept")
    assert "shared state: replica" in w1.log()


def test_status_without_gossip_says_the_counts_are_one_workers(
    nats_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker("solo", "--no-gossip")
    done = status(nats_url)
    assert done.returncode == 0, done.stderr
    assert "Tenant usage (worker solo only: gossip is off)" in done.stdout
    assert "Live agents (1): solo" in done.stdout
