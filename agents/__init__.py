"""The agent API of agentbus.

    import msgspec
    from agents import Context, agent

    class Question(msgspec.Struct):
        text: str

    class Answer(msgspec.Struct):
        text: str

    @agent(kind="answer", input=Question, output=Answer, max_inflight=32, timeout_s=20)
    async def answer(ctx: Context, task: Question) -> Answer:
        return Answer(text=f"{ctx.tenant} asked: {task.text}")

Run it with ``agentbus worker --agents mymodule``. Raise :class:`Retry` for a
transient failure and :class:`Reject` for a task that must not be retried.
"""

from agentbus.errors import AgentbusError, Reject, Retry
from agents.api import AgentSpec, Context, Services, agent
from agents.registry import Registry
from agents.tenancy import current_tenant

__all__ = [
    "AgentSpec",
    "AgentbusError",
    "Context",
    "Registry",
    "Reject",
    "Retry",
    "Services",
    "agent",
    "current_tenant",
]
