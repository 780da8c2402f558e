"""Units of the shared-state wiring: cluster-wide LLM limits, the limiter's additions, config and
CLI flags, the context's store, and gossip's hand-off and rejoin (virtual time, in-memory network).
"""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from agentbus.cli import build_parser
from agentbus.cli import worker as worker_cli
from agentbus.errors import BudgetExceededError, ConfigError, RateLimitedError, StateError
from agents.api import Context
from agents.builtin.basic import echo
from agents.config import WorkerConfig
from agents.llm.config import LimitsConfig
from agents.llm.shared_limits import MIN_RATE_WINDOW_S, SharedLimits
from agents.registry import Registry
from agents.worker import Worker
from state.gossip import GossipConfig
from state.gossip.testing import SimCluster
from state.limiter import Budget, RateLimiter
from state.replica import ReplicaState
from state.store import StoreLimits

S = 10**9
DAY_NS = 86_400 * S


class Clock:
    def __init__(self, now_ns: int) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now


def replica(clock: Clock, name: str = "r", **kw: object) -> ReplicaState:
    return ReplicaState(name, replica_id=name, clock=clock, **kw)  # type: ignore[arg-type]


# -- SharedLimits ----------------------------------------------------------------------------------


def test_budget_refuses_once_spent_and_renews_at_the_epoch_aligned_period() -> None:
    clock = Clock(1000 * DAY_NS + DAY_NS - 10 * S)  # 10 s before 00:00 UTC
    limits = SharedLimits(replica(clock).store, LimitsConfig(tenant_budgets={"acme": 20}))
    limits.check("acme")
    limits.charge("acme", 15)
    limits.check("acme")  # 15 < 20: the call may start
    limits.charge("acme", 15)  # known only afterwards: 30
    with pytest.raises(BudgetExceededError) as info:
        limits.check("acme")
    assert (info.value.used, info.value.limit) == (30, 20)
    assert info.value.resets_in_s == pytest.approx(10.0)
    assert str(info.value).startswith("budget exceeded: tenant 'acme' used 30 of 20 tokens")
    limits.check("globex")  # no budget: unlimited
    assert limits.refused == {("acme", "budget"): 1}
    clock.now += 11 * S  # the next day
    limits.check("acme")


def test_one_budget_across_replicas_after_gossip() -> None:
    clock = Clock(5 * DAY_NS)
    a, b = replica(clock, "a"), replica(clock, "b")
    config = LimitsConfig(token_budget=100)
    on_a, on_b = SharedLimits(a.store, config), SharedLimits(b.store, config)
    on_a.charge("acme", 60)
    on_b.charge("acme", 30)
    on_b.check("acme")  # b alone sees 30
    blob = a.pending()
    assert blob is not None
    b.merge(blob)
    on_b.charge("acme", 20)
    with pytest.raises(BudgetExceededError) as info:
        on_b.check("acme")
    assert info.value.used == 110


def test_rate_window_is_the_burst_over_its_refill_time_and_at_least_a_second() -> None:
    clock = Clock(7 * DAY_NS)
    store = replica(clock).store
    slow = SharedLimits(store, LimitsConfig(requests_per_s=2.0, burst=4))
    assert slow.rate_window_s == 2.0  # 4 calls per 2 s
    fast = SharedLimits(store, LimitsConfig(requests_per_s=100.0, burst=20))
    assert fast.rate_window_s == MIN_RATE_WINDOW_S  # 0.2 s would be below the gossip delay
    for _ in range(4):
        slow.check("acme")
    with pytest.raises(RateLimitedError) as info:
        slow.check("acme")
    assert 0 < info.value.retry_after_s <= 4.0
    assert slow.refused == {("acme", "rate"): 1}
    clock.now += int(info.value.retry_after_s * S) + 1
    slow.check("acme")  # after the wait it names, one more fits


def test_reserved_counters_ignore_the_tenants_limits() -> None:
    clock = Clock(9 * DAY_NS)
    r = ReplicaState("r", clock=clock, limits=StoreLimits(max_entries=1, max_tenant_bytes=200))
    r.store("acme").counter("mine").increment()
    with pytest.raises(StateError):
        r.store("acme").counter("more").increment()  # the tenant's own room is full...
    limits = SharedLimits(r.store, LimitsConfig(token_budget=10, requests_per_s=1.0))
    limits.check("acme")
    limits.charge("acme", 11)  # ...its budget and usage still count
    r.record_task("acme", ok=True, n=3)
    with pytest.raises(BudgetExceededError):
        limits.check("acme")
    assert r.usage("acme")["tasks_completed"] == 3


def test_limiter_additions() -> None:
    clock = Clock(11 * DAY_NS)
    store = replica(clock).store("acme")
    budget = Budget(store, "b", limit=5)
    assert budget.resets_in_s is None
    budget.charge(7)
    budget.charge(0)
    assert budget.spent == 7
    assert budget.remaining == 0
    with pytest.raises(ValueError, match="int >= 0"):
        budget.charge(-1)
    rate = RateLimiter(store, "r", rate_per_s=10, window_s=1.0)
    assert rate.retry_after_s() == 0.0
    for _ in range(10):
        assert rate.try_acquire()
    assert rate.retry_after_s() == pytest.approx(1.0 + 0.1)  # this window ends, then it fades
    clock.now += 3 * S // 2  # half into the next window: the previous one weighs 0.5
    assert rate.retry_after_s(6) == pytest.approx(0.1)


# -- context, config, CLI ---------------------------------------------------------------------------


