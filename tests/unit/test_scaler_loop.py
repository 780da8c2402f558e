"""The control loop, the config and the CLI, on the in-memory twins (no server needed).

The loop must never raise and never shrink the pool because something failed; bad
configuration must be a clear error at start; ``--dry-run`` must never resize.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

import msgspec
import pytest
from prometheus_client.registry import CollectorRegistry

import scaler
import scaler.actuators
import scaler.sources
from agentbus.cli import build_parser, main
from agentbus.cli.scaler import config_from_args
from agentbus.errors import ConfigError, ScalePermissionError
from scaler.actuators import MemoryActuator
from scaler.config import load_config
from scaler.loop import Evaluation, Scaler
from scaler.policy import Reason
from scaler.sources import MemorySource
from scaler.spec import MetricKind, MetricTarget, PolicySpec

SPEC = PolicySpec(
    metrics=(MetricTarget(name="queue_depth", target=10, kind=MetricKind.TOTAL),),
    min_replicas=1,
    max_replicas=8,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(
    values: dict[str, float | None], replicas: int = 2, **kw: object
) -> tuple[Scaler, MemorySource, MemoryActuator]:
    source, act = MemorySource(values), MemoryActuator(replicas)
    return Scaler(SPEC, source, act, **kw), source, act  # type: ignore[arg-type]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_scales_up_and_records_metrics_and_a_json_log_line(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    loop, _, act = make({"queue_depth": 55.0}, registry=registry)
    caplog.set_level(logging.INFO, logger="agentbus.scaler")
    ev = await loop.evaluate()
    assert (ev.decision.reason, ev.action) == (Reason.SCALE_UP, scaler.actuators.ScaleResult(2, 6))
    assert act.replicas == 6
    assert sample(registry, "agentbus_scaler_desired_replicas") == 6
    assert sample(registry, "agentbus_scaler_current_replicas") == 2
    assert sample(registry, "agentbus_scaler_decisions_total", reason="scale_up") == 1
    assert sample(registry, "agentbus_scaler_resizes_total", direction="up") == 1
    assert sample(registry, "agentbus_scaler_metric_value", metric="queue_depth") == 55
    logged = msgspec.json.decode(caplog.records[-1].getMessage(), type=Evaluation)
    assert logged.decision.desired == 6


async def test_failures_hold_the_size_and_never_raise() -> None:
    registry = CollectorRegistry()
    loop, source, act = make({"queue_depth": 0.0}, replicas=5, registry=registry)
    act.fail = ScalePermissionError("forbidden: needs patch on deployments/scale")
    ev = await loop.evaluate()
    assert ev.decision.reason is Reason.ACTUATOR_ERROR
    assert "forbidden" in ev.error
    assert ev.decision.desired == ev.decision.current
    act.fail = None

    async def broken(now_s: float) -> dict[str, scaler.Reading]:
        raise RuntimeError("source bug")

    source.read = broken  # type: ignore[method-assign]
    ev = await loop.evaluate()
    assert (ev.decision.reason, act.replicas) == (Reason.METRIC_MISSING, 5)
    assert "source bug" in ev.decision.detail
    assert sample(registry, "agentbus_scaler_errors_total", stage="read") == 1
    assert sample(registry, "agentbus_scaler_errors_total", stage="current") == 1


async def test_a_failed_resize_is_not_recorded_as_done() -> None:
    loop, _, act = make({"queue_depth": 100.0})
    real_scale = act.scale

    async def refuse(replicas: int) -> scaler.actuators.ScaleResult:
        raise ScalePermissionError("nope")

    act.scale = refuse  # type: ignore[method-assign]
    ev = await loop.evaluate()
    assert "resize failed" in ev.error
    assert loop.state.scale_events == ()
    act.scale = real_scale  # type: ignore[method-assign]
    ev = await loop.evaluate()
    assert ev.action is not None
    assert ev.action.after == 6


async def test_dry_run_never_resizes() -> None:
    seen: list[Evaluation] = []
    loop, _, act = make({"queue_depth": 1000.0}, dry_run=True, on_evaluation=seen.append)
    for _ in range(3):
        await loop.evaluate()
    assert act.history == [2]
    assert [e.decision.desired for e in seen] == [6, 6, 6]
    assert all(e.dry_run for e in seen)


async def test_run_evaluates_every_interval_until_stopped() -> None:
    loop, source, _ = make({"queue_depth": 20.0}, interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    for _ in range(500):  # a liveness bound
        if source.reads >= 5:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_unknown_metric_is_a_config_error_at_start() -> None:
    spec = PolicySpec(metrics=(MetricTarget(name="gpu", target=1),))
    loop = Scaler(spec, MemorySource({"cpu": 1.0}), MemoryActuator())
    with pytest.raises(ConfigError, match=r"unknown metric.*gpu.*reads cpu"):
        await loop.start()


def test_config_layers_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "scaler.toml"
    path.write_text(
        "interval_s = 5\n[policy]\nmin_replicas = 2\nmax_replicas = 6\n"
        '[[policy.metrics]]\nname = "queue_depth"\ntarget = 20\nkind = "total"\n'
        '[prometheus]\nurl = "http://prom:9090"\n[kubernetes]\ndeployment = "agents"\n'
    )
    env = {"AGENTBUS_SCALER_MAX_REPLICAS": "7", "AGENTBUS_SCALER_NAMESPACE": "prod"}
    cfg = load_config(path, environ=env, overrides={"policy.min_replicas": 3})
    assert (cfg.interval_s, cfg.policy.min_replicas, cfg.policy.max_replicas) == (5, 3, 7)
    assert cfg.policy.metrics == (MetricTarget(name="queue_depth", target=20, kind=MetricKind.TOTAL),)
    assert (cfg.kubernetes.deployment, cfg.kubernetes.namespace, cfg.prometheus.url) == (
        "agents",
        "prod",
        "http://prom:9090",
    )
    as_json = tmp_path / "scaler.json"
    as_json.write_text(json.dumps({"policy": {"max_replicas": 3}}))
    assert load_config(as_json, environ={}).policy.max_replicas == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[policy]\nmin_replicas = 5\nmax_replicas = 4\n", "min_replicas=5 > max_replicas=4"),
        ("[policy]\nmax_replica = 4\n", "unknown field `max_replica`"),
        ('[[policy.metrics]]\nname = "cpu"\ntarget = 0\n', "target must be > 0"),
        ('[[policy.metrics]]\nname = "cpu"\ntarget = 1\nkind = "avg"\n', "Invalid enum value 'avg'"),
        ("interval_s = -1\n", "interval_s=-1"),
        ('http_host = ""\n', "http_host must not be empty"),
        ("[policy\n", "not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "scaler.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(path, environ={})


def test_cli_flags_override_and_targets_apply() -> None:
    args = build_parser().parse_args(
        ["scaler", "--min", "2", "--max", "9", "--target-queue-depth", "4", "--scrape", "http://w/metrics"]
    )
    cfg = config_from_args(args)
    assert (cfg.policy.min_replicas, cfg.policy.max_replicas, cfg.scrape_targets) == (
        2,
        9,
        ("http://w/metrics",),
    )
    assert {m.name: m.target for m in cfg.policy.metrics} == {"cpu": 0.7, "queue_depth": 4}


def test_http_host_defaults_to_loopback_and_layers_file_env_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_config(environ={}).http_host == "127.0.0.1"  # nothing outside the host by default
    path = tmp_path / "scaler.toml"
    path.write_text('http_host = "127.0.0.5"\n')
    assert load_config(path, environ={}).http_host == "127.0.0.5"
    env = {"AGENTBUS_SCALER_HTTP_HOST": "0.0.0.0"}
    assert load_config(path, environ=env).http_host == "0.0.0.0"
    assert load_config(path, environ={"AGENTBUS_SCALER_HTTP_HOST": ""}).http_host == "127.0.0.5"
    assert load_config(environ={"AGENTBUS_HTTP_HOST": "0.0.0.0"}).http_host == "127.0.0.1"  # the worker's
    assert load_config(environ={}).http_port == -1  # no endpoint unless asked
    assert load_config(environ={"AGENTBUS_SCALER_HTTP_PORT": "9102"}).http_port == 9102

    monkeypatch.setenv("AGENTBUS_SCALER_HTTP_HOST", "10.1.2.3")
    args = build_parser().parse_args(["scaler", "--http-host", "0.0.0.0", "--http-port", "9100"])
    assert (args.http_host, args.http_port) == ("0.0.0.0", 9100)
    cfg = config_from_args(args)
    assert (cfg.http_host, cfg.http_port) == ("0.0.0.0", 9100)
    assert config_from_args(build_parser().parse_args(["scaler"])).http_host == "10.1.2.3"


def test_cli_bad_config_exits_78_and_usage_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scaler", "--min", "5", "--max", "4", "--dry-run", "--scrape", "http://x/metrics"]) == 78
    assert "min_replicas=5 > max_replicas=4" in capsys.readouterr().err
    assert main(["scaler", "--scrape", "http://x/metrics", "--once"]) == 2
    assert "nothing to scale" in capsys.readouterr().err


def test_cli_dry_run_prints_one_json_decision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scaler", "--dry-run", "--once", "--scrape", "http://127.0.0.1:9/metrics"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    ev = msgspec.json.decode(line, type=Evaluation)
    assert (ev.dry_run, ev.decision.reason) == (True, Reason.METRIC_MISSING)


def test_autoscale_flag_makes_workers_report_pending_every_second() -> None:
    p = argparse.ArgumentParser()
    from agentbus.cli.scaler import add_autoscale_options
    from agentbus.cli.worker import add_worker_options

    add_worker_options(p)
    add_autoscale_options(p)
    assert p.parse_args(["--autoscale"]).consumer_info_interval_s == 1.0
    assert p.parse_args(["--consumer-info-interval-s", "3", "--autoscale"]).consumer_info_interval_s == 3.0
    assert p.parse_args([]).consumer_info_interval_s is None


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            scaler,
            {
                "Decision",
                "Evaluation",
                "LocalSupervisor",
                "MetricKind",
                "MetricTarget",
                "PolicySpec",
                "PolicyState",
                "Reading",
                "Reason",
                "ReplicaInfo",
                "Scaler",
                "ScalerConfig",
                "decide",
                "load_config",
            },
        ),
        (scaler.actuators, {"Actuator", "MemoryActuator", "ScaleResult"}),
        (
            scaler.sources,
            {
                "SCRAPE_METRICS",
                "MemorySource",
                "MetricSource",
                "PrometheusSource",
                "ScrapeSource",
                "default_queries",
                "fetch_samples",
                "sample_sum",
            },
        ),
    ],
)
def test_exported_names(module: object, names: set[str]) -> None:
    assert set(module.__all__) == names  # type: ignore[attr-defined]
    assert all(hasattr(module, n) for n in names)


def test_scaler_never_imports_agents() -> None:
    import subprocess
    import sys

    code = (
        "import sys, scaler, scaler._assemble, scaler.loop, scaler.actuators.kubernetes;"
        "print(sorted(m for m in sys.modules if m == 'agents' or m.startswith('agents.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
