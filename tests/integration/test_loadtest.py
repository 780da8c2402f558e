"""The Locust load test end to end: ``python -m loadtest.run`` against a real nats-server and workers.

Each run is short (<= 10 s of load) and headless. The tests read Locust's own JSON
report and compare it with what the cluster counted, read here independently of the
gate's code: the workers' ``/metrics`` and nats-server's ``/jsz`` monitoring endpoint.
The first tests need no server: the SLO file and the gate's arithmetic.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, WorkerProcess
from prometheus_client.parser import text_string_to_metric_families

from agentbus.errors import ConfigError
from bus.connection import connect
from bus.embedded import EmbeddedNats
from bus.topology import ensure_streams
from loadtest.cluster_counts import ClusterDelta
from loadtest.locust_report import LocustReport, Tally
from loadtest.slo import SLO_FILE, judge, load_scenarios


def test_the_shipped_slo_file_has_every_scenario_with_its_locust_class() -> None:
    scenarios = load_scenarios()
    assert {name: s.user_class for name, s in scenarios.items()} == {
        "steady": "SteadyUser",
        "spike": "SpikeUser",
        "noisy": "NoisyNeighbourUser",
        "long": "LongTaskUser",
    }
    assert all(s.slo.max_failure_ratio == 0 and s.slo.p99_ms for s in scenarios.values())
    assert scenarios["long"].slo.min_peak_workers >= 2  # the autoscaler must act


def test_a_typo_in_the_slo_file_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "slo.toml"
    bad.write_text(SLO_FILE.read_text().replace("max_failure_ratio", "max_failure_rate", 1))
    with pytest.raises(ConfigError, match="max_failure_rate"):
        load_scenarios(bad)


def _delta(*, stored: int, completed: int, dead: int = 0, queued: int = 0) -> ClusterDelta:
    return ClusterDelta(
        stored=stored,
        queued=queued,
        dlq_stored=dead,
        completed=Counter({"acme": completed}),
        dead_lettered=Counter({"acme": dead}),
        lost_endpoints=(),
        workers=1,
    )


def _report(requests: int) -> LocustReport:
    """``requests`` tasks of tenant acme, half submitted, half called, all fast and successful."""
    half = requests // 2
    groups = {
        (rtype, "acme"): Tally(requests=n, published=n, times_ms=Counter({5: n}))
        for rtype, n in (("submit", half), ("call", requests - half))
    }
    return LocustReport(groups=groups, errors={})


def test_the_gate_passes_exact_accounting_and_fails_a_task_completed_twice() -> None:
    steady = load_scenarios()["steady"]
    assert judge("steady", steady, _report(10), _delta(stored=10, completed=10)).passed
    # A task redelivered while still running (a missed heartbeat) completes twice.
    twice = judge("steady", steady, _report(10), _delta(stored=10, completed=11))
    assert not twice.passed
    assert [c.name for c in twice.checks if not c.ok] == [
        "lost (published - completed - dead-lettered)",
        "lost of tenant acme",
    ]
    # Stored but never finished: lost, and left in TASKS.
    stuck = judge("steady", steady, _report(10), _delta(stored=10, completed=7, queued=3))
    assert {c.name for c in stuck.checks if not c.ok} == {
        "lost (published - completed - dead-lettered)",
        "left in TASKS",
        "lost of tenant acme",
    }


def run_loadtest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m loadtest.run <args> --quiet --reports <cwd>/reports`` to completion."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "loadtest.run", *args, "--quiet", "--reports", str(cwd / "reports")],
        cwd=cwd,  # no .agentbus/up.json of the developer's own cluster is picked up
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def locust_stats(cwd: Path, scenario: str) -> list[dict[str, Any]]:
    """Locust's ``--json-file`` report: one entry per (request type, name)."""
    stats: list[dict[str, Any]] = json.loads((cwd / "reports" / f"{scenario}.json").read_text())
    return stats


def verdict(cwd: Path, scenario: str) -> dict[str, Any]:
    """The gate's verdict file."""
    out: dict[str, Any] = json.loads((cwd / "reports" / f"{scenario}.slo.json").read_text())
    return out


def checks(v: dict[str, Any]) -> dict[str, bool]:
    """Check name -> passed."""
    return {c["name"]: c["ok"] for c in v["checks"]}


