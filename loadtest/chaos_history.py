"""The history checker of the chaos suite: what was acknowledged, what ran, what was dead-lettered.

A pure function of a recorded :class:`History` (no I/O, no clock): the chaos runner
records every JetStream publish ack, every completed execution of a task (the
handler journals it before returning, so a ``kill -9`` of its worker after that keeps
the record) and every dead letter read back from stream ``DLQ``, plus the windows in
which faults were active. :func:`check` then proves, in the spirit of Jepsen's queue
workload:

* **lost**: every acknowledged task completed or was dead-lettered;
* **unexpected duplicates**: a task that ran more than once did so only as a
  redelivery that began inside a fault window (plus a grace for ack_wait): one delivery
  run twice, or a redelivery with no fault to explain it, is a violation. A delivery is
  known by its consumer sequence (``Context.delivery``); a consumer whose Raft leader
  changed may deliver again with a delivery count it already used, so the count alone
  (the rule when deliveries are not recorded) would call that one delivery run twice;
* **concurrent**: two executions of one task overlapping in time by two workers, beyond
  redeliveries explained by a fault;
* **DLQ copies unique**: one dead letter per task at most, and no task both completed and
  dead-lettered;
* **phantoms**: nothing completed or dead-lettered that no publish sent.

Publishes whose ack never came (timeout, connection lost) are indeterminate: the task may
or may not have been stored; either fate is allowed and counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

__all__ = ["Execution", "Fault", "History", "Verdict", "check"]


@dataclass(frozen=True, slots=True)
class Execution:
    """One completed run of a task's handler, as its worker journaled it."""

    task_id: str
    worker: str
    attempt: int
    """The delivery count the worker saw (1 on the first delivery)."""
    start: float
    end: float
    """Monotonic seconds (one machine: CLOCK_MONOTONIC is shared by every process)."""
    delivery: str = ""
    """Which delivery ran (``Context.delivery``: consumer and its sequence); "" if not known."""


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault was active from ``start`` until ``end`` (healed)."""

    name: str
    start: float
    end: float


@dataclass(slots=True)
class History:
    """Everything the runner recorded."""

    sent: dict[str, float] = field(default_factory=dict)
    """Task id -> time it was published (for recovery times; the checker does not need it)."""
    acked: dict[str, float] = field(default_factory=dict)
    """Task id -> time its publish ack arrived."""
    unacked: set[str] = field(default_factory=set)
    """Tasks published whose ack never came (indeterminate)."""
    executions: list[Execution] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    """Task id of every dead letter in stream DLQ, copies included."""
    expected_dead: set[str] = field(default_factory=set)
    """Poison tasks: they can only be dead-lettered, never complete."""
    faults: list[Fault] = field(default_factory=list)


@dataclass(slots=True)
class Verdict:
    """What :func:`check` found; ``ok`` when no violation."""

    acked: int = 0
    indeterminate: int = 0
    completed: int = 0
    dead_lettered: int = 0
    dead_lettered_not_poison: int = 0
    """Dead letters of tasks that were not poison: delivered ``max_deliver`` times across faults
    without finishing (allowed: the task is accounted for; reported)."""
    lost: list[str] = field(default_factory=list)
    duplicates: int = 0
    """Executions beyond the first of a task: redeliveries after faults (allowed, reported)."""
    unexpected_duplicates: list[str] = field(default_factory=list)
    concurrent: list[str] = field(default_factory=list)
    dlq_copies: list[str] = field(default_factory=list)
    completed_and_dead: list[str] = field(default_factory=list)
    poison_completed: list[str] = field(default_factory=list)
    phantoms: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No lost task and no violation of any kind."""
        return not (
            self.lost
            or self.unexpected_duplicates
            or self.concurrent
            or self.dlq_copies
            or self.completed_and_dead
            or self.poison_completed
            or self.phantoms
        )

    def violations(self) -> dict[str, list[str]]:
        """Each non-empty violation list by name (a few ids each, for a report)."""
        named = {
            "lost": self.lost,
            "unexpected_duplicates": self.unexpected_duplicates,
            "concurrent": self.concurrent,
            "dlq_copies": self.dlq_copies,
            "completed_and_dead": self.completed_and_dead,
            "poison_completed": self.poison_completed,
            "phantoms": self.phantoms,
        }
        return {k: sorted(v)[:10] for k, v in named.items() if v}


def _explained(start: float, faults: list[Fault], grace_s: float) -> bool:
    """A redelivery that began inside a fault window, or within ``grace_s`` after it healed."""
    return any(f.start <= start <= f.end + grace_s for f in faults)


def _unexplained_overlap(a: Execution, b: Execution, faults: list[Fault], grace_s: float) -> bool:
    """``a`` (started first) and ``b`` ran at once on two workers, ``b`` no redelivery after a fault."""
    if not (b.start < a.end and a.worker != b.worker):
        return False
    return not (_redelivery(a, b) and _explained(b.start, faults, grace_s))


def _redelivery(a: Execution, b: Execution) -> bool:
    """``b`` ran from a later delivery than ``a``: a higher delivery count, or (when both
    deliveries are known) another delivery. A consumer whose leader changed may deliver again
    with the count it had already used; a delivery run twice is never a redelivery."""
    if a.delivery and b.delivery:
        return a.delivery != b.delivery
    return b.attempt > a.attempt


def check(history: History, *, grace_s: float = 30.0) -> Verdict:
    """Judge ``history``; ``grace_s`` bounds how long after a fault a redelivery is explained by it
    (at least ack_wait plus the time a fault takes to heal and the backlog to drain)."""
    runs: dict[str, list[Execution]] = defaultdict(list)
    for e in history.executions:
        runs[e.task_id].append(e)
    letters: dict[str, int] = defaultdict(int)
    for task_id in history.dead_letters:
        letters[task_id] += 1
    published = history.acked.keys() | history.unacked
    v = Verdict(
        acked=len(history.acked),
        indeterminate=len(history.unacked),
        completed=len(runs),
        dead_lettered=len(letters),
    )
    v.dead_lettered_not_poison = sum(1 for t in letters if t not in history.expected_dead)
    v.lost = [t for t in history.acked if t not in runs and t not in letters]
    v.dlq_copies = [t for t, n in letters.items() if n > 1]
    v.completed_and_dead = [t for t in runs if t in letters]
    v.poison_completed = [t for t in runs if t in history.expected_dead]
    v.phantoms = [t for t in runs.keys() | letters.keys() if t not in published]
    for task_id, done in runs.items():
        done.sort(key=lambda e: (e.start, e.attempt))
        v.duplicates += len(done) - 1
        known = all(e.delivery for e in done)
        ids = [e.delivery for e in done] if known else [str(e.attempt) for e in done]
        twice_as_one_delivery = len(set(ids)) != len(ids)
        unexplained = any(not _explained(e.start, history.faults, grace_s) for e in done[1:])
        if twice_as_one_delivery or unexplained:
            v.unexpected_duplicates.append(task_id)
        if any(_unexplained_overlap(a, b, history.faults, grace_s) for a, b in combinations(done, 2)):
            v.concurrent.append(task_id)
    return v
