"""The noisy scenario's gate: quiet tenants' call p99 over the calm tenants', warm-ups excluded."""

from __future__ import annotations

from collections import Counter

from loadtest.cluster_counts import ClusterDelta
from loadtest.locust_report import CALL, WARM, LocustReport, Tally
from loadtest.slo import judge, load_scenarios


def _tally(*times_ms: int) -> Tally:
    return Tally(requests=len(times_ms), published=len(times_ms), times_ms=Counter(times_ms))


def _ratio_check(quiet_ms: tuple[int, ...], calm_ms: tuple[int, ...], warm_ms: int = 900) -> tuple[bool, str]:
    groups: dict[tuple[str, str], Tally] = {}
    for tenant in ("acme", "globex", "initech"):
        groups[(CALL, tenant)] = _tally(*quiet_ms)
        groups[(WARM, tenant)] = _tally(warm_ms)  # its first task, behind discovery
        groups[(CALL, f"calm-{tenant}")] = _tally(*calm_ms)
        groups[(WARM, f"calm-{tenant}")] = _tally(warm_ms)
    report = LocustReport(groups=groups, errors={})
    n = report.total().requests
    cluster = ClusterDelta(
        stored=n,
        queued=0,
        dlq_stored=0,
        completed=Counter({t: r.requests for (_, t), r in groups.items()}),
        dead_lettered=Counter(),
        lost_endpoints=(),
        workers=1,
    )
    verdict = judge("noisy", load_scenarios()["noisy"], report, cluster)
    (check,) = [c for c in verdict.checks if c.name.startswith("quiet p99 / calm p99")]
    return check.ok, check.measured


def test_warm_up_calls_are_in_no_percentile() -> None:
    ok, measured = _ratio_check(quiet_ms=(4, 5, 6), calm_ms=(3, 4, 5), warm_ms=900)
    assert ok, measured
    assert measured.startswith("6 / 5 ms")


def test_a_few_ms_of_jitter_is_not_a_wait_behind_the_backlog() -> None:
    ok, measured = _ratio_check(quiet_ms=(4, 5, 40), calm_ms=(3, 4, 5))  # 8x raw, under the 50 ms floor
    assert ok, measured


def test_a_wait_behind_a_noisy_task_fails_the_gate() -> None:
    ok, measured = _ratio_check(quiet_ms=(4, 5, 400), calm_ms=(3, 4, 5))  # 400 ms: 8x the floor
    assert not ok, measured
    ok, measured = _ratio_check(quiet_ms=(4, 5, 160), calm_ms=(3, 4, 5))  # just above 3x the floor
    assert not ok, measured
