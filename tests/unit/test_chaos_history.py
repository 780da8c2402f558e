"""The chaos suite's history checker flags what it must: a lost task, an unexpected duplicate,
an unexplained concurrent run, a second DLQ copy, a phantom; and passes a clean history."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loadtest.chaos_history import Execution, Fault, History, check

FAULT = Fault("kill-leader", start=10.0, end=15.0)


def clean() -> History:
    """Three acked tasks: one ran once, one ran again after a fault, one was dead-lettered."""
    return History(
        acked={"a": 1.0, "b": 1.0, "p": 1.0},
        executions=[
            Execution("a", "w1", 1, 2.0, 2.1),
            Execution("b", "w1", 1, 9.0, 9.1),
            Execution("b", "w2", 2, 14.0, 14.1),  # w1's ack was lost in the fault
        ],
        dead_letters=["p"],
        expected_dead={"p"},
        faults=[FAULT],
    )


def test_a_clean_history_passes_and_counts_the_redelivery() -> None:
    v = check(clean())
    assert v.ok, v.violations()
    assert (v.acked, v.completed, v.dead_lettered, v.duplicates) == (3, 2, 1, 1)
    assert v.lost == []


def test_a_dead_letter_of_a_task_that_was_not_poison_is_accounted_for_and_counted() -> None:
    h = clean()
    h.acked["tired"] = 3.0
    h.dead_letters.append("tired")  # delivered max_deliver times across faults, never finished
    v = check(h)
    assert v.ok, v.violations()
    assert (v.dead_lettered, v.dead_lettered_not_poison) == (2, 1)
    assert check(clean()).dead_lettered_not_poison == 0


def test_an_acknowledged_task_that_never_completed_is_lost() -> None:
    h = clean()
    h.acked["gone"] = 3.0
    v = check(h)
    assert not v.ok
    assert v.lost == ["gone"]


def test_an_unacknowledged_task_may_complete_or_not() -> None:
    h = clean()
    h.unacked |= {"maybe-stored", "maybe-not"}
    h.executions.append(Execution("maybe-stored", "w1", 1, 11.0, 11.1))
    v = check(h)
    assert v.ok, v.violations()
    assert v.indeterminate == 2


def test_a_second_first_delivery_is_an_unexpected_duplicate() -> None:
    h = clean()
    h.executions.append(Execution("a", "w2", 1, 12.0, 12.1))  # inside a fault, but attempt 1 again
    v = check(h)
    assert v.unexpected_duplicates == ["a"]
    assert not v.ok


def test_one_delivery_run_twice_is_flagged_and_a_repeated_count_of_another_delivery_is_not() -> None:
    h = clean()
    h.executions = [
        Execution("a", "w1", 1, 2.0, 2.1, "t-chaos-1:7"),
        Execution("b", "w1", 2, 11.0, 11.1, "t-chaos-1:20"),  # a new leader: count 2 again
        Execution("b", "w2", 2, 14.0, 14.1, "t-chaos-1:31"),
    ]
    v = check(h)
    assert v.ok, v.violations()
    assert v.duplicates == 1
    h.executions.append(Execution("b", "w2", 3, 14.5, 14.6, "t-chaos-1:31"))  # delivery 31 again
    v = check(h)
    assert v.unexpected_duplicates == ["b"]
    assert not v.ok


def test_a_redelivery_no_fault_explains_is_an_unexpected_duplicate() -> None:
    h = clean()
    h.executions.append(Execution("a", "w2", 2, 100.0, 100.1))  # long after the fault healed
    v = check(h, grace_s=30.0)
    assert v.unexpected_duplicates == ["a"]
    assert check(h, grace_s=90.0).ok  # the same redelivery inside the grace is explained


def test_two_workers_running_one_task_at_once_without_a_fault_is_flagged() -> None:
    h = clean()
    h.faults = []
    h.executions = [Execution("a", "w1", 1, 2.0, 5.0), Execution("a", "w2", 2, 4.0, 4.5)]
    v = check(h)
    assert v.concurrent == ["a"]
    h.faults = [Fault("pause", 3.0, 4.0)]  # the same overlap, as a redelivery during a fault
    assert check(h).concurrent == []


def test_overlap_is_found_between_runs_that_are_not_neighbours() -> None:
    h = History(
        acked={"a": 0.0},
        executions=[
            Execution("a", "w1", 1, 1.0, 9.0),
            Execution("a", "w1", 2, 2.0, 2.5),  # same worker: not a second worker at once
            Execution("a", "w2", 1, 5.0, 5.5),  # overlaps the first, same attempt
        ],
    )
    v = check(h)
    assert v.concurrent == ["a"]
    assert v.unexpected_duplicates == ["a"]


def test_dlq_copies_must_be_unique_and_exclusive_of_completion() -> None:
    h = clean()
    h.dead_letters.append("p")
    h.dead_letters.append("a")
    v = check(h)
    assert v.dlq_copies == ["p"]
    assert v.completed_and_dead == ["a"]


def test_a_poison_task_that_completed_and_a_phantom_are_flagged() -> None:
    h = clean()
    h.executions.append(Execution("p", "w1", 1, 2.0, 2.1))
    h.executions.append(Execution("never-sent", "w1", 1, 2.0, 2.1))
    v = check(h)
    assert v.poison_completed == ["p"]
    assert v.phantoms == ["never-sent"]
    assert set(v.violations()) == {"poison_completed", "phantoms", "completed_and_dead"}


@given(st.lists(st.sampled_from("abcdef"), max_size=30), st.sets(st.sampled_from("abcdef")))
def test_lost_is_exactly_acked_minus_completed_minus_dead(done: list[str], dead: set[str]) -> None:
    acked = {t: 0.0 for t in "abcdef"}
    runs = [Execution(t, "w", i + 1, float(i), float(i)) for i, t in enumerate(done)]
    v = check(History(acked=acked, executions=runs, dead_letters=sorted(dead)))
    assert set(v.lost) == set(acked) - set(done) - dead
    assert v.duplicates == len(done) - len(set(done))
