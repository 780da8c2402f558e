"""The tenant scope: a context variable set from the task's subject, never its payload.

Every handler runs in its own copy of the context with the tenant set, the
Python analogue of goroutine-local storage; code called from a handler can ask
:func:`current_tenant` without threading the tenant through arguments.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["current_tenant"]

_tenant: ContextVar[str] = ContextVar("agentbus_tenant")


def current_tenant() -> str:
    """The tenant of the task being handled; raises ``LookupError`` outside a handler."""
    return _tenant.get()
