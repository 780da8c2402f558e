"""The LLM task agent: plan -> execute the steps as tool calls -> answer, with an audit trail.

:func:`task_agent` builds an ordinary :class:`~agents.api.AgentSpec` (the handler is
a :class:`TaskAgent`'s method), so the worker runs it like any agent. Each turn:

1. the tenant's limits are checked (budget: rejected; rate: retried later);
2. the brain plans (a ``plan`` span; the final turn's span is renamed ``answer``):
   tool calls, or the answer, whose text streams out as ``token`` events;
3. the calls run concurrently, each in a ``tool`` span; their outcomes, errors
   included, are recorded and go back to the brain.

Every decision and step is a :data:`~bus.messages.AuditEvent`, kept in the result and,
when the publisher follows the task (``"stream": true`` in its envelope), sent live on
``results.<tenant>.<task_id>.stream`` with the answer's tokens. Each attempt's events, its
fate and tokens are stored on ``audit.<tenant>.<task_id>`` (``Context.audit``; ``agentbus
audit``). Each call of a tool with an effect (``Tool.effect``, the default) runs through the
effects ledger (``Context.once``, keyed by turn, step, tool and arguments), so a retried task
resumes: the steps already done return their recorded outcome instead of running again. Bounds: ``max_turns``
plans, ``max_steps`` tool calls and ``max_tool_errors`` failed calls per task; past
one the task is rejected with the reason (DLQ ``rejected``). Model failures are
mapped to fates: open breaker, rate limit, unavailable model -> ``Retry`` with the
delay they carry; spent budget, refused request, unusable output -> ``Reject``.

The toolbox a task sees is the agent's tools plus the tools of the MCP servers its
tenant may use (:mod:`agents.llm.mcp`, opened in ``on_start``, closed in ``on_stop``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from agentbus.errors import (
    LLMError,
    ModelOutputError,
    Retry,
    TaskFate,
)
from agents.api import AgentSpec, Context, Services
from agents.llm._attempt import Events, fate
from agents.llm.budget import LocalLimits, TenantLimits
from agents.llm.client import ChatClient
from agents.llm.config import LLMConfig
from agents.llm.mcp import MCPToolset
from agents.llm.mcp_config import MCPServerConfig, mcp_servers_from_env
from agents.llm.metrics import OTHER, LLMCollector, LLMStats
from agents.llm.planner import Brain, ModelBrain, Plan, PlannedCall, Run, Turn
from agents.llm.shared_limits import SharedLimits
from agents.llm.tools import Toolbox, ToolOutcome
from bus import tracing
from bus.messages import AuditEvent, DecisionEvent, DoneEvent, StepEvent, now

__all__ = ["TaskAgent", "TaskIn", "TaskOut", "agent_of", "task_agent"]


class TaskIn(msgspec.Struct, gc=False):
    """A request in natural language."""

    request: str


class TaskOut(msgspec.Struct, gc=False):
    """The answer and the audit trail of every decision and tool call."""

    answer: str
    audit: list[AuditEvent]
    brain: str
    turns: int
    tokens: int


class TaskAgent:
    """Runs tasks with a brain (model or offline), a toolbox and per-tenant limits."""

    def __init__(
        self,
        *,
        kind: str,
        tools: Toolbox,
        offline: Brain,
        config: LLMConfig | None = None,
        brain: Brain | None = None,
        limits: TenantLimits | None = None,
        mcp: Sequence[MCPServerConfig] | None = None,
        max_inflight: int = 256,
        timeout_s: float = 120.0,
    ) -> None:
        self.tools = tools
        self._mcp_servers = mcp
        self.mcp: MCPToolset | None = None
        """The MCP servers' sessions and tools, opened by :meth:`on_start`."""
        self._config = config
        self._brain = brain
        self._limits = limits
        self.config: LLMConfig | None = None
        self.brain: Brain = offline
        self.client: ChatClient | None = None
        self.limits: TenantLimits | None = None
        self.stats = LLMStats()
        """What the metrics read: tokens per tenant, tool calls, the endpoints, the limits' refusals."""
        self.tokens = self.stats.tokens
        self.tool_calls = self.stats.tool_calls
        self._traced = False
        self.spec: AgentSpec[TaskIn, TaskOut] = AgentSpec(
            kind=kind,
            input=TaskIn,
            output=TaskOut,
            handler=self.handle,
            max_inflight=max_inflight,
            timeout_s=timeout_s,
            collector=LLMCollector(kind, self.stats),
            on_start=self.on_start,
            on_stop=self.aclose,
            audits=True,
        )

    async def on_start(self, services: Services) -> None:
        """At the worker's start: read ``AGENTBUS_LLM_*`` (a bad value stops the worker with a
        ConfigError naming it), take the cluster-wide limits and count tokens in the shared usage."""
        self.setup(services)
        services.count_tokens(self.tokens)
        try:
            await self.tools.start()
            await self.open_mcp()
        except BaseException:  # the worker runs on_stop only for agents that started
            await self.aclose()
            raise

    async def open_mcp(self) -> None:
        """Open the sessions to this agent's MCP servers (given, else ``AGENTBUS_MCP_CONFIG``'s
        for this kind) and list their tools; a missing ``mcp`` package is a ConfigError."""
        servers = self._mcp_servers if self._mcp_servers is not None else mcp_servers_from_env()
        mine = [s for s in servers if s.serves(self.spec.kind)]
        if mine and self.mcp is None:
            toolset = MCPToolset(mine)
            await toolset.open(self.tools.names)
            self.mcp = toolset
            self.stats.mcp = toolset.connections

    def setup(self, services: Services | None = None) -> None:
        """Resolve configuration (``AGENTBUS_LLM_*`` when none was given), the brain and the limits; once.

        With ``services`` from a worker the limits are shared by the cluster
        (:class:`~agents.llm.shared_limits.SharedLimits`); without, they are this process's.
        """
        if self.config is not None:
            return
        cfg = self._config or LLMConfig.from_env()
        if self._brain is not None:
            self.brain = self._brain
        elif not cfg.offline:
            self.client = ChatClient(cfg)
            self.brain = ModelBrain(self.client, cfg)
            self.stats.endpoints = self.client.endpoints
        if self._limits is not None:
            self.limits = self._limits
        elif services is not None and services.stores is not None:
            self.limits = SharedLimits(services.stores, cfg.limits)
        else:
            self.limits = LocalLimits(cfg.limits)
        self.stats.refused = getattr(self.limits, "refused", {})
        self._traced = tracing.enabled()
        self.config = cfg

    async def aclose(self) -> None:
        """Close the model client's connections and the MCP sessions."""
        if self.client is not None:
            await self.client.aclose()
        if self.mcp is not None:
            await self.mcp.close()
            self.mcp = None
        await self.tools.stop()

    async def handle(self, ctx: Context, task: TaskIn) -> TaskOut:
        """The handler: run the loop, map LLM failures to the task's fate."""
        self.setup()
        events = Events(ctx)
        audit: list[AuditEvent] = []
        started = now()
        try:
            out = await self._run(ctx, task, events, audit)
        except (LLMError, TaskFate) as exc:
            ending = fate(exc)
            await events.send(DoneEvent(seq=events.next(), ok=False, error=str(exc), attempt=events.attempt))
            kind = "retry" if isinstance(ending, Retry) else "rejected"
            await self._audit(ctx, audit, started, kind, str(exc))
            if ending is exc:
                raise
            raise ending from exc
        except Exception as exc:  # a bug or a dropped connection: the runner retries it
            await self._audit(ctx, audit, started, "retry", f"{type(exc).__name__}: {exc}")
            raise
        if events.on:
            await events.send(DoneEvent(seq=events.next(), ok=True, attempt=events.attempt))
        await self._audit(ctx, audit, started, "ok", "")
        return out

    async def _audit(
        self, ctx: Context, audit: list[AuditEvent], started: float, fate: str, error: str
    ) -> None:
        tokens = sum(e.tokens for e in audit if isinstance(e, DecisionEvent))
        await ctx.audit(
            fate=fate, started_at=started, events=audit, error=error, tokens=tokens, brain=self.brain.name
        )

    async def _run(self, ctx: Context, task: TaskIn, events: Events, audit: list[AuditEvent]) -> TaskOut:
        cfg, limits, brain = self.config, self.limits, self.brain
        assert cfg is not None
        assert limits is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.timeout_s  # the runner cancels the attempt then
        if ctx.deadline is not None:
            deadline = min(deadline, loop.time() + ctx.deadline - now())
        tools = self.tools if self.mcp is None else self.mcp.toolbox(self.tools, ctx.tenant)
        run = Run(task.request, ctx.tenant, tools, events.token, deadline, streaming=events.on)
        tokens = steps = errors = 0
        last_error = ""
        for turn in range(cfg.max_turns):
            events.turn = turn
            limits.check(ctx.tenant)
            plan = await (self._plan_traced(brain, run, turn) if self._traced else brain.plan(run))
            limits.charge(ctx.tenant, plan.tokens)
            tokens += plan.tokens
            self.tokens[ctx.tenant] = self.tokens.get(ctx.tenant, 0) + plan.tokens
            if not plan.calls and not plan.text.strip():
                errors += 1
                last_error = "the model returned neither tool calls nor an answer"
                run.nudge = "Reply with tool calls or with your final answer."
            else:
                run.nudge = ""
                final = not plan.calls
                decision = DecisionEvent(
                    seq=events.next(),
                    turn=turn,
                    brain=plan.brain or brain.name,
                    tools=[c.tool for c in plan.calls],
                    final=final,
                    text=plan.text,
                    tokens=plan.tokens,
                    attempt=events.attempt,
                )
                audit.append(decision)
                if events.on:
                    await events.send(decision)
                if final:
                    return TaskOut(plan.text, audit, brain.name, turn + 1, tokens)
                steps += len(plan.calls)
                if steps > cfg.max_steps:
                    raise ModelOutputError(
                        f"step bound: {steps} tool calls planned, max_steps is {cfg.max_steps}"
                    )
                first = steps - len(plan.calls)
                if len(plan.calls) == 1:  # the common case: no gather() machinery
                    outcomes = [await self._step(ctx, plan.calls[0], tools, turn, first)]
                else:
                    outcomes = await asyncio.gather(
                        *(self._step(ctx, call, tools, turn, first + i) for i, call in enumerate(plan.calls))
                    )
                for index, (call, (outcome, ms)) in enumerate(zip(plan.calls, outcomes, strict=True)):
                    step = StepEvent(
                        seq=events.next(),
                        turn=turn,
                        step=steps - len(plan.calls) + index,
                        tool=call.tool,
                        arguments=call.arguments,
                        ok=outcome.ok,
                        result=outcome.result,
                        error=outcome.error,
                        duration_ms=ms,
                        attempt=events.attempt,
                    )
                    audit.append(step)
                    if events.on:
                        await events.send(step)
                    if not outcome.ok:
                        errors += 1
                        last_error = outcome.error
                run.turns.append(Turn(plan, [o for o, _ in outcomes]))
            if errors > cfg.max_tool_errors:
                raise ModelOutputError(
                    f"{errors} unusable model outputs (max_tool_errors {cfg.max_tool_errors});"
                    f" last: {last_error}"
                )
        raise ModelOutputError(f"no answer within max_turns={cfg.max_turns} (the step bound)")

    async def _plan_traced(self, brain: Brain, run: Run, turn: int) -> Plan:
        with tracing.span("plan", turn=turn, brain=brain.name) as span:
            plan = await brain.plan(run)
            if not plan.calls:
                span.update_name("answer")
            return plan

    async def _step(
        self, ctx: Context, call: PlannedCall, tools: Toolbox, turn: int, index: int
    ) -> tuple[ToolOutcome, float]:
        started = time.perf_counter()
        if self._traced:
            with tracing.span("tool", tool=call.tool):
                outcome = await self._call(ctx, call, tools, turn, index)
        else:
            outcome = await self._call(ctx, call, tools, turn, index)
        key = (call.tool if call.tool in tools else OTHER, outcome.ok)  # the model names any tool
        self.tool_calls[key] = self.tool_calls.get(key, 0) + 1
        return outcome, round((time.perf_counter() - started) * 1000, 3)

    async def _call(
        self, ctx: Context, call: PlannedCall, tools: Toolbox, turn: int, index: int
    ) -> ToolOutcome:
        """The tool call, through the effects ledger when the worker gave one: a retried task
        gets a step it already ran back from the ledger instead of running it again."""
        if not (ctx.durable and tools.has_effect(call.tool)):  # a read may run again
            return await tools.call(ctx, call.tool, call.arguments)
        digest = hashlib.blake2b(f"{call.tool}\0{call.arguments}".encode(), digest_size=8).hexdigest()
        step = f"tool-{turn}-{index}-{digest}"
        outcome: ToolOutcome = await ctx.once(
            step, lambda: tools.call(ctx, call.tool, call.arguments), type=ToolOutcome
        )
        return outcome


