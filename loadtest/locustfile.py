"""Locust entry of agentbus's load tests: ``locust -f loadtest/locustfile.py --host nats://HOST:4222``.

Pick a scenario by class (``SpikeUser``) or tag (``--tags spike``); ``python -m loadtest.run``
does it for you, then judges the run (docs/loadtest.md). Locust has monkey-patched the
process with gevent before it loads this file; agentbus never imports these modules.
"""

from __future__ import annotations

from typing import Any

from locust import events
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from loadtest.locust_nats import LoadProcess, NatsUser
from loadtest.scenarios import (
    LongTaskUser,
    NoisyNeighbourUser,
    ScenarioShape,
    SpikeUser,
    SteadyUser,
    configure,
)
from loadtest.slo import load_scenarios

# Locust finds users and the shape among this module's names.
__all__ = ["LongTaskUser", "NoisyNeighbourUser", "ScenarioShape", "SpikeUser", "SteadyUser"]


def _add_options(parser: LocustArgumentParser, **_: Any) -> None:
    group = parser.add_argument_group("agentbus", "NATS load (--host is the NATS URL)")
    group.add_argument("--task-rate", type=float, help="tasks/s per user (default: the scenario's)")
    group.add_argument(
        "--result-timeout-s", type=float, help="seconds a call waits for its Result (default: the scenario's)"
    )
    group.add_argument(
        "--tenant",
        help="publish every task as this tenant (needed with a tenant's credential: docs/security.md)",
    )


def _on_init(environment: Environment, **_: Any) -> None:
    NatsUser.process = LoadProcess(environment)
    configure(environment, load_scenarios())


events.init_command_line_parser.add_listener(_add_options)
events.init.add_listener(_on_init)
