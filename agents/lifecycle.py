"""Worker lifecycle: Pending -> Running -> Stopping -> Stopped, observable by /readyz and metrics."""

from __future__ import annotations

import enum

__all__ = ["Lifecycle", "State"]


class State(enum.StrEnum):
    """Where a worker process is in its life."""

    PENDING = "pending"
    """Started, connecting and provisioning; not consuming yet."""
    RUNNING = "running"
    """Consuming; ready when NATS is connected."""
    STOPPING = "stopping"
    """Draining: no new fetches, finishing in-flight work."""
    STOPPED = "stopped"


_NEXT = {
    State.PENDING: {State.RUNNING, State.STOPPING, State.STOPPED},
    State.RUNNING: {State.STOPPING},
    State.STOPPING: {State.STOPPED},
    State.STOPPED: set(),
}


class Lifecycle:
    """The current state, moving forward only."""

    def __init__(self) -> None:
        self.state = State.PENDING

    def move(self, to: State) -> bool:
        """Move to ``to`` if it is a forward step; False (and no change) otherwise."""
        if to not in _NEXT[self.state]:
            return False
        self.state = to
        return True
