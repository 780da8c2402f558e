"""Prometheus metrics of the LLM task agents, read from plain counters at scrape time.

The agent registers one :class:`LLMCollector` through ``AgentSpec.collector``; the
worker adds it to its registry, so agents without a model cost nothing. The collector
reads an :class:`LLMStats` (plain dicts the agent increases), not the agent itself. ``endpoint``
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
``agentbus_mcp_calls_total{server,outcome}``     MCP tool calls: ``ok``, ``tool_error``,
                                                 ``invalid_arguments``, ``timeout``,
                                                 ``connection``, ``circuit_open``
``agentbus_mcp_call_seconds{server}``            time of the calls that reached the server
``agentbus_mcp_breaker_state{server}``           0 closed, 1 half-open, 2 open
``agentbus_mcp_connected{server}``               1 while the session is open
``agentbus_mcp_sessions_opened_total{server}``   sessions opened (reopens after broken ones)
==============================================  =========================================

Labels are bounded whatever the wire brings: a tool name the agent does not have (a model
can name any) counts as ``other``, and past ``agents.metrics.MAX_TENANT_LABELS`` tenants (the first ones
seen keep theirs, so every series stays monotonic) the rest add up under ``tenant="other"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from agents.metrics import OTHER_TENANT, TenantLabels, summed

if TYPE_CHECKING:
    from agents.llm.client import Endpoint
    from agents.llm.mcp import MCPConnection

__all__ = ["OTHER", "LLMCollector", "LLMStats"]

OTHER = OTHER_TENANT
"""The label of tool names the agent does not have (and of tenants past ``MAX_TENANT_LABELS``)."""


class LLMStats:
    """One LLM agent's counters: tokens per tenant, tool calls, its endpoints, limit refusals."""

    __slots__ = ("endpoints", "mcp", "refused", "tokens", "tool_calls")

    def __init__(self) -> None:
        self.tokens: dict[str, int] = {}
        self.tool_calls: dict[tuple[str, bool], int] = {}
        self.endpoints: Sequence[Endpoint] = ()
        self.refused: Mapping[tuple[str, str], int] = {}
        self.mcp: Sequence[MCPConnection] = ()


class LLMCollector(Collector):
    """Exposes one LLM agent's :class:`LLMStats`."""

    def __init__(self, kind: str, stats: LLMStats) -> None:
        self._kind = kind
        self._stats = stats
        self._tenants = TenantLabels()

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        kind = self._kind
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
        for ep in stats.endpoints:
            state.add_metric([kind, ep.label], float(ep.breaker.state))
            opened.add_metric([kind, ep.label], ep.breaker.opened)
            for outcome, n in sorted(ep.outcomes.items()):
                attempts.add_metric([kind, ep.label, outcome], n)
        tokens = CounterMetricFamily(
            "agentbus_llm_tokens", "Model tokens spent, by tenant", labels=["kind", "tenant"]
        )
        for (tenant, _), n in summed((((t, ""), n) for t, n in stats.tokens.items()), self._tenants):
            tokens.add_metric([kind, tenant], n)
        limited = CounterMetricFamily(
            "agentbus_llm_limited",
            "Model calls refused by a tenant limit",
            labels=["kind", "tenant", "limit"],
        )
        for (tenant, why), n in summed(stats.refused.items(), self._tenants):
            limited.add_metric([kind, tenant, why], n)
        tools = CounterMetricFamily(
            "agentbus_llm_tool_calls", "Tool calls by outcome", labels=["kind", "tool", "outcome"]
        )
        for (name, ok), n in sorted(stats.tool_calls.items()):
            tools.add_metric([kind, name, "ok" if ok else "error"], n)
        yield from (state, opened, attempts, tokens, limited, tools)
        if stats.mcp:
            yield from _mcp_families(kind, stats.mcp)


def _mcp_families(kind: str, conns: Sequence[MCPConnection]) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        "agentbus_mcp_calls", "MCP tool calls by outcome", labels=["kind", "server", "outcome"]
    )
    seconds = SummaryMetricFamily(
        "agentbus_mcp_call_seconds",
        "Time of MCP tool calls that reached the server",
        labels=["kind", "server"],
    )
    breaker = GaugeMetricFamily(
        "agentbus_mcp_breaker_state",
        "Circuit breaker of an MCP server: 0 closed, 1 half-open, 2 open",
        labels=["kind", "server"],
    )
    opened = CounterMetricFamily(
        "agentbus_mcp_sessions_opened", "MCP sessions opened (reopens included)", labels=["kind", "server"]
    )
    connected = GaugeMetricFamily(
        "agentbus_mcp_connected", "1 while the MCP session is open", labels=["kind", "server"]
    )
    for conn in conns:
        name = conn.config.name
        for outcome, n in sorted(conn.outcomes.items()):
            calls.add_metric([kind, name, outcome], n)
        seconds.add_metric([kind, name], count_value=conn.calls, sum_value=conn.seconds)
        breaker.add_metric([kind, name], float(conn.breaker.state))
        connected.add_metric([kind, name], 1.0 if conn.connected else 0.0)
        opened.add_metric([kind, name], conn.opened)
    yield from (calls, seconds, breaker, connected, opened)
