"""The public surface is deliberate (STYLE.md 2, httpx ``tests/test_exported_members.py``).

Adding or removing a public name must be a conscious change to this test.
"""

from __future__ import annotations

import types

import pytest

import agentbus
import agents
import bus

EXPECTED: dict[types.ModuleType, list[str]] = {
    agentbus: ["AgentbusError", "__version__"],
    agents: [
        "AgentSpec",
        "AgentbusError",
        "Context",
        "Registry",
        "Reject",
        "Retry",
        "Services",
        "agent",
        "current_tenant",
    ],
    bus: [
        "ConsumerSpec",
        "DeadLetter",
        "DlqReason",
        "Publisher",
        "Result",
        "StreamLimits",
        "Task",
        "TaskRef",
        "TaskSpec",
        "ensure_consumer",
        "ensure_streams",
        "publish_sync",
    ],
}


@pytest.mark.parametrize("module", list(EXPECTED), ids=lambda m: m.__name__)
def test_all_is_exactly_the_agreed_surface(module: types.ModuleType) -> None:
    assert sorted(module.__all__) == sorted(EXPECTED[module])
    assert len(set(module.__all__)) == len(module.__all__), "duplicate names in __all__"


@pytest.mark.parametrize("module", list(EXPECTED), ids=lambda m: m.__name__)
def test_every_exported_name_exists(module: types.ModuleType) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("module", [agents, bus], ids=lambda m: m.__name__)
def test_exported_members_say_where_they_live(module: types.ModuleType) -> None:
    """Each exported class or function comes from the package itself or the shared kernel."""
    for name in module.__all__:
        member = getattr(module, name)
        origin = getattr(member, "__module__", None)
        if origin is None:  # plain values such as __version__
            continue
        assert origin.split(".")[0] in {module.__name__, "agentbus"}, f"{name} comes from {origin}"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from agents import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(agents.__all__)


def test_version_is_a_string() -> None:
    assert isinstance(agentbus.__version__, str)
    assert agentbus.__version__.count(".") >= 1


def test_agent_api_errors_share_the_root() -> None:
    assert issubclass(agents.Retry, agentbus.AgentbusError)
    assert issubclass(agents.Reject, agentbus.AgentbusError)
    assert agents.AgentbusError is agentbus.AgentbusError
