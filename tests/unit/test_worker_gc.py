"""tune_gc: collect, freeze what start-up built, raise the gen-0 threshold; and its config knob.

tune_gc changes process-wide state, so every test restores the thresholds it found and
unfreezes what it froze (the ``gc_state`` fixture), whatever the outcome.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agentbus.errors import ConfigError
from agents.config import WorkerConfig
from agents.worker import tune_gc


@pytest.fixture
def gc_state() -> Iterator[tuple[int, int, int]]:
    """Distinctive thresholds to start from (so "kept" is not "happens to be the default")."""
    saved = gc.get_threshold()
    assert gc.get_freeze_count() == 0  # nothing else froze: unfreezing below restores the state
    gc.set_threshold(701, 13, 17)
    try:
        yield gc.get_threshold()
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)


def _tracked(obj: object) -> bool:
    """Whether ``obj`` is in one of the collector's generations (frozen objects are in none)."""
    return any(o is obj for o in gc.get_objects())


def test_tune_gc_sets_gen0_and_keeps_gen1_and_gen2(gc_state: tuple[int, int, int]) -> None:
    tune_gc(12_345)
    assert gc.get_threshold() == (12_345, 13, 17)


def test_tune_gc_freezes_what_is_alive_and_not_what_comes_after(gc_state: tuple[int, int, int]) -> None:
    built_at_start_up = {"registry": [1, 2, 3]}
    assert _tracked(built_at_start_up)

    tune_gc(50_000)

    assert gc.get_freeze_count() > 0
    assert not _tracked(built_at_start_up)  # frozen: never traversed again
    built_by_a_task = {"task": [4, 5, 6]}
    assert _tracked(built_by_a_task)


def test_tune_gc_zero_keeps_the_thresholds_but_still_freezes(gc_state: tuple[int, int, int]) -> None:
    tune_gc(0)
    assert gc.get_threshold() == gc_state == (701, 13, 17)
    assert gc.get_freeze_count() > 0


def test_tune_gc_collects_garbage_before_freezing(gc_state: tuple[int, int, int]) -> None:
    class Node:
        other: object = None

    enabled = gc.isenabled()
    gc.disable()  # only tune_gc may collect the cycle below
    try:
        node = Node()
        node.other = node
        ref = weakref.ref(node)
        del node
        assert ref() is not None  # unreachable, not collected yet
        tune_gc(50_000)
        assert ref() is None  # collected, not frozen for ever with what is alive
    finally:
        if enabled:
            gc.enable()


# -- WorkerConfig.gc_gen0_threshold ------------------------------------------------------------


def test_the_default_gen0_threshold_is_50k() -> None:
    assert WorkerConfig().gc_gen0_threshold == 50_000
    assert WorkerConfig.from_env({}).gc_gen0_threshold == 50_000


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("700", 700), ("120000", 120_000)])
def test_the_gen0_threshold_is_read_from_the_environment(text: str, value: int) -> None:
    assert WorkerConfig.from_env({"AGENTBUS_GC_GEN0_THRESHOLD": text}).gc_gen0_threshold == value


@pytest.mark.parametrize("text", ["lots", "1.5", ""])
def test_a_gen0_threshold_that_is_no_integer_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="AGENTBUS_GC_GEN0_THRESHOLD"):
        WorkerConfig.from_env({"AGENTBUS_GC_GEN0_THRESHOLD": text})


def test_a_negative_gen0_threshold_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gc_gen0_threshold"):
        WorkerConfig.from_env({"AGENTBUS_GC_GEN0_THRESHOLD": "-1"})
    with pytest.raises(ConfigError, match="gc_gen0_threshold"):
        WorkerConfig(gc_gen0_threshold=-1)
