"""WorkerConfig: defaults, AGENTBUS_* variables read once at the edge, bad values -> ConfigError."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agentbus.errors import ConfigError
from agents.config import DEFAULT_NATS_URL, UP_STATE_FILE, WorkerConfig, read_up_state, resolve_nats_url


def test_empty_environment_gives_the_defaults() -> None:
    assert WorkerConfig.from_env({}) == WorkerConfig()
    assert WorkerConfig().nats_url == DEFAULT_NATS_URL


def test_every_variable_is_read() -> None:
    env = {
        "AGENTBUS_NATS_URL": "nats://10.0.0.1:4333",
        "AGENTBUS_WORKER_ID": "w-7",
        "AGENTBUS_HTTP_HOST": "0.0.0.0",
        "AGENTBUS_HTTP_PORT": "9100",
        "AGENTBUS_MAX_INFLIGHT": "12",
        "AGENTBUS_PREFETCH": "3",
        "AGENTBUS_DRAIN_TIMEOUT_S": "7.5",
        "AGENTBUS_ACK_WAIT_S": "3",
        "AGENTBUS_MAX_DELIVER": "4",
        "AGENTBUS_AGENTS": "agents.builtin,mymod",
        "AGENTBUS_KINDS": "echo,order",
        "AGENTBUS_TENANTS": "acme,globex",
    }
    cfg = WorkerConfig.from_env(env)
    assert cfg.nats_url == "nats://10.0.0.1:4333"
    assert cfg.worker_id == "w-7"
    assert cfg.worker_name == "w-7"
    assert cfg.http_host == "0.0.0.0"
    assert cfg.http_port == 9100
    assert cfg.max_inflight == 12
    assert cfg.prefetch == 3
    assert cfg.drain_timeout_s == 7.5
    assert cfg.ack_wait_s == 3.0
    assert cfg.max_deliver == 4
    assert cfg.agent_modules == ("agents.builtin", "mymod")
    assert cfg.kinds == ("echo", "order")
    assert cfg.tenants == frozenset({"acme", "globex"})


def test_unrelated_variables_are_ignored() -> None:
    assert WorkerConfig.from_env({"PATH": "/bin", "AGENTBUS_UNKNOWN": "1"}) == WorkerConfig()


def test_empty_tenants_means_any_tenant() -> None:
    assert WorkerConfig.from_env({"AGENTBUS_TENANTS": ""}).tenants is None


def test_empty_list_items_are_dropped() -> None:
    cfg = WorkerConfig.from_env({"AGENTBUS_KINDS": "echo,,order,", "AGENTBUS_AGENTS": ",m1"})
    assert cfg.kinds == ("echo", "order")
    assert cfg.agent_modules == ("m1",)


def test_stream_replicas_come_from_the_environment() -> None:
    assert WorkerConfig.from_env({"AGENTBUS_STREAM_REPLICAS": "3"}).stream_limits.replicas == 3
    assert WorkerConfig.from_env({}).stream_limits.replicas == 1


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("AGENTBUS_HTTP_PORT", "eighty"),
        ("AGENTBUS_MAX_INFLIGHT", "1.5"),
        ("AGENTBUS_ACK_WAIT_S", "30s"),
        ("AGENTBUS_DRAIN_TIMEOUT_S", "nan"),
        ("AGENTBUS_DRAIN_TIMEOUT_S", ""),
        ("AGENTBUS_MAX_DELIVER", "five"),
        ("AGENTBUS_STREAM_REPLICAS", "three"),
        ("AGENTBUS_GOSSIP", "maybe"),
        ("AGENTBUS_GOSSIP", ""),
    ],
)
def test_unparsable_values_raise_config_error_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{var}={value!r}: expected "):
        WorkerConfig.from_env({var: value})


def test_every_reader_uses_one_error_format_and_one_boolean_spelling() -> None:
    from agents.llm import LLMConfig
    from scaler.config import load_config

    readers: dict[str, Callable[[dict[str, str]], object]] = {
        "AGENTBUS_MAX_DELIVER": WorkerConfig.from_env,
        "AGENTBUS_LLM_TIMEOUT_S": LLMConfig.from_env,
        "AGENTBUS_SCALER_INTERVAL_S": lambda env: load_config(environ=env),
    }
    for var, read in readers.items():
        with pytest.raises(ConfigError) as bad:
            read({var: "soon"})
        assert str(bad.value).startswith(f"{var}='soon': expected ")
    for word, on in (("YES", True), ("on", True), ("1", True), ("Off", False), ("no", False), ("0", False)):
        assert WorkerConfig.from_env({"AGENTBUS_GOSSIP": word}).gossip is on
        assert LLMConfig.from_env({"AGENTBUS_LLM_STREAM": word}).stream is on
    with pytest.raises(ConfigError, match="AGENTBUS_LLM_STREAM='nope': expected 1, true"):
        LLMConfig.from_env({"AGENTBUS_LLM_STREAM": "nope"})
    assert WorkerConfig.from_env({"AGENTBUS_REDIS_URL": ""}).redis_url is None  # an empty optional text


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("AGENTBUS_MAX_DELIVER", "0"),
        ("AGENTBUS_ACK_WAIT_S", "0"),
        ("AGENTBUS_ACK_WAIT_S", "-1"),
        ("AGENTBUS_DRAIN_TIMEOUT_S", "-0.5"),
        ("AGENTBUS_MAX_INFLIGHT", "0"),
        ("AGENTBUS_PREFETCH", "-1"),
        ("AGENTBUS_STREAM_REPLICAS", "2"),
    ],
)
def test_out_of_range_values_raise_config_error(var: str, value: str) -> None:
    with pytest.raises(ConfigError):
        WorkerConfig.from_env({var: value})


def test_prefetch_defaults_to_an_eighth_of_many_slots_capped_and_none_of_few() -> None:
    default = WorkerConfig()
    slots = (1, 8, 63, 64, 256, 2000, 100_000)
    assert [default.prefetch_for(n) for n in slots] == [0, 0, 0, 8, 32, 250, 256]
    assert WorkerConfig(prefetch=0).prefetch_for(2000) == 0
    assert WorkerConfig(prefetch=5).prefetch_for(8) == 5


@pytest.mark.parametrize(
    "changes",
    [
        {"retry_base_s": -1.0},
        {"retry_base_s": 5.0, "retry_max_s": 1.0},
        {"max_inflight": 0},
        {"max_deliver": 0},
    ],
)
def test_constructor_validates(changes: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        WorkerConfig(**changes)  # type: ignore[arg-type]


def test_config_is_frozen_and_keyword_only() -> None:
    cfg = WorkerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_deliver = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        WorkerConfig("nats://x:1")  # type: ignore[call-arg]


def test_with_ignores_none_and_validates() -> None:
    cfg = WorkerConfig().with_(max_deliver=3, ack_wait_s=None)
    assert cfg.max_deliver == 3
    assert cfg.ack_wait_s == WorkerConfig().ack_wait_s
    with pytest.raises(ConfigError):
        WorkerConfig().with_(max_deliver=0)


def test_worker_name_defaults_to_host_and_pid() -> None:
    assert WorkerConfig().worker_name.endswith(f"-{os.getpid()}")


def test_resolve_nats_url_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .agentbus/up.json here
    assert resolve_nats_url("nats://flag:1", {"AGENTBUS_NATS_URL": "nats://env:2"}) == "nats://flag:1"
    assert resolve_nats_url(None, {"AGENTBUS_NATS_URL": "nats://env:2"}) == "nats://env:2"
    assert resolve_nats_url(None, {}) == DEFAULT_NATS_URL


def test_resolve_nats_url_finds_a_live_agentbus_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = tmp_path / UP_STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"pid": os.getpid(), "nats_url": "nats://up:3", "metrics_ports": {}}))
    assert read_up_state() is not None
    assert resolve_nats_url(None, {}) == "nats://up:3"
    assert resolve_nats_url(None, {"AGENTBUS_NATS_URL": "nats://env:2"}) == "nats://env:2"


def test_a_dead_agentbus_up_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = tmp_path / UP_STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"pid": dead.pid, "nats_url": "nats://up:3", "metrics_ports": {}}))
    assert read_up_state() is None
    assert resolve_nats_url(None, {}) == DEFAULT_NATS_URL
