"""Built-in demo agents: ``echo``, ``summarize`` and the seed's ``order`` agent.

They run with no model and no external service, so ``make demo`` shows real
work on a fresh machine. ``agentbus worker`` loads this module by default.
"""

from agents.builtin.basic import echo, summarize
from agents.builtin.orders import order

__all__ = ["echo", "order", "summarize"]
