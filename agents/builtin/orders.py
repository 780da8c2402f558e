"""The seed's order agent: a deterministic planner turns a request into typed tool calls.

"customer U123 buys 10 of PROD-001" becomes ``check_inventory(sku, quantity)`` then
``create_order(customer, sku, quantity)``. Every step is recorded in the result (the audit
trail), the shape the LLM agent keeps, with a model instead of the regex planner.

In a worker the stock is the tenant's key ``stock.<sku>`` in NATS KV (``ctx.kv``), shared
by every worker: ``create_order`` takes stock with compare-and-set on the key's revision
and refuses when too little is left, so two workers can never sell the same last unit and
stock never goes negative. A CRDT counter (``ctx.state``) would not do: each replica
accepts a decrement locally and merges later, so two concurrent orders of the last unit
would both succeed. The order step runs through ``ctx.once``: a retried task does not take
stock twice. Without a worker (unit tests) the stock is :class:`Inventory`, in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agentbus.errors import Reject, Retry
from agents.api import Context, agent

__all__ = ["CheckInventory", "CreateOrder", "Inventory", "OrderIn", "OrderOut", "Step", "order", "plan"]


class OrderIn(msgspec.Struct):
    """A natural-language order request."""

    request: str


class CheckInventory(msgspec.Struct, forbid_unknown_fields=True):
    """Arguments of the ``check_inventory`` tool."""

    sku: str
    quantity: int


class CreateOrder(msgspec.Struct, forbid_unknown_fields=True):
    """Arguments of the ``create_order`` tool."""

    customer: str
    sku: str
    quantity: int


class Step(msgspec.Struct):
    """One executed tool call: its name, arguments and what it returned."""

    tool: str
    args: dict[str, Any]
    result: dict[str, Any]


class OrderOut(msgspec.Struct):
    """The outcome and the audit trail of every step."""

    status: str
    """``created`` or ``insufficient_stock``."""
    order_id: str | None
    steps: list[Step]


@dataclass
class Inventory:
    """Stock per tenant, in this worker's memory (shared state arrives with the CRDT store)."""

    initial: dict[str, int] = field(
        default_factory=lambda: {"PROD-001": 1_000_000, "PROD-002": 500_000, "PROD-003": 5}
    )
    stock: dict[str, dict[str, int]] = field(default_factory=dict)
    orders: int = 0

    def of(self, tenant: str) -> dict[str, int]:
        """The tenant's stock, created from ``initial`` on first use."""
        return self.stock.setdefault(tenant, dict(self.initial))


_REQUEST = re.compile(
    r"customer\s+(?P<customer>\w+)\s+buys\s+(?P<qty>\d+)\s+(?:x\s+|of\s+)?(?P<sku>[\w-]{1,64})", re.I | re.A
)


def plan(request: str) -> list[tuple[str, msgspec.Struct]]:
    """The deterministic planner: request text -> typed tool calls; Reject if it cannot plan."""
    match = _REQUEST.search(request)
    if match is None:
        raise Reject(f"cannot plan request {request[:80]!r}: expected 'customer <id> buys <n> of <sku>'")
    qty = int(match["qty"])
    if qty <= 0:
        raise Reject("quantity must be positive")
    sku = match["sku"].upper()
    return [
        ("check_inventory", CheckInventory(sku=sku, quantity=qty)),
        ("create_order", CreateOrder(customer=match["customer"], sku=sku, quantity=qty)),
    ]


def _tools(inventory: Inventory, tenant: str) -> dict[str, Callable[[Any], dict[str, Any]]]:
    stock = inventory.of(tenant)

    def check_inventory(args: CheckInventory) -> dict[str, Any]:
        have = stock.get(args.sku, 0)
        return {"available": have, "enough": have >= args.quantity}

    def create_order(args: CreateOrder) -> dict[str, Any]:
        stock[args.sku] = stock.get(args.sku, 0) - args.quantity
        inventory.orders += 1
        return {"order_id": f"{tenant}-{inventory.orders:08d}", "remaining": stock[args.sku]}

    return {"check_inventory": check_inventory, "create_order": create_order}


_INVENTORY = Inventory()
_CAS_TRIES = 32  # lost compare-and-set races in a row before the task is retried later


async def _stock(ctx: Context, sku: str) -> tuple[int, int]:
    """``(units, revision)`` of the tenant's ``stock.<sku>``, created from the initial stock."""
    key = f"stock.{sku}"
    while (found := await ctx.kv.get(key)) is None:
        await ctx.kv.create(key, b"%d" % _INVENTORY.initial.get(sku, 0))
    return int(found[0]), found[1]


async def _take(ctx: Context, args: CreateOrder) -> dict[str, Any]:
    """Take ``quantity`` units with compare-and-set; ``{}`` if too few are left."""
    for _ in range(_CAS_TRIES):
        have, revision = await _stock(ctx, args.sku)
        if have < args.quantity:
            return {}
        if await ctx.kv.update(f"stock.{args.sku}", b"%d" % (have - args.quantity), revision) is not None:
            return {"order_id": f"{ctx.tenant}-{ctx.task_id}", "remaining": have - args.quantity}
    raise Retry(f"stock of {args.sku} kept changing", delay_s=0.1)


async def _run_durable(ctx: Context, name: str, args: Any) -> dict[str, Any]:
    if name == "check_inventory":
        have, _ = await _stock(ctx, args.sku)
        return {"available": have, "enough": have >= args.quantity}
    result: dict[str, Any] = await ctx.once("create_order", lambda: _take(ctx, args))
    return result


@agent(kind="order", input=OrderIn, output=OrderOut, max_inflight=64, timeout_s=10)
async def order(ctx: Context, task: OrderIn) -> OrderOut:
    """Plan, then execute check_inventory -> create_order, recording each step."""
    tools = _tools(_INVENTORY, ctx.tenant)
    steps: list[Step] = []
    for name, args in plan(task.request):
        result = await _run_durable(ctx, name, args) if ctx.durable else tools[name](args)
        steps.append(Step(tool=name, args=msgspec.structs.asdict(args), result=result))
        if name == "create_order" and not result:  # sold out between the check and the order
            return OrderOut(status="insufficient_stock", order_id=None, steps=steps)
        if name == "check_inventory" and not result["enough"]:
            return OrderOut(status="insufficient_stock", order_id=None, steps=steps)
    return OrderOut(status="created", order_id=steps[-1].result["order_id"], steps=steps)
