"""End to end: a real Prometheus scraping real workers drives the local pool from 1 to 4 and back to 1.

A burst of slow tasks (``echo`` sleeping 1 s, 2 slots per worker) builds a backlog;
Prometheus (1 s scrapes, targets from a file_sd file the LocalActuator keeps) reports
``num_pending + num_ack_pending``; the scaler grows the pool to its max, the backlog
drains, and after the (short) down window the pool shrinks one replica at a time
while a trickle of tasks keeps running, so replicas are retired mid-run. Every task
must complete exactly once: the published set equals the set of ok results, no id
twice, nothing failed, and every retired worker drained and exited 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from scaler_helpers import PrometheusServer

from agents.builtin.basic import EchoIn
from bus.embedded import free_port
from bus.messages import Result
from bus.publisher import Publisher, TaskRef, TaskSpec
from scaler.actuators.local import LocalActuator
from scaler.local import LocalSupervisor, ReplicaInfo, python_command
from scaler.loop import Evaluation, Scaler
from scaler.policy import Reason
from scaler.sources import PrometheusSource, default_queries
from scaler.spec import MetricKind, MetricTarget, PolicySpec

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

SLOTS = 2
BURST = 60
SPEC = PolicySpec(
    metrics=(
        MetricTarget(name="cpu", target=0.7, kind=MetricKind.AVERAGE),
        MetricTarget(name="queue_depth", target=float(SLOTS), kind=MetricKind.TOTAL),
    ),
    min_replicas=1,
    max_replicas=4,
    down_window_s=10.0,  # 300 s in production; short so the test sees the way down
    down_period_s=3.0,
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A real Prometheus on a free loopback port, scraping what ``targets.json`` lists every 1 s."""
    server = PrometheusServer(tmp_path / "prometheus", scrape_interval_s=1.0).start()
    try:
        yield server
    finally:
        server.stop()


class Results:
    """Every result on ``results.*.*`` (subscribed before anything is published)."""

    def __init__(self) -> None:
        self.items: list[Result[Any]] = []
        self._decoder = msgspec.json.Decoder(Result[Any])

    async def on_msg(self, msg: Msg) -> None:
        self.items.append(self._decoder.decode(msg.data))

    def ok_ids(self) -> list[str]:
        return [r.task_id for r in self.items if r.ok]


async def poll(check: Any, *, timeout_s: float, what: str) -> None:
    """A liveness bound, not a timing claim."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_burst_grows_the_pool_then_it_shrinks_and_every_task_completes_once(
    nats_url: str, nc: Client, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    ports: dict[str, int] = {}

    def command(name: str) -> list[str]:
        ports[name] = ports.get(name) or free_port()
        return python_command(
            "--log-level", "INFO", "worker", "--nats-url", nats_url, "--worker-id", name,
            "--http-port", str(ports[name]), "--kind", "echo", "--max-inflight", str(SLOTS),
            "--consumer-info-interval-s", "1", "--drain-timeout-s", "20",
        )  # fmt: skip

    supervisor = LocalSupervisor(command, stop_timeout_s=30)
    seen: dict[str, ReplicaInfo] = {}
    evaluations: list[Evaluation] = []

    def on_evaluation(ev: Evaluation) -> None:
        evaluations.append(ev)
        seen.update(supervisor.replicas)

    actuator = LocalActuator(supervisor, ports, file_sd_path=prometheus.targets_file)
    queries = default_queries(rate_window="5s", cpu_warmup_s=10)
    source = PrometheusSource(prometheus.url, queries)
    scaler = Scaler(SPEC, source, actuator, interval_s=1.0, on_evaluation=on_evaluation)
    await scaler.start()

    results = Results()
    sub = await nc.subscribe("results.*.*", cb=results.on_msg, pending_msgs_limit=-1)
    await nc.flush()
    stop = asyncio.Event()
    published: list[str] = []
    pub = Publisher(nc)
    try:
        await supervisor.scale_to(1)
        seen.update(supervisor.replicas)
        loop_task = asyncio.create_task(scaler.run(stop))
        # Prometheus needs ~5 s (its discovery throttle) before the first scrape lands.
        await poll(lambda: bool(prometheus.query(queries["queue_depth"])), timeout_s=45, what="first scrape")

        refs = await pub.submit_many(
            TaskSpec("acme", "echo", EchoIn(text=f"burst {i}", sleep_s=1.0)) for i in range(BURST)
        )
        published += [r.task_id for r in refs if isinstance(r, TaskRef)]
        await poll(lambda: supervisor.size == 4, timeout_s=60, what="the pool to grow to 4")
        await poll(lambda: len(set(results.ok_ids())) >= BURST, timeout_s=90, what="the burst to drain")

        # A trickle (about one replica's worth) keeps work in flight while the pool shrinks.
        async def trickle() -> None:
            i = 0
            while not stop.is_set():
                ref = await pub.submit("acme", "echo", EchoIn(text=f"trickle {i}", sleep_s=0.5))
                published.append(ref.task_id)
                i += 1
                await asyncio.sleep(0.6)

        trickler = asyncio.create_task(trickle())
        await poll(lambda: supervisor.size == 1, timeout_s=90, what="the pool to shrink back to 1")
        stop.set()
        await trickler
        await loop_task
        await poll(lambda: set(results.ok_ids()) >= set(published), timeout_s=60, what="every result")
        await poll(lambda: len(supervisor.replicas) == 1, timeout_s=40, what="retired workers to exit")
    finally:
        stop.set()
        await sub.unsubscribe()
        await supervisor.stop()
        await scaler.aclose()

    ok = results.ok_ids()
    assert set(ok) == set(published), "lost tasks"
    assert len(ok) == len(set(ok)), f"duplicated results: {len(ok) - len(set(ok))}"
    assert not [r for r in results.items if not r.ok], "failed tasks"
    assert len(published) > BURST  # the trickle ran while replicas were retired

    ups = [e for e in evaluations if e.action is not None and e.action.after > e.action.before]
    downs = [e for e in evaluations if e.action is not None and e.action.after < e.action.before]
    assert ups[0].decision.reason is Reason.SCALE_UP
    assert ups[0].action is not None
    assert ups[0].action.after >= 3, "several replicas at once (+4 or +100 % per period, capped by max)"
    assert max(e.action.after for e in ups if e.action) == 4
    assert "queue_depth" in ups[0].decision.detail
    assert len(downs) >= 3
    assert all(e.action.before - e.action.after == 1 for e in downs if e.action)  # one replica per step
    assert all(e.decision.reason is Reason.SCALE_DOWN for e in downs)
    assert all(1 <= e.decision.desired <= 4 for e in evaluations)
    retired = {name for e in downs if e.action for name in e.action.retired}
    assert len(retired) == 3
    assert all(seen[name].exits == [0] for name in retired), {n: seen[n].exits for n in retired}
