"""Autoscaler reaction time: backlog -> scale decision, and backlog -> the new replica consuming.

Each trial starts a fresh nats-server and one real worker (``echo``, 2 slots, consumer
pending refreshed every second), runs the local autoscaler (1 s period) reading either
the workers' ``/metrics`` directly (the embedded default) or a real Prometheus
scraping every second, waits until the scaler has seen an idle pool, then publishes
a burst of slow tasks. Measured from the moment the burst is stored:

* ``decision_s``: until the loop decides to scale up;
* ``consuming_s``: until the new replica's ``agentbus_fetched_total`` is > 0.

``python -m loadtest.bench_scaler`` prints one JSON line; :func:`run_benchmark` returns it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port
from bus.publisher import Publisher, TaskSpec
from bus.topology import ensure_streams
from scaler.actuators.local import LocalActuator
from scaler.local import LocalSupervisor, python_command
from scaler.loop import Evaluation, Scaler
from scaler.sources import (
    MetricSource,
    PrometheusSource,
    ScrapeSource,
    default_queries,
    fetch_samples,
    sample_sum,
)
from scaler.spec import MetricKind, MetricTarget, PolicySpec

__all__ = ["KEDA_DEFAULTS_S", "run_benchmark", "run_trial"]

KEDA_DEFAULTS_S = {"keda_polling_interval_s": 30.0, "hpa_sync_period_s": 15.0}
"""KEDA's ScaledObject default pollingInterval and the HPA's default sync period."""

_SPEC = PolicySpec(
    metrics=(MetricTarget(name="queue_depth", target=2.0, kind=MetricKind.TOTAL),),
    min_replicas=1,
    max_replicas=2,  # one new replica is what is timed
    down_window_s=3600,  # never shrink during a trial
)


async def run_trial(
    *, use_prometheus: bool, interval_s: float = 1.0, phase: float = 0.5, timeout_s: float = 60.0
) -> dict[str, float]:
    """One measurement on a fresh pool; the burst lands ``phase`` of a period after an evaluation."""
    work = Path(tempfile.mkdtemp(prefix="agentbus-bench-scaler-"))
    server = EmbeddedNats(store_dir=work / "nats").start()
    prometheus: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = {}

    def command(name: str) -> list[str]:
        ports[name] = ports.get(name) or free_port()
        return python_command(
            "worker", "--nats-url", server.url, "--worker-id", name, "--http-port", str(ports[name]),
            "--kind", "echo", "--max-inflight", "2", "--consumer-info-interval-s", "1",
        )  # fmt: skip

    supervisor = LocalSupervisor(command, stop_timeout_s=10)
    nc = await connect(server.url, name="bench-scaler")
    decided = asyncio.Event()
    try:
        await ensure_streams(nc.jetstream())
        file_sd = work / "targets.json"
        actuator = LocalActuator(supervisor, ports, file_sd_path=file_sd)
        source: MetricSource
        if use_prometheus:
            prom_port = free_port()
            prometheus = _start_prometheus(work, file_sd, prom_port)
            await _until_ready(f"http://127.0.0.1:{prom_port}/-/ready", timeout_s)
            source = PrometheusSource(f"http://127.0.0.1:{prom_port}", default_queries(rate_window="5s"))
        else:
            source = ScrapeSource(actuator.metrics_urls)
        seen_idle = asyncio.Event()
        decided_at: list[float] = []

        def on_evaluation(ev: Evaluation) -> None:
            depth = next((v for v in ev.decision.metrics if v.name == "queue_depth"), None)
            if depth is not None and depth.value == 0:
                seen_idle.set()
            if seen_idle.is_set() and ev.decision.desired > ev.decision.current and not decided_at:
                decided_at.append(time.monotonic())
                decided.set()

        scaler = Scaler(_SPEC, source, actuator, interval_s=interval_s, on_evaluation=on_evaluation)
        await supervisor.scale_to(1)
        await scaler.start()
        stop = asyncio.Event()
        loop_task = asyncio.create_task(scaler.run(stop))
        await asyncio.wait_for(seen_idle.wait(), timeout_s)
        await asyncio.sleep(phase * interval_s)  # a backlog arrives at any moment of the loop's period
        pub = Publisher(nc)
        await pub.submit_many(TaskSpec("bench", "echo", {"text": str(i), "sleep_s": 2.0}) for i in range(20))
        t0 = time.monotonic()
        await asyncio.wait_for(decided.wait(), timeout_s)
        consuming = await _first_fetch(ports, "w2", timeout_s)
        stop.set()
        await loop_task
        await scaler.aclose()
        return {"decision_s": decided_at[0] - t0, "consuming_s": consuming - t0}
    finally:
        await nc.close()
        await supervisor.stop()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        server.close()
        shutil.rmtree(work, ignore_errors=True)


async def _first_fetch(ports: dict[str, int], name: str, timeout_s: float) -> float:
    """When the replica ``name`` has taken its first message (polled every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=0.5) as client:
        while time.monotonic() < deadline:
            if name in ports:
                samples = await fetch_samples(client, f"http://127.0.0.1:{ports[name]}/metrics")
                if samples is not None and (sample_sum(samples, "agentbus_fetched_total") or 0) > 0:
                    return time.monotonic()
            await asyncio.sleep(0.02)
    raise TimeoutError(f"{name} never consumed")


async def _until_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready")


def _start_prometheus(work: Path, file_sd: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n  - job_name: agentbus\n"
        f"    file_sd_configs: [{{files: ['{file_sd}'], refresh_interval: 1s}}]\n"
    )
    return subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "runs": [round(v, 3) for v in values],
    }


async def run_benchmark(
    *, trials: int = 3, with_prometheus: bool | None = None, prometheus_interval_s: float = 0.5
) -> dict[str, Any]:
    """Trials with the direct scrape (1 s loop), and with Prometheus (1 s scrapes) when installed.

    With Prometheus in between, a reading is up to one worker refresh (1 s) plus one
    scrape (1 s) old before the loop sees it; a loop period of half the scrape interval
    keeps backlog -> decision within one scrape interval + 1 s.
    """
    if with_prometheus is None:
        with_prometheus = shutil.which("prometheus") is not None
    out: dict[str, Any] = {"bench": "scaler", "trials": trials, **KEDA_DEFAULTS_S}
    modes = ["scrape", "prometheus"] if with_prometheus else ["scrape"]
    for mode in modes:
        interval_s = prometheus_interval_s if mode == "prometheus" else 1.0
        runs = [
            await run_trial(use_prometheus=mode == "prometheus", interval_s=interval_s) for _ in range(trials)
        ]
        out[mode] = {
            "scrape_interval_s": 1.0,
            "loop_interval_s": interval_s,
            "backlog_to_decision_s": _summary([r["decision_s"] for r in runs]),
            "backlog_to_consuming_s": _summary([r["consuming_s"] for r in runs]),
        }
    return out


def main() -> None:
    """``python -m loadtest.bench_scaler [--trials N] [--no-prometheus]``: one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--no-prometheus", action="store_true", help="only the direct scrape")
    args = p.parse_args()
    result = asyncio.run(
        run_benchmark(trials=args.trials, with_prometheus=False if args.no_prometheus else None)
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
