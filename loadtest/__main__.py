"""``python -m loadtest``: the one entry of every benchmark suite.

By default agentbus against the raw nats-py anchor (throughput, I/O, latency, memory).
Prints human-readable lines, then one JSON line with every figure (the last line
of stdout; ``--json-only`` prints just that). Suites run only when named:

* ``state``: our CRDTs' cost per operation against the ``crdts`` package, and gossip
  convergence rounds by cluster size, clean and under 10 % loss + 5 % duplication;
* ``llm``: LLM agents against a 200 ms model and a hand-written anchor
  (``loadtest.bench_llm``, in a child process);
* ``scaler``: the autoscaler's reaction to a backlog (``loadtest.bench_scaler``, in a
  child process);
* ``mcp``: retrieval latency and recall on the shipped corpus, and an MCP tool call (stdio,
  HTTP) against the same tool in-process (``loadtest.bench_mcp``, in a child process).
* ``fairness``: quiet tenants behind a noisy backlog, weighted shares, 1,000 tenants and a
  single tenant's cost of fair scheduling (``loadtest.bench_fairness``, in a child process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from typing import Any

__all__ = ["build_parser", "main"]

_ALIASES = {"a": "throughput", "b": "throughput", "c": "io", "d": "latency", "e": "memory"}
STATE_SUITE = "state"
"""Shared-state CRDT costs and gossip convergence (no NATS needed); run only when named."""
CHILD_SUITES = {
    "llm": "loadtest.bench_llm",
    "scaler": "loadtest.bench_scaler",
    "mcp": "loadtest.bench_mcp",
    "fairness": "loadtest.bench_fairness",
}
"""Suites with a command of their own, run as ``python -m <module>`` only when named."""


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line (the product's ``agentbus`` command does not import the harness)."""
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute (smoke runs)")
    p.add_argument(
        "--suite",
        action="append",
        metavar="SUITE",
        help="throughput (a, b), io (c), latency (d), memory (e), state, llm, scaler, mcp, fairness;"
        " comma-separated"
        " or repeated; default the first four",
    )
    p.add_argument("--nats-url", help="use this nats-server instead of starting an embedded one")
    p.add_argument("--n", type=int, help="tasks per throughput repetition (default 200000, quick 20000)")
    p.add_argument("--reps", type=int, help="throughput repetitions per side (default 3, quick 2)")
    p.add_argument("--max-inflight", type=int, help="agentbus slots in the throughput suite (default 1024)")
    p.add_argument(
        "--audit-tasks",
        action="store_true",
        default=None,
        help="throughput suite: agentbus writes a minimal audit record per task (its cost)",
    )
    p.add_argument("--raw-batch", type=int, help="fetch batch of the raw nats-py anchor (default 500)")
    p.add_argument("--io-n", type=int, help="tasks per I/O-bound repetition (default 100000, quick 20000)")
    p.add_argument("--rate", type=float, help="tasks/s of the latency suite (default 2000)")
    p.add_argument("--latency-s", type=float, help="seconds per latency repetition (default 10, quick 3)")
    p.add_argument("--memory-n", type=int, help="tasks held in flight (default 100000, quick 20000)")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    p.add_argument(
        "--check", action="store_true", help="exit 1 when a target is missed (a failed suite always is)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run; an unknown suite is a usage error (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _suites(args.suite)
    except ValueError as exc:
        parser.error(str(exc))
    return run(args)


def _named(values: list[str] | None) -> set[str]:
    return {
        _ALIASES.get(name, name)
        for value in values or ()
        for name in filter(None, (v.strip().lower() for v in value.split(",")))
    }


def _suites(values: list[str] | None) -> tuple[str, ...]:
    """The suites of ``loadtest.bench`` the flags name (all when none is named; ``state`` aside)."""
    from loadtest.bench import SUITES

    if not values:
        return SUITES
    chosen = _named(values)
    for name in sorted(chosen - {STATE_SUITE, *CHILD_SUITES}):
        if name not in SUITES:
            known = ", ".join((*SUITES, STATE_SUITE, *CHILD_SUITES))
            raise ValueError(f"unknown suite {name!r}; choose from {known} or a-e")
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
            **given(
                n=args.n,
                reps=args.reps,
                max_inflight=args.max_inflight,
                raw_batch=args.raw_batch,
                audit_tasks=args.audit_tasks,
            ),
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

    result: dict[str, Any] = {"suites": [], "targets_met": {}}
    if options.suites:
        result = run_bench(options, say=say)
    named = _named(args.suite)
    if STATE_SUITE in named:
        _state_suite(result, quick=args.quick, say=say)
    for name in sorted(named & set(CHILD_SUITES)):
        _child_suite(result, name, quick=args.quick, say=say)
    print(json.dumps(result, sort_keys=True), flush=True)
    missed = [k for k, ok in result["targets_met"].items() if not ok]
    if missed and not args.json_only:
        print(f"loadtest: targets missed: {', '.join(missed)}", file=sys.stderr)
    if result.get("errors"):  # a suite could not run: its figures are missing
        return 1
    return 1 if (args.check and missed) else 0


def child_command(name: str, *, quick: bool) -> list[str]:
    """The command of a suite that runs as its own process (``--quick``: its smallest run)."""
    command = [sys.executable, "-m", CHILD_SUITES[name]]
    if quick:
        quick_args = {"llm": ["--reps", "1", "--tasks", "2000"], "mcp": ["--quick"], "fairness": ["--quick"]}
        command += quick_args.get(name, ["--trials", "1"])
    return command


def _child_suite(result: dict[str, Any], name: str, *, quick: bool, say: Any) -> None:
    """Run ``name`` in a child process; its last stdout line (JSON) goes under ``result[name]``."""
    say(f"{name}: {' '.join(child_command(name, quick=quick)[1:])}")
    result["suites"] = [*result.get("suites", []), name]
    done = subprocess.run(child_command(name, quick=quick), capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    try:
        result[name] = json.loads(lines[-1])
    except (IndexError, ValueError):
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        result.setdefault("errors", {})[name] = detail[0]


def _state_suite(result: dict[str, Any], *, quick: bool, say: Any) -> None:
    """Add ``loadtest.bench_state``'s figures to ``result`` under ``"state"`` (errors like the others)."""
    from loadtest.bench_state import bench_state

    say("state: CRDT cost per operation against the crdts package, then gossip convergence rounds")
    result["suites"] = [*result.get("suites", []), STATE_SUITE]
    try:
        state = bench_state(quick=quick)
    except Exception as exc:  # reported like a failed suite: the figures are missing
        result.setdefault("errors", {})[STATE_SUITE] = repr(exc)
        return
    result[STATE_SUITE] = state
    ours = state["ours"]
    say(f"  counter increment {ours['counter_increment_us']} us, OR-set add {ours['orset_add_us']} us")
    if state.get("crdts"):
        say(f"  crdts.CounterSet increase {state['crdts']['counterset_increase_us']} us")
    rounds = state.get("convergence_rounds", {})
    lossy = state.get("convergence_rounds_loss10_dup5", {})
    for n in sorted(rounds, key=int):
        say(f"  {n} replicas converge in {rounds[n]} rounds ({lossy.get(n, '?')} with 10% loss, 5% dup)")


if __name__ == "__main__":
    raise SystemExit(main())
