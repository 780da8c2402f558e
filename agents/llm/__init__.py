"""LLM task agents: an OpenAI-compatible client, typed tools, brains, budgets and a breaker.

    from agents.llm import OfflineBrain, Plan, Toolbox, task_agent, tool

    @tool
    def lookup(ctx, args: Lookup) -> Found: ...

    support = task_agent(kind="support", tools=Toolbox([lookup]), offline=OfflineBrain(my_rules))

``support`` is an ordinary agent spec: ``agentbus worker --agents mymodule`` serves it.
With ``AGENTBUS_LLM_BASE_URL`` and ``AGENTBUS_LLM_MODEL`` set it plans with that model
(vLLM, Ollama, llama.cpp server, LiteLLM, hosted APIs), else with the offline rules.
See docs/llm.md.
"""

from agents.llm.agent import TaskAgent, TaskIn, TaskOut, agent_of, task_agent
from agents.llm.breaker import BreakerState, CircuitBreaker
from agents.llm.budget import LocalLimits, TenantLimits
from agents.llm.client import ChatClient
from agents.llm.config import BreakerConfig, LimitsConfig, LLMConfig, ModelEndpoint, RetryConfig
from agents.llm.mcp_config import MCPServerConfig
from agents.llm.planner import Brain, ModelBrain, OfflineBrain, Plan, PlannedCall, Run, planned_call
from agents.llm.tools import Tool, Toolbox, ToolOutcome, tool

__all__ = [
    "Brain",
    "BreakerConfig",
    "BreakerState",
    "ChatClient",
    "CircuitBreaker",
    "LLMConfig",
    "LimitsConfig",
    "LocalLimits",
    "MCPServerConfig",
    "ModelBrain",
    "ModelEndpoint",
    "OfflineBrain",
    "Plan",
    "PlannedCall",
    "RetryConfig",
    "Run",
    "TaskAgent",
    "TaskIn",
    "TaskOut",
    "TenantLimits",
    "Tool",
    "ToolOutcome",
    "Toolbox",
    "agent_of",
    "planned_call",
    "task_agent",
    "tool",
]
