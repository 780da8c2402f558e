"""Prometheus metrics of the LLM task agents, read from plain counters at scrape time.

The agent registers one :class:`LLMCollector` through ``AgentSpec.collector``; the
worker adds it to its registry, so agents without a model cost nothing. ``endpoint``
is the endpoint's URL without user info or query (:func:`~agents.llm._failure.redact_url`).

==============================================  =========================================
``agentbus_llm_breaker_state{endpoint}``         0 closed, 1 half-open, 2 open
``agentbus_llm_breaker_opened_total{endpoint}``  times the breaker opened
``agentbus_llm_attempts_total{endpoint,outcome}``  model call attempts: ``ok``, ``http_429``,
                                                 ``http_503``, ``connection``, ``timeout``,
                                                 ``bad_body``, ``circuit_open``, ...
``agentbus_llm_tokens_total{tenant}``            model tokens spent (estimated offline)
``agentbus_llm_limited_total{tenant,limit}``     model calls refused: ``budget`` or ``rate``
``agentbus_llm_tool_calls_total{tool,outcome}``  tool calls: ``ok`` or ``error``
==============================================  =========================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agents.llm.agent import TaskAgent

__all__ = ["LLMCollector"]


class LLMCollector(Collector):
    """Exposes one :class:`~agents.llm.agent.TaskAgent`'s counters."""

    def __init__(self, agent: TaskAgent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self._agent
        kind = agent.spec.kind
        state = GaugeMetricFamily(
            "agentbus_llm_breaker_state",
            "Circuit breaker of a model endpoint: 0 closed, 1 half-open, 2 open",
            labels=["kind", "endpoint"],
        )
        opened = CounterMetricFamily(
            "agentbus_llm_breaker_opened", "Times the breaker opened", labels=["kind", "endpoint"]
        )
        attempts = CounterMetricFamily(
            "agentbus_llm_attempts", "Model call attempts by outcome", labels=["kind", "endpoint", "outcome"]
        )
        for ep in agent.client.endpoints if agent.client is not None else ():
            state.add_metric([kind, ep.label], float(ep.breaker.state))
            opened.add_metric([kind, ep.label], ep.breaker.opened)
            for outcome, n in sorted(ep.outcomes.items()):
                attempts.add_metric([kind, ep.label, outcome], n)
        tokens = CounterMetricFamily(
            "agentbus_llm_tokens", "Model tokens spent, by tenant", labels=["kind", "tenant"]
        )
        for tenant, n in sorted(agent.tokens.items()):
            tokens.add_metric([kind, tenant], n)
        limited = CounterMetricFamily(
            "agentbus_llm_limited",
            "Model calls refused by a tenant limit",
            labels=["kind", "tenant", "limit"],
        )
        for (tenant, why), n in sorted(getattr(agent.limits, "refused", {}).items()):
            limited.add_metric([kind, tenant, why], n)
        tools = CounterMetricFamily(
            "agentbus_llm_tool_calls", "Tool calls by outcome", labels=["kind", "tool", "outcome"]
        )
        for (name, ok), n in sorted(agent.tool_calls.items()):
            tools.add_metric([kind, name, "ok" if ok else "error"], n)
        yield from (state, opened, attempts, tokens, limited, tools)
