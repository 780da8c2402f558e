"""agentbus: fleets of typed AI task agents consuming NATS JetStream.

This package is the shared kernel: the version and the one exception tree that
``bus``, ``agents``, ``state`` and ``scaler`` all raise from. The user-facing API
lives in ``agents`` (``import agents``).
"""

from agentbus.errors import AgentbusError

__all__ = ["AgentbusError", "__version__"]

__version__ = "0.1.0"
