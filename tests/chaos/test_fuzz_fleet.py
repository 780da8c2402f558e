"""The fleet fuzz, short: 10 s of hostile frames per fast-path mode on a real 3-worker fleet.

``make fuzz`` runs the same thing for minutes (loadtest/fuzz_fleet.py, docs/fuzzing.md).
Each run draws a new seed unless ``AGENTBUS_FUZZ_SEED`` is set; a failure names its seed,
and ``python -m loadtest.fuzz_fleet --seed <seed> --fast-path <mode> --seconds 10``
sends the same frames again.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from loadtest.fuzz_fleet import fuzz_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SECONDS = 10.0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path-on", "fast-path-off"])
async def test_hostile_frames_break_no_invariant(tmp_path: Path, fast_path: bool) -> None:
    seed = int(os.environ.get("AGENTBUS_FUZZ_SEED") or secrets.randbelow(1 << 32))
    summary = await fuzz_fleet(
        seconds=SECONDS, seed=seed, fast_path=fast_path, workdir=tmp_path, say=lambda _: None
    )
    mode = "on" if fast_path else "off"
    replay = f"python -m loadtest.fuzz_fleet --seed {seed} --fast-path {mode} --seconds {SECONDS:g}"
    assert not summary["violations"], f"seed {seed} ({replay}):\n" + json.dumps(summary, indent=1)
    assert summary["canaries_total"] > 0
    assert summary["canaries_ok"] == summary["canaries_total"]
    assert summary["frames"] > 0
    assert summary["restarts"] == 0
