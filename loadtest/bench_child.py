"""Entry point of one benchmark phase in a fresh interpreter: ``python -m loadtest.bench_child PHASE JSON``.

Runs the phase on uvloop and prints its result as one JSON line on stdout (phases
that need the parent to act first print ``READY`` lines before it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["main"]


def _phases() -> dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]]:
    from loadtest import bench_io, bench_latency, bench_memory, bench_throughput

    return {
        "raw": bench_throughput.raw_child,
        "agentbus": bench_throughput.agentbus_child,
        "raw_io": bench_io.raw_io_child,
        "io": bench_io.io_child,
        "raw_latency": bench_latency.raw_latency_child,
        "latency": bench_latency.latency_child,
        "raw_memory": bench_memory.raw_memory_child,
        "memory": bench_memory.memory_child,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the phase named by ``argv[0]`` with the JSON parameters ``argv[1]``."""
    from loadtest.bench_common import run_on_uvloop

    phase, params = (argv if argv is not None else sys.argv[1:])[:2]
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    result = run_on_uvloop(_orphan_guard(_phases()[phase](json.loads(params))))
    print(json.dumps(result), flush=True)
    return 0


async def _orphan_guard(phase: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``phase``, but exit if the bench that started us is gone (a worker would retry forever)."""
    parent = os.getppid()

    async def watch() -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    watcher = asyncio.create_task(watch())
    try:
        return await phase
    finally:
        watcher.cancel()


if __name__ == "__main__":
    sys.exit(main())
