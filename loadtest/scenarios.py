"""The Locust scenarios: one user class per scenario, its tasks tagged with its name, and one shape.

Select a scenario by class or by tag (``locust -f loadtest/locustfile.py SpikeUser`` or
``--tags spike``); with neither, ``steady`` runs. Run defaults (users, rate per user,
duration, result timeout) come from the scenario's table in ``loadtest/slo.toml``;
``-u``, ``-t``, ``--task-rate`` and ``--result-timeout-s`` override them.

* ``steady``: constant rate; echo, summarize and order for three tenants; 70% of the
  tasks fire-and-forget (``submit``), 30% wait for their result (``call``).
* ``spike``: the steady mix; 10x the users for 30 s (from 10 s in), then back.
* ``noisy``: each user first warms every measured tenant's lane with one ``warm`` call
  (not in the percentiles: a tenant's first task waits for the workers' discovery); then
  a calm phase: the calm tenants (``calm-acme``, ...) ``call`` at the quiet tenants' rate,
  alone, which is the baseline; then tenant ``noisy`` sends 100x the
  tasks of each quiet tenant (acme, globex, initech), fire-and-forget tasks of 1 s, more
  than the workers' slots can run, so a real backlog builds; the quiet tenants ``call``
  behind it. The gate compares the quiet tenants' p99 with the calm tenants' (docs/fairness.md).
* ``long``: echo tasks sleeping 2-5 s, mostly fire-and-forget: they outlive a short ack
  wait only through in-progress heartbeats, and they pile up until the autoscaler adds
  workers.

:class:`ScenarioShape` runs the chosen scenario for its duration, then stops every user
and waits until every Locust process has recorded all it started (bounded by the result
timeout) before it ends the run: a request in flight at the end is counted, not lost.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from locust import LoadTestShape, tag, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.user.wait_time import constant_throughput

from loadtest.locust_nats import ACK_TIMEOUT_S, NatsUser
from loadtest.slo import Scenario

__all__ = [
    "CALM_TENANTS",
    "NOISY_TENANT",
    "TENANTS",
    "LongTaskUser",
    "NoisyNeighbourUser",
    "ScenarioShape",
    "ScenarioUser",
    "SpikeUser",
    "SteadyUser",
    "configure",
]

TENANTS = ("acme", "globex", "initech")
NOISY_TENANT = "noisy"
_NOISY_WEIGHT = 100  # the noisy tenant's share against each quiet tenant's 1
CALM_TENANTS = tuple(f"calm-{t}" for t in TENANTS)
"""The quiet tenants' twins of the calm phase: their latency is the baseline of the noisy gate."""
_CALM_S = 8.0  # the calm phase of the noisy scenario (a quarter of shorter runs)
_NOISY_SLEEP_S = 1.0  # 2 workers x 56 slots a tenant may take (slo.toml) run ~112 of these a second

_SENTENCES = (
    "The quarterly report shows revenue growth in every region.",
    "Customers asked for faster delivery and clearer invoices.",
    "Support tickets fell after the new onboarding guide shipped.",
    "The team plans to automate order intake with task agents.",
    "Three tenants share the cluster without seeing each other's data.",
)