def worker_counts(worker: WorkerProcess) -> dict[str, Counter[str]]:
    """Outcome -> tenant -> tasks, from the worker's own ``/metrics``."""
    status, body = worker.get("/metrics")
    assert status == 200
    out: dict[str, Counter[str]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == "agentbus_tasks_total":
                out.setdefault(s.labels["outcome"], Counter())[s.labels["tenant"]] += int(s.value)
    return out


def stream_state(server: EmbeddedNats, stream: str) -> dict[str, Any]:
    """A stream's state as nats-server's monitoring endpoint reports it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/jsz?streams=true", timeout=5) as r:
        jsz = json.load(r)
    for account in jsz.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                state: dict[str, Any] = detail["state"]
                return state
    raise AssertionError(f"no stream {stream} in /jsz")


def requests_by_tenant(stats: list[dict[str, Any]]) -> Counter[str]:
    """Locust requests per tenant (request names are ``<tenant>/<kind>``)."""
    out: Counter[str] = Counter()
    for e in stats:
        out[e["name"].split("/", 1)[0]] += e["num_requests"]
    return out


def explain(result: subprocess.CompletedProcess[str]) -> str:
    out, err = result.stdout[-6000:], result.stderr[-6000:]
    return f"exit {result.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


@pytest.mark.integration
@pytest.mark.slow
def test_locust_totals_equal_the_cluster_counters_and_the_gate_passes(
    nats_server: EmbeddedNats, start_worker: Any, tmp_path: Path
) -> None:
    worker = start_worker("w1")
    result = run_loadtest(
        tmp_path,
        "--scenario", "steady",
        "--nats-url", nats_server.url,
        "--metrics", f"http://127.0.0.1:{worker.http_port}/metrics",
        "--duration-s", "8", "--users", "5", "--task-rate", "10",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)

    stats = locust_stats(tmp_path, "steady")
    requests = sum(e["num_requests"] for e in stats)
    assert sum(e["num_failures"] for e in stats) == 0
    assert requests >= 100, "5 users x 10 tasks/s x 8 s should publish ~400 tasks"
    assert {e["method"] for e in stats} == {"submit", "call"}
    assert {e["name"].split("/")[1] for e in stats} == {"echo", "summarize", "order"}

    # Every Locust request is one task: the worker completed exactly those, tenant by tenant.
    counts = worker_counts(worker)
    assert sum(counts["ok"].values()) == requests
    assert counts["ok"] == requests_by_tenant(stats)
    assert sum(counts.get("dead_lettered", Counter()).values()) == 0
    tasks = stream_state(nats_server, "TASKS")
    assert tasks["last_seq"] == requests  # JetStream stored exactly what Locust counted
    assert tasks["messages"] == 0  # and nothing is left

    v = verdict(tmp_path, "steady")
    assert v["passed"] is True
    assert all(checks(v).values()), v["checks"]
    assert "steady: PASS" in result.stdout
    html = (tmp_path / "reports" / "steady.html").read_text()
    assert "acme/echo" in html  # Locust's HTML report names the requests by tenant/kind


async def _provision(url: str) -> None:
    nc = await connect(url, name="test")
    await ensure_streams(nc.jetstream())
    await nc.close()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("streams", [True, False], ids=["stream-without-consumer", "no-stream"])
def test_without_workers_the_run_fails_and_the_gate_exits_nonzero(
    nats_server: EmbeddedNats, tmp_path: Path, streams: bool
) -> None:
    if streams:
        asyncio.run(_provision(nats_server.url))
    result = run_loadtest(
        tmp_path,
        "--scenario", "steady",
        "--nats-url", nats_server.url,
        "--duration-s", "4", "--users", "3", "--task-rate", "5",
        "--result-timeout-s", "1", "--settle-s", "1",
    )  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "steady: FAIL" in result.stdout

    stats = locust_stats(tmp_path, "steady")
    requests = sum(e["num_requests"] for e in stats)
    failures = sum(e["num_failures"] for e in stats)
    assert requests > 0
    assert failures > 0
    v = verdict(tmp_path, "steady")
    assert v["passed"] is False
    assert checks(v)["failure ratio"] is False
    if streams:
        # Submits were stored (JetStream acked them), calls timed out waiting for a Result.
        assert set(v["errors"]) == {"timeout:result"}
        assert failures == v["errors"]["timeout:result"]
        assert checks(v)["left in TASKS"] is False
        assert checks(v)["lost (published - completed - dead-lettered)"] is False
        # Even a failing run is counted exactly: every request was stored (a timed-out call too).
        assert checks(v)["stored by JetStream (TASKS)"] is True
        assert stream_state(nats_server, "TASKS")["last_seq"] == requests
    else:
        # No stream takes the subject: JetStream has no responder and every publish is refused.
        assert v["errors"] == {"refused:no_stream": requests}
        assert failures == requests


@pytest.mark.integration
@pytest.mark.slow
def test_noisy_neighbour_reports_each_tenants_latency_in_distributed_mode(
    nats_server: EmbeddedNats, start_worker: Any, tmp_path: Path
) -> None:
    # 32 slots (28 for one tenant among others) against 40-145 noisy 1 s tasks a second (by the
    # machine's load): a real backlog (with echo's 256 slots there was none: no fairness to measure).
    worker = start_worker("w1", "--max-inflight", "32")
    # This test is about distributed-mode reporting. Its gate on the quiet tenants' p99 is set
    # to 20x here (3x in slo.toml, which `make loadtest` and the fairness benchmark hold): with a
    # handful of quiet calls per tenant, p99 is the slowest one, and on a loaded 2-core machine
    # one call in a few hundred still waits 0.2-0.9 s (docs/loadtest.md, "What the noisy gate
    # measures"). Arrival order (AGENTBUS_FAIRNESS=kind) measured 128x: this still catches it.
    text = SLO_FILE.read_text()
    assert "max_quiet_p99_ratio = 3.0" in text
    slo_file = tmp_path / "slo.toml"
    slo_file.write_text(text.replace("max_quiet_p99_ratio = 3.0", "max_quiet_p99_ratio = 20.0"))
    result = run_loadtest(
        tmp_path,
        "--scenario", "noisy",
        "--slo-file", str(slo_file),
        "--nats-url", nats_server.url,
        "--metrics", f"http://127.0.0.1:{worker.http_port}/metrics",
        "--duration-s", "10", "--users", "10", "--task-rate", "15",
        "--processes", "2",  # Locust's distributed mode: a master and two worker processes
    )  # fmt: skip
    assert result.returncode == 0, explain(result)

    v = verdict(tmp_path, "noisy")
    rows = {row["tenant"]: row for row in v["tenants"]}
    quiet_tenants = ("acme", "globex", "initech")
    assert set(rows) == {"noisy", *quiet_tenants, *(f"calm-{t}" for t in quiet_tenants)}
    assert rows["noisy"]["call_p50_ms"] is None, "the noisy tenant only fires and forgets"
    assert any(c["name"].startswith("quiet p99 / calm p99") and c["ok"] for c in v["checks"])
    measured = {t for t, row in rows.items() if row["call_p50_ms"] is not None}
    assert measured & set(quiet_tenants)
    assert measured & {f"calm-{t}" for t in quiet_tenants}
    for tenant, row in rows.items():
        assert row["published"] == row["completed"], tenant  # per tenant, against the worker's counters
        if tenant == "noisy":
            continue
        assert row["requests"] >= 10, tenant  # each of the 10 users warms each tenant's lane first
        if tenant in measured:  # a tenant drawn ~1% of the time may have no measured call
            assert row["call_p50_ms"] <= row["call_p99_ms"]
    quiet = max(rows[t]["requests"] for t in quiet_tenants) - 10  # the measured ones
    assert rows["noisy"]["requests"] > 20 * quiet, "the noisy tenant sends ~100x each quiet one"
    for tenant in rows:
        assert tenant in result.stdout  # the per-tenant table is printed
    assert "call p99" in result.stdout

    # Distributed mode aggregates exactly: Locust's totals are the worker's and JetStream's.
    stats = locust_stats(tmp_path, "noisy")
    requests = sum(e["num_requests"] for e in stats)
    assert worker_counts(worker)["ok"] == requests_by_tenant(stats)
    assert stream_state(nats_server, "TASKS")["last_seq"] == requests
