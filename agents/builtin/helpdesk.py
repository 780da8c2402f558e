"""An example LLM agent that answers from a knowledge base and acts through an MCP server.

``helpdesk`` has one local tool, ``retrieve`` over the tenant's ``handbook`` collection
(``AGENTBUS_KB_*``; fill it with ``agentbus kb add --tenant acme --collection handbook docs/``),
and the tools of the MCP servers in ``AGENTBUS_MCP_CONFIG`` (e.g. a ticket system's
``tickets__open_ticket``). With a model (``AGENTBUS_LLM_BASE_URL``) the model decides;
offline, :func:`helpdesk_rules` retrieves, opens a ticket when the request asks for
one and an ``*__open_ticket`` tool is there, and answers with the best passage cited.
"""

from __future__ import annotations

from agents.llm.agent import task_agent
from agents.llm.planner import OfflineBrain, Plan, Run, planned_call
from agents.llm.retrieval import Retrieve, RetrieveTool
from agents.llm.tools import Toolbox

__all__ = ["COLLECTION", "helpdesk", "helpdesk_rules"]

COLLECTION = "handbook"


def helpdesk_rules(run: Run) -> Plan:
    """Retrieve; then open a ticket if asked (and possible); then answer citing passage [1]."""
    if not run.turns:
        return Plan([planned_call("retrieve", Retrieve(query=run.request, k=3), id="call_retrieve")])
    found = run.turns[0].outcomes[0]
    ticket_tool = next((n for n in run.tools.names if n.endswith("__open_ticket")), None)
    if len(run.turns) == 1 and ticket_tool and "ticket" in run.request.lower():
        return Plan([planned_call(ticket_tool, {"title": run.request[:120]}, id="call_ticket")])
    if not found.ok or not found.result["passages"]:
        answer = "I found nothing about that in the knowledge base."
    else:
        best = found.result["passages"][0]
        first = best["text"].split("\n\n")[-1].split(". ")[0].rstrip(".")
        answer = f"{first}. {best['cite']} ({best['source']})"
    if len(run.turns) == 2:
        opened = run.turns[1].outcomes[0]
        answer += f" Ticket {opened.result['ticket_id']} opened." if opened.ok else " No ticket was opened."
    return Plan([], answer)


helpdesk = task_agent(
    kind="helpdesk",
    tools=Toolbox([RetrieveTool(COLLECTION)]),
    offline=OfflineBrain(helpdesk_rules),
    max_inflight=64,
    timeout_s=120,
)
