"""The gossip benchmark runs and reports convergence rounds keyed by N."""

from __future__ import annotations

from loadtest.bench_gossip import run


def test_bench_reports_convergence_rounds_by_n() -> None:
    result = run(seeds=2, sizes=(3, 5))
    assert set(result["convergence_rounds"]) == {"3", "5"}
    # epidemic spread with fan-out 3: a handful of rounds, far below one push-pull interval (25)
    assert all(0 < r < 10 for r in result["convergence_rounds"].values())