def mixed_task(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    """``(tenant, kind, payload)`` of the steady mix; every one of them completes."""
    tenant = rng.choice(TENANTS)
    roll = rng.random()
    if roll < 0.5:
        return tenant, "echo", {"text": f"hello {rng.randrange(1_000_000)}"}
    if roll < 0.8:
        text = " ".join(rng.sample(_SENTENCES, rng.randint(2, 4)))
        return tenant, "summarize", {"text": text, "max_words": rng.randint(5, 12)}
    # PROD-001 has a million in stock per tenant and worker: the order is always created.
    return tenant, "order", {"request": f"customer U{rng.randint(100, 999)} buys 1 of PROD-001"}


class ScenarioUser(NatsUser):
    """A scenario's user: paced at the scenario's rate per user, its tasks tagged with the scenario."""

    abstract = True
    scenario: ClassVar[str] = ""
    scenarios: ClassVar[dict[str, Scenario]] = {}
    """``slo.toml``, loaded once per process by :func:`configure`."""

    def on_start(self) -> None:
        spec = self.scenarios[self.scenario]
        options = self.environment.parsed_options
        rate = getattr(options, "task_rate", None) or spec.task_rate_per_user
        self.result_timeout_s = getattr(options, "result_timeout_s", None) or spec.result_timeout_s
        self.rng = random.Random()
        self._pace = constant_throughput(rate)
        # Start at a random point of the first period so the users do not publish in lockstep.
        self._cp_last_run = time.perf_counter() - self.rng.random() / rate

    def wait_time(self) -> float:
        """Pace this user at the scenario's tasks per second."""
        return self._pace(self)

    @classmethod
    def users_at(cls, t_s: float, base: int, duration_s: float) -> int:
        """How many users the scenario runs ``t_s`` seconds in (constant unless overridden)."""
        return base


class SteadyUser(ScenarioUser):
    """Constant rate, mixed kinds and tenants, 70% fire-and-forget."""

    scenario = "steady"

    @tag("steady")
    @task(7)
    def submit_mixed(self) -> None:
        """Fire-and-forget one task of the mix."""
        self.submit(*mixed_task(self.rng))

    @tag("steady")
    @task(3)
    def call_mixed(self) -> None:
        """Wait for the result of one task of the mix."""
        self.call(*mixed_task(self.rng))


class SpikeUser(ScenarioUser):
    """The steady mix; 10x the users for 30 s."""

    scenario = "spike"
    factor = 10

    @classmethod
    def users_at(cls, t_s: float, base: int, duration_s: float) -> int:
        """Base users, then ``factor`` times as many from ``min(10 s, d/4)`` for ``min(30 s, d/2)``."""
        start = min(10.0, duration_s / 4)
        return base * cls.factor if start <= t_s < start + min(30.0, duration_s / 2) else base

    @tag("spike")
    @task(7)
    def submit_mixed(self) -> None:
        """Fire-and-forget one task of the mix."""
        self.submit(*mixed_task(self.rng))

    @tag("spike")
    @task(3)
    def call_mixed(self) -> None:
        """Wait for the result of one task of the mix."""
        self.call(*mixed_task(self.rng))


class NoisyNeighbourUser(ScenarioUser):
    """A calm phase (the baseline), then one tenant sends 100x the tasks of each other tenant,
    more than the workers can run; the quiet ones measure their latency behind its backlog."""

    scenario = "noisy"
    tenants = (NOISY_TENANT, *TENANTS)
    weights = (_NOISY_WEIGHT, *(1 for _ in TENANTS))

    def on_start(self) -> None:
        super().on_start()
        # Every measured tenant's first task waits for the workers to discover the tenant (a
        # poll and a consumer creation, docs/fairness.md), slower under the noisy load than in
        # the calm phase: warmed first, the calm twins and the quiet tenants are measured alike,
        # behind the backlog or not, never behind their own discovery.
        for tenant in (*CALM_TENANTS, *TENANTS):
            self.warm(tenant, "echo", {"text": f"warm {tenant}"})
        options = self.environment.parsed_options
        duration_s = float(getattr(options, "run_time", None) or self.scenarios[self.scenario].duration_s)
        self._calm_until = time.monotonic() + min(_CALM_S, duration_s / 4)

    @tag("noisy")
    @task
    def tenant_task(self) -> None:
        """One echo task of a tenant drawn by weight: the noisy one fires and forgets 1 s tasks;
        in the calm phase the noisy draws send nothing and the quiet ones go to the calm twins."""
        tenant = self.rng.choices(self.tenants, self.weights)[0]
        calm = time.monotonic() < self._calm_until
        payload: dict[str, Any] = {"text": f"{tenant} {self.rng.randrange(1_000_000)}"}
        if tenant == NOISY_TENANT:
            if not calm:
                self.submit(tenant, "echo", payload | {"sleep_s": _NOISY_SLEEP_S})
        else:
            self.call(f"calm-{tenant}" if calm else tenant, "echo", payload)


class LongTaskUser(ScenarioUser):
    """Echo tasks of 2-5 s: in-progress heartbeats and scale-up."""

    scenario = "long"

    def _long_task(self) -> tuple[str, str, dict[str, Any]]:
        return self.rng.choice(TENANTS), "echo", {"text": "long", "sleep_s": self.rng.uniform(2.0, 5.0)}

    @tag("long")
    @task(9)
    def submit_long(self) -> None:
        """Fire-and-forget one long task."""
        self.submit(*self._long_task())

    @tag("long")
    @task(1)
    def call_long(self) -> None:
        """Wait for one long task's result (queueing behind the others included)."""
        self.call(*self._long_task())


SCENARIO_USERS: tuple[type[ScenarioUser], ...] = (SteadyUser, SpikeUser, NoisyNeighbourUser, LongTaskUser)


@dataclass(frozen=True)
class _Plan:
    user_class: type[ScenarioUser]
    users: int
    duration_s: float
    drain_bound_s: float


class ScenarioShape(LoadTestShape):
    """Runs the selected scenario for its duration, then drains (see the module docstring)."""

    use_common_options = True
    plan: ClassVar[_Plan | None] = None
    """Resolved by :func:`configure` on the master (or the only process)."""

    _started: float | None = None
    _drain_from: float | None = None

    def reset_time(self) -> None:
        """Locust calls this as each run starts (the web UI can start several)."""
        self.start_time = time.perf_counter()
        self._started = self._drain_from = None

    def tick(self) -> tuple[int, float] | tuple[int, float, list[type[Any]] | None] | None:
        """Users for the scenario's profile; 0 while draining; None once drained."""
        plan = type(self).plan
        if plan is None:
            return None
        now = time.monotonic()
        if self._started is None:
            self._started = now  # the first tick comes as the run starts
        t = now - self._started
        if t < plan.duration_s:
            users = plan.user_class.users_at(t, plan.users, plan.duration_s)
            return users, _spawn_rate(users), [plan.user_class]
        if self._drain_from is None:
            self._drain_from = now
        process = plan.user_class.process
        drained = process is None or process.drained_since(self._drain_from)
        if drained or now - self._drain_from > plan.drain_bound_s:
            return None
        return 0, _spawn_rate(plan.users), [plan.user_class]


def _spawn_rate(users: int) -> float:
    """Each step within a second, up to Locust's advice of at most 100 users/s."""
    return float(min(max(users, 1), 100))


def configure(environment: Environment, scenarios: dict[str, Scenario]) -> None:
    """Resolve the scenario (by class, then by tag, else steady) and its plan; SystemExit if ambiguous.

    Must run from ``init``: ``-u`` and ``-t`` still read None there when they were not given
    (headless mode fills in ``-u 1`` later), so the scenario's defaults can apply.
    """
    ScenarioUser.scenarios = scenarios
    for cls in SCENARIO_USERS:
        spec = scenarios.get(cls.scenario)
        if spec is None or spec.user_class != cls.__name__:
            raise SystemExit(f"loadtest: slo.toml needs [{cls.scenario}] with user_class = {cls.__name__!r}")
    if isinstance(environment.runner, WorkerRunner):
        return  # the master runs the shape; a worker runs the users it is sent
    options = environment.parsed_options
    selected = [c for c in SCENARIO_USERS if c in environment.user_classes]
    tags = getattr(options, "tags", None)
    if tags:
        selected = [c for c in selected if c.scenario in tags]
    if len(selected) == len(SCENARIO_USERS):
        selected = [SteadyUser]
    if len(selected) != 1:
        names = ", ".join(c.scenario for c in selected) or "none"
        raise SystemExit(f"loadtest: select exactly one scenario by class or --tags (selected: {names})")
    user_class = selected[0]
    spec = scenarios[user_class.scenario]
    users = getattr(options, "num_users", None) or spec.users
    duration_s = float(getattr(options, "run_time", None) or spec.duration_s)
    result_timeout_s = getattr(options, "result_timeout_s", None) or spec.result_timeout_s
    ScenarioShape.plan = _Plan(
        user_class=user_class,
        users=users,
        duration_s=duration_s,
        drain_bound_s=result_timeout_s + ACK_TIMEOUT_S + 5.0,
    )
