"""``python -m loadtest.bench_state`` keeps working and reports what the docstrings cite."""

from __future__ import annotations

import json

from loadtest.bench_state import bench_state


def test_state_bench_reports_costs_and_the_crdts_counter_bug() -> None:
    out = bench_state(iterations=400, convergence=lambda: {"convergence_rounds": {"3": 2.5}})
    json.dumps(out)  # one JSON line
    assert out["suite"] == "state"
    assert out["convergence_rounds"] == {"3": 2.5}
    assert all(v > 0 for v in out["ours"].values())
    assert out["crdts"]["counter_concurrent_plus1_plus1"] == 1  # crdts.Counter loses an increment
