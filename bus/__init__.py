"""NATS JetStream plumbing: wire messages, topology, publisher, pull consumer, DLQ."""

from bus.messages import DeadLetter, DlqReason, Result, Task
from bus.publisher import Publisher, TaskRef, TaskSpec, publish_sync
from bus.topology import ConsumerSpec, StreamLimits, ensure_consumer, ensure_streams

__all__ = [
    "ConsumerSpec",
    "DeadLetter",
    "DlqReason",
    "Publisher",
    "Result",
    "StreamLimits",
    "Task",
    "TaskRef",
    "TaskSpec",
    "ensure_consumer",
    "ensure_streams",
    "publish_sync",
]
