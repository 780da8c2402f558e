"""The seed's "digital employee": the LLM task agent ``assistant`` with the order tools.

With no model configured it thinks with :func:`order_rules`, the deterministic
planner of the ``order`` agent turned into a brain: "customer U123 buys 10 of
PROD-001" plans ``check_inventory``, then (if there is enough) ``create_order``,
then answers. Set ``AGENTBUS_LLM_BASE_URL`` and ``AGENTBUS_LLM_MODEL`` and a model
plans with the same typed tools instead.
"""

from __future__ import annotations

import msgspec

from agentbus.errors import Reject
from agents.api import Context
from agents.builtin.orders import CheckInventory, CreateOrder, Inventory, plan
from agents.llm.agent import task_agent
from agents.llm.planner import OfflineBrain, Plan, Run, planned_call
from agents.llm.tools import Toolbox, tool

__all__ = ["Stock", "assistant", "order_rules", "order_tools"]


class Stock(msgspec.Struct):
    """What ``check_inventory`` answers."""

    available: int
    enough: bool


class Placed(msgspec.Struct):
    """What ``create_order`` answers."""

    order_id: str
    remaining: int


def order_tools(inventory: Inventory) -> Toolbox:
    """``check_inventory`` and ``create_order`` over ``inventory`` (per tenant)."""

    @tool(effect=False)
    def check_inventory(ctx: Context, args: CheckInventory) -> Stock:
        """How many units of a SKU the tenant has in stock, and whether that covers the quantity."""
        have = inventory.of(ctx.tenant).get(args.sku, 0)
        return Stock(available=have, enough=have >= args.quantity)

    @tool
    def create_order(ctx: Context, args: CreateOrder) -> Placed:
        """Place an order for a customer; takes the units out of stock."""
        if args.quantity <= 0:
            raise ValueError("quantity must be positive")
        stock = inventory.of(ctx.tenant)
        if stock.get(args.sku, 0) < args.quantity:
            raise ValueError(f"only {stock.get(args.sku, 0)} of {args.sku} in stock")
        stock[args.sku] -= args.quantity
        inventory.orders += 1
        return Placed(order_id=f"{ctx.tenant}-{inventory.orders:08d}", remaining=stock[args.sku])

    return Toolbox([check_inventory, create_order])


def order_rules(run: Run) -> Plan:
    """Deterministic planning of an order request, one step per turn."""
    try:
        calls = plan(run.request)
    except Reject as exc:
        raise Reject(
            f"offline brain: {exc.reason} (or configure AGENTBUS_LLM_BASE_URL for a model)"
        ) from None
    (_, check), (_, create) = calls
    assert isinstance(check, CheckInventory)
    assert isinstance(create, CreateOrder)
    if not run.turns:
        return Plan([planned_call("check_inventory", check, id="call_check")])
    last = run.turns[-1].outcomes[-1]
    if not last.ok:
        return Plan([], f"I could not complete the order: {last.error}.")
    if len(run.turns) == 1:
        if not last.result["enough"]:
            available = last.result["available"]
            return Plan(
                [], f"Not enough stock: {create.sku} has {available}, the order needs {create.quantity}."
            )
        return Plan([planned_call("create_order", create, id="call_create")])
    placed = last.result
    return Plan(
        [],
        f"Order {placed['order_id']} created: {create.quantity} x {create.sku} for customer "
        f"{create.customer}; {placed['remaining']} left in stock.",
    )


assistant = task_agent(
    kind="assistant",
    tools=order_tools(Inventory()),
    offline=OfflineBrain(order_rules),
    max_inflight=256,
    timeout_s=120,
)