def task_agent(
    *,
    kind: str,
    tools: Toolbox,
    offline: Brain,
    config: LLMConfig | None = None,
    brain: Brain | None = None,
    limits: TenantLimits | None = None,
    mcp: Sequence[MCPServerConfig] | None = None,
    max_inflight: int = 256,
    timeout_s: float = 120.0,
) -> AgentSpec[TaskIn, TaskOut]:
    """An LLM task agent for ``kind``: the model of ``config`` (default: ``AGENTBUS_LLM_*``,
    read when the worker starts), else the ``offline`` brain; ``brain`` overrides both.
    ``mcp``: the MCP servers whose tools join ``tools`` (default: ``AGENTBUS_MCP_CONFIG``'s)."""
    agent = TaskAgent(
        kind=kind,
        tools=tools,
        offline=offline,
        config=config,
        brain=brain,
        limits=limits,
        mcp=mcp,
        max_inflight=max_inflight,
        timeout_s=timeout_s,
    )
    return agent.spec


def agent_of(spec: AgentSpec[Any, Any]) -> TaskAgent:
    """The :class:`TaskAgent` behind a spec made by :func:`task_agent`."""
    owner = getattr(spec.handler, "__self__", None)
    if not isinstance(owner, TaskAgent):
        raise TypeError(f"agent {spec.kind} was not made by task_agent()")
    return owner
