"""agentbus: fleets of typed AI task agents consuming NATS JetStream.

This package is the shared kernel: the version and the one exception tree that
``bus``, ``agents``, ``state`` and ``scaler`` all raise from. The user-facing API
lives in ``agents`` (``import agents``).
"""

from importlib.metadata import PackageNotFoundError, version

from agentbus.errors import AgentbusError

__all__ = ["AgentbusError", "__version__"]

try:
    __version__ = version("agentbus")  # one source: pyproject.toml
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"
