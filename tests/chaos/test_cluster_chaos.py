"""The short form of ``make chaos``: fault rounds against a 3-node R3 cluster, judged by the checker.

Two rounds, each with a worker ``kill -9`` at the fault's start: the stream leader killed
(restarted with its data) and the stream leader cut off from its peers by the route
proxies. The long form (20 rounds, every fault, R3 against R1) is ``make chaos``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chaos import ChaosConfig, run

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


async def test_no_acknowledged_task_is_lost_under_leader_kill_and_partition(tmp_path: Path) -> None:
    cfg = ChaosConfig(
        rounds=2,
        faults=("kill_leader", "partition"),
        rate_per_s=100.0,
        healthy_s=1.5,
        hold_s=3.0,
        worker_kill_every=1,
        burst=0,
        drain_timeout_s=90.0,
        lag_timeout_s=5.0,
    )
    summary = await run(cfg, tmp_path)
    assert summary["rounds"] == 2
    assert summary["worker_kills"] == 2
    assert summary["acked"] > 300, summary  # load ran through both rounds
    assert summary["lost"] == 0, summary
    assert summary["violations"] == {}, summary
    assert summary["dead_lettered"] >= 1  # poison tasks reached the DLQ through the faults
    assert summary["completed"] + summary["dead_lettered"] >= summary["acked"]
    assert set(summary["by_fault"]) == {"kill_leader", "partition"}
    assert summary["recovery_s_p50"] is not None
