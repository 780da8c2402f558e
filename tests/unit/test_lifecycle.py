"""Worker lifecycle: Pending -> Running -> Stopping -> Stopped, forward only."""

from __future__ import annotations

import pytest

from agents.lifecycle import Lifecycle, State


def test_starts_pending() -> None:
    assert Lifecycle().state is State.PENDING


def test_the_normal_path() -> None:
    life = Lifecycle()
    for state in (State.RUNNING, State.STOPPING, State.STOPPED):
        assert life.move(state) is True
        assert life.state is state


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ([State.RUNNING], State.PENDING),
        ([State.RUNNING], State.STOPPED),  # must drain first
        ([State.RUNNING], State.RUNNING),
        ([State.RUNNING, State.STOPPING], State.RUNNING),
        ([State.RUNNING, State.STOPPING, State.STOPPED], State.RUNNING),
        ([State.RUNNING, State.STOPPING, State.STOPPED], State.STOPPING),
        ([State.STOPPED], State.PENDING),
    ],
)
def test_backward_or_skipping_moves_are_refused(path: list[State], refused: State) -> None:
    life = Lifecycle()
    for state in path:
        assert life.move(state)
    before = life.state
    assert life.move(refused) is False
    assert life.state is before


@pytest.mark.parametrize("to", [State.STOPPING, State.STOPPED])
def test_a_pending_worker_may_stop_without_running(to: State) -> None:
    life = Lifecycle()
    assert life.move(to) is True
    assert life.state is to


def test_states_are_the_strings_probes_and_metrics_show() -> None:
    assert [str(s) for s in State] == ["pending", "running", "stopping", "stopped"]