async def _submit(*args: object, **kw: object) -> object:
    raise AssertionError("unused")


async def _emit(subject: str, data: bytes) -> None:
    raise AssertionError("unused")


def test_context_state_is_the_tasks_tenants_store_only() -> None:
    r = ReplicaState("r")
    log = logging.getLogger("t")
    common = {"kind": "k", "task_id": "t1", "attempt": 1, "deadline": None, "log": log}
    ctx = Context(tenant="acme", submit=_submit, emit=_emit, stores=r.store, **common)  # type: ignore[arg-type]
    ctx.state.counter("c").increment()
    assert ctx.state.tenant == "acme"
    assert r.store("acme").counter("c").value == 1
    assert r.store("globex").counter("c").value == 0
    bare = Context(tenant="acme", submit=_submit, emit=_emit, **common)  # type: ignore[arg-type]
    with pytest.raises(StateError, match="no shared state"):
        _ = bare.state


def test_state_settings_from_env_and_validation() -> None:
    cfg = WorkerConfig.from_env(
        {"AGENTBUS_REDIS_URL": "redis://r:6379/1", "AGENTBUS_GOSSIP": "off", "AGENTBUS_GOSSIP_PRESET": "test"}
    )
    assert (cfg.redis_url, cfg.gossip, cfg.gossip_preset) == ("redis://r:6379/1", False, "test")
    assert WorkerConfig.from_env({"AGENTBUS_GOSSIP": "1"}).gossip is True
    assert (WorkerConfig().gossip, WorkerConfig().redis_url, WorkerConfig().gossip_preset) == (
        True,
        None,
        "lan",
    )
    with pytest.raises(ConfigError, match="gossip_preset"):
        WorkerConfig(gossip_preset="wan")
    bad = WorkerConfig(redis_url="localhost:6379")  # checked where it is used: the worker refuses to start
    with pytest.raises(ConfigError, match="a Redis URL is"):
        Worker(bad, Registry([echo]))


def test_state_flags_reach_the_config_and_pass_through_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    for var in ("AGENTBUS_REDIS_URL", "AGENTBUS_GOSSIP", "AGENTBUS_GOSSIP_PRESET"):
        monkeypatch.delenv(var, raising=False)
    argv = ["--redis-url", "redis://127.0.0.1:6379/0", "--gossip-preset", "test", "--no-gossip"]
    args = build_parser().parse_args(["worker", *argv])
    cfg = worker_cli.config_from_args(args)
    assert (cfg.redis_url, cfg.gossip_preset, cfg.gossip) == ("redis://127.0.0.1:6379/0", "test", False)
    up = build_parser().parse_args(["up", *argv])
    assert sorted(worker_cli.worker_argv(up)) == sorted(argv)
    assert worker_cli.worker_argv(argparse.Namespace()) == []
    assert worker_cli.config_from_args(build_parser().parse_args(["worker"])).gossip is True


# -- gossip -----------------------------------------------------------------------------------------


async def test_a_leaving_replica_hands_its_last_writes_to_peers() -> None:
    # push-pull far away: without the hand-off the write would wait for a round that never comes
    sim = SimCluster(config=GossipConfig.for_tests(push_pull_interval_s=1000.0), seed=3)
    for i in range(3):
        await sim.add(f"n{i}")
    await sim.run_for(1.0)
    sim.delegates["n0"].increment("tasks", 5)
    await sim.leave("n0")  # before its next gossip round
    assert await sim.run_until(lambda: all(d.value("tasks") == 5 for d in sim.delegates.values()), 0.5)


async def test_rejoin_takes_the_new_node_id_everywhere() -> None:
    sim = SimCluster(seed=4)
    for i in range(3):
        await sim.add(f"n{i}")
    await sim.run_for(2.0)
    await sim.nodes["n2"].rejoin("n2-moved")
    assert sim.nodes["n2"].node == "n2-moved"

    def moved() -> bool:
        peers = [set(sim.nodes[n].live_peers()) for n in ("n0", "n1")]
        return all("n2-moved" in p and "n2" not in p for p in peers)

    assert await sim.run_until(moved, 10.0) is not None
    assert set(sim.nodes["n2"].live_peers()) == {"n0", "n1"}


# -- python -m loadtest --suite state -------------------------------------------------------------------


def test_bench_state_suite_is_chosen_only_when_named(capsys: pytest.CaptureFixture[str]) -> None:
    import loadtest.__main__ as bench

    assert bench._suites(["state"]) == ()
    assert bench._suites(["a,state"]) == ("throughput",)
    assert bench._suites(["llm,scaler,e"]) == ("memory",)  # one entry: the others run as children
    assert bench.child_command("llm", quick=False)[1:] == ["-m", "loadtest.bench_llm"]
    assert bench.child_command("scaler", quick=True)[1:] == ["-m", "loadtest.bench_scaler", "--trials", "1"]
    assert "memory" in bench._suites(None)  # the default run is unchanged, state not in it
    with pytest.raises(ValueError, match="unknown suite"):
        bench._suites(["state,nope"])
    with pytest.raises(SystemExit) as usage:  # a usage error: exit 2 from argparse
        bench.main(["--suite", "nope"])
    assert usage.value.code == 2
    capsys.readouterr()
    assert bench.main(["--suite", "state", "--quick", "--json-only"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["suites"] == ["state"]
    assert out["state"]["suite"] == "state"
    assert set(out["state"]["convergence_rounds"]) == {"3", "5", "7", "10"}
    assert "errors" not in out
