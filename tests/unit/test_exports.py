"""The public surface is deliberate (as httpx ``tests/test_exported_members.py`` does).

Adding or removing a public name must be a conscious change to this test.
"""

from __future__ import annotations

import importlib
import pkgutil
import types
from importlib.metadata import version

import pytest

import agentbus
import agents
import agents.kb
import agents.llm.testing
import agents.testing
import bus
import bus.cluster
import bus.edge
from agentbus.errors import ConfigError, ResultTimeoutError, UsageError

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
    agents.testing: ["AgentTester", "Outcome", "PublishedTask", "bare_context"],
    agents.kb: [
        "Chunk",
        "Document",
        "Embedder",
        "HashEmbedder",
        "Hit",
        "KBConfig",
        "KnowledgeBase",
        "OpenAIEmbedder",
        "SQLiteStore",
        "VectorStore",
        "chunk_text",
        "normalize",
    ],
    agents.llm.testing: [
        "Recorded",
        "Reply",
        "ScriptedLLM",
        "bench_model",
        "malformed",
        "status",
        "stream_text",
        "stream_tool_calls",
        "text",
        "tool_calls",
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
    bus.cluster: ["CLUSTER_NAME", "NatsCluster"],
    bus.edge: [
        "EDGE_STREAM",
        "SourceStatus",
        "cloud_api",
        "ensure_edge_stream",
        "leaf_config",
        "restart_sources",
        "resume_on_reconnect",
        "source_edge",
        "source_stalled",
        "source_status",
        "start_edge_server",
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


def test_version_is_the_package_metadata() -> None:
    assert agentbus.__version__ == version("agentbus")
    assert agentbus.__version__.count(".") >= 1


def _public_modules() -> list[str]:
    names = []
    for top in ("agentbus", "bus", "agents", "state", "scaler"):
        package = importlib.import_module(top)
        names.append(top)
        for info in pkgutil.walk_packages(package.__path__, f"{top}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return names


@pytest.mark.parametrize("name", _public_modules())
def test_every_public_module_declares_its_surface(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert [n for n in exported if not hasattr(module, n)] == []


def test_errors_are_also_the_builtin_kinds_callers_catch() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(UsageError, ConfigError)
    assert issubclass(ResultTimeoutError, TimeoutError)
    with pytest.raises(TimeoutError):
        raise ResultTimeoutError("t1", 2.0)


def test_agent_api_errors_share_the_root() -> None:
    assert issubclass(agents.Retry, agentbus.AgentbusError)
    assert issubclass(agents.Reject, agentbus.AgentbusError)
    assert agents.AgentbusError is agentbus.AgentbusError
