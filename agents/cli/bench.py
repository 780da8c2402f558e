"""``agentbus bench``: agentbus against the raw nats-py anchor (throughput, I/O, latency, memory).

Prints human-readable lines, then one JSON line with every figure (the last line
of stdout; ``--json-only`` prints just that).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

__all__ = ["register"]

_ALIASES = {"a": "throughput", "b": "throughput", "c": "io", "d": "latency", "e": "memory"}


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="benchmark agentbus against raw nats-py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute (smoke runs)")
    p.add_argument(
        "--suite",
        action="append",
        metavar="SUITE",
        help="throughput (a, b), io (c), latency (d), memory (e); comma-separated or repeated; default all",
    )
    p.add_argument("--nats-url", help="use this nats-server instead of starting an embedded one")
    p.add_argument("--n", type=int, help="tasks per throughput repetition (default 200000, quick 20000)")
    p.add_argument("--reps", type=int, help="throughput repetitions per side (default 3, quick 2)")
    p.add_argument("--max-inflight", type=int, help="agentbus slots in the throughput suite (default 1024)")
    p.add_argument("--raw-batch", type=int, help="fetch batch of the raw nats-py anchor (default 500)")
    p.add_argument("--io-n", type=int, help="tasks per I/O-bound repetition (default 100000, quick 20000)")
    p.add_argument("--rate", type=float, help="tasks/s of the latency suite (default 2000)")
    p.add_argument("--latency-s", type=float, help="seconds per latency repetition (default 10, quick 3)")
    p.add_argument("--memory-n", type=int, help="tasks held in flight (default 100000, quick 20000)")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    p.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (a failed suite always is)"
    )
    p.set_defaults(run=run)


def _suites(values: list[str] | None) -> tuple[str, ...]:
    from agentbus.errors import ConfigError
    from loadtest.bench import SUITES

    if not values:
        return SUITES
    chosen: set[str] = set()
    for value in values:
        for name in filter(None, (v.strip().lower() for v in value.split(","))):
            name = _ALIASES.get(name, name)
            if name not in SUITES:
                raise ConfigError(f"unknown suite {name!r}; choose from {', '.join(SUITES)} or a-e")
            chosen.add(name)
    return tuple(s for s in SUITES if s in chosen)


def options_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~loadtest.bench.BenchOptions` the flags ask for."""
    from loadtest.bench import BenchOptions

    base = BenchOptions.quick_preset() if args.quick else BenchOptions()

    def given(**changes: Any) -> dict[str, Any]:
        return {k: v for k, v in changes.items() if v is not None}

    return replace(
        base,
        suites=_suites(args.suite),
        nats_url=args.nats_url,
        throughput=replace(
            base.throughput,
            **given(n=args.n, reps=args.reps, max_inflight=args.max_inflight, raw_batch=args.raw_batch),
        ),
        io=replace(base.io, **given(n=args.io_n)),
        latency=replace(base.latency, **given(rate=args.rate, duration_s=args.latency_s)),
        memory=replace(base.memory, **given(n=args.memory_n)),
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; the last line of stdout is the JSON result."""
    from loadtest.bench import run_bench

    options = options_from_args(args)

    def say(line: str) -> None:
        if not args.json_only:
            print(line, flush=True)

    result = run_bench(options, say=say)
    print(json.dumps(result, sort_keys=True), flush=True)
    missed = [k for k, ok in result["targets_met"].items() if not ok]
    if missed and not args.json_only:
        print(f"agentbus bench: targets missed: {', '.join(missed)}", file=sys.stderr)
    if result.get("errors"):  # a suite could not run: its figures are missing
        return 1
    return 1 if (args.check and missed) else 0
