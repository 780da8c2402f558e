"""Fleet fuzz (issue 16): hostile frames against a real ``agentbus up --workers 3``, with canaries.

A seeded stream of hostile frames (:mod:`loadtest.fuzz_frames`) goes to the fleet over
the raw NATS protocol (:mod:`loadtest.rawnats`), interleaved with ordinary tasks of a
separate tenant, the canaries. The invariants, checked to the end of the run:

* every canary completes (an ok result with its own text) within a generous bound;
* every hostile task JetStream stored on ``tasks.>`` ends as a result or a dead letter
  with a reason, and the TASKS stream drains to zero;
* every message in the DLQ is a dead letter with a reason; none is a canary's;
* no worker restarts (pids unchanged) and /healthz answers 200 throughout; each
  worker's /metrics carries ``agentbus_nats_bad_frames_total``.

``python -m loadtest.fuzz_fleet --seconds 180`` (``make fuzz``) runs the fast path on and
then off; the last line printed is one JSON summary, and the exit code is 1 on any
violation. docs/fuzzing.md says how to reproduce a failure from the printed seed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from bus.connection import connect
from bus.publisher import Publisher, TaskRef
from bus.topology import DLQ_STREAM, TASKS_STREAM
from loadtest.fuzz_frames import CANARY_TENANT, HOSTILE_TENANTS, Frame, FrameGen
from loadtest.rawnats import RawNats, hpub_frame, pub_frame

__all__ = ["FUZZ_WORKER_ARGS", "UpFleet", "fuzz_fleet", "main", "metric_sum"]

FUZZ_WORKER_ARGS = (
    # short timers so every hostile task reaches its fate inside the run's drain bound
    *("--ack-wait-s", "5", "--max-deliver", "3", "--retry-base-s", "0.05"),
    *("--unrouted-grace-s", "1", "--sweep-interval-s", "1"),
)
BAD_FRAMES = "agentbus_nats_bad_frames_total"
_MAX_LISTED = 20  # violations of one kind listed by name; the rest are counted


def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """``GET http://127.0.0.1:<port><path>`` (blocking): ``(status, body)``, ``(0, "")`` if down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return 0, ""


def metric_sum(text: str, name: str) -> float | None:
    """Sum of every sample of ``name`` in a Prometheus exposition (any labels); None if absent."""
    total: float | None = None
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name:
            with contextlib.suppress(ValueError):
                total = (total or 0.0) + float(value)
    return total


class UpFleet:
    """``agentbus up --workers N`` in a subprocess, found through its ``.agentbus/up.json``.

    Worker pids come from the process tree (``--worker-id`` on each worker's command
    line), so a restart by ``up``'s supervisor shows as a new pid.
    """

    def __init__(
        self, workdir: Path, env: dict[str, str], args: Sequence[str] = (), *, workers: int = 3
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.args = tuple(args)
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.ports: dict[str, int] = {}
        self.starts = 0

    @property
    def log_path(self) -> Path:
        """Where this start's ``up`` (and its workers) write."""
        return self.workdir / f"up-{self.starts}.log"

    def start(self, timeout_s: float = 60.0) -> UpFleet:
        """Start the command and wait until every worker's ``/readyz`` answers 200."""
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = self.workdir / ".agentbus" / "up.json"
        state.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "agentbus", "up", "--workers", str(self.workers), *self.args]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agentbus up exited {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(state.read_text())
                self.url, self.ports = data["nats_url"], dict(data["metrics_ports"])
                if len(self.ports) == self.workers and len(self.pids()) == self.workers and self._ready():
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"agentbus up not ready after {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        return all(http_get(port, "/readyz")[0] == 200 for port in self.ports.values())

    def pids(self) -> dict[str, int]:
        """Worker name -> pid of every live worker process of this ``up``."""
        out: dict[str, int] = {}
        if self.proc is None:
            return out
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return out
        for child in children:
            with contextlib.suppress(psutil.Error):
                argv = child.cmdline()
                if "worker" in argv and "--worker-id" in argv and child.status() != psutil.STATUS_ZOMBIE:
                    out[argv[argv.index("--worker-id") + 1]] = child.pid
        return out

    def log_tail(self, chars: int = 4000) -> str:
        """The end of this start's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """Ctrl-C (drain), bounded; past the bound kill ``up`` and the workers it leaves."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = list(self.pids().values())
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in workers:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


class _Result(msgspec.Struct):
    task_id: str
    tenant: str
    ok: bool
    output: Any = None


class _Letter(msgspec.Struct):
    reason: str
    tenant: str = ""
    task_id: str = ""
    stream_seq: int = 0


_result = msgspec.json.Decoder(_Result)
_letter = msgspec.json.Decoder(_Letter)


@dataclass
class _Run:
    """What one run sent, saw and found wrong."""

    violations: list[str] = field(default_factory=list)
    families: Counter[str] = field(default_factory=Counter)
    hostile: dict[int, Frame] = field(default_factory=dict)
    """Stored hostile tasks by TASKS stream sequence."""
    canaries: dict[str, float] = field(default_factory=dict)
    """Canary id -> when it was stored."""
    canary_seqs: list[int] = field(default_factory=list)
    canaries_ok: set[str] = field(default_factory=set)
    results: set[tuple[str, str]] = field(default_factory=set)
    pids: dict[str, set[int]] = field(default_factory=dict)
    reconnects: int = 0
    _seen: Counter[str] = field(default_factory=Counter)

    def violate(self, kind: str, text: str) -> None:
        """Record a violation; past ``_MAX_LISTED`` of one kind only count it."""
        self._seen[kind] += 1
        if self._seen[kind] <= _MAX_LISTED:
            self.violations.append(f"{kind}: {text}")

    def on_result(self, msg: Msg) -> None:
        try:
            result = _result.decode(msg.data)
        except msgspec.DecodeError:
            return
        self.results.add((result.tenant, result.task_id))
        output = result.output if isinstance(result.output, dict) else {}
        if result.ok and result.tenant == CANARY_TENANT and output.get("text") == result.task_id:
            self.canaries_ok.add(result.task_id)


async def fuzz_fleet(
    *,
    seconds: float,
    seed: int,
    fast_path: bool,
    workdir: Path,
    max_frames: int | None = None,
    rate_hz: float = 40.0,
    canary_bound_s: float = 60.0,
    drain_bound_s: float = 90.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One run on a fresh fleet; returns its summary (``violations`` empty when every invariant held)."""
    fleet = UpFleet(workdir, {"AGENTBUS_NATS_FAST_PATH": "1" if fast_path else "0"}, FUZZ_WORKER_ARGS)
    await asyncio.to_thread(fleet.start)
    run = _Run(pids={name: {pid} for name, pid in fleet.pids().items()})
    mode = "on" if fast_path else "off"
    say(f"fuzz_fleet: seed {seed}, fast path {mode}, NATS {fleet.url}, log {fleet.log_path}")
    nc = await connect(fleet.url, name="fuzz-observer")
    watchers: list[asyncio.Task[None]] = []
    try:
        for tenant in (CANARY_TENANT, *HOSTILE_TENANTS):
            await nc.subscribe(f"results.{tenant}.>", cb=_async(run.on_result), pending_msgs_limit=-1)
        await nc.flush()
        watchers.append(asyncio.create_task(_watch_health(fleet, run)))
        watchers.append(asyncio.create_task(_canaries(nc, run, every_s=0.5)))
        frames = await _send_frames(
            fleet.url, seed, run, seconds=seconds, max_frames=max_frames, rate_hz=rate_hz
        )
        watchers.pop().cancel()  # no more canaries
        say(f"fuzz_fleet: {frames} frames sent; waiting for canaries and the drain")
        await _await_canaries(run, canary_bound_s)
        dead = await _await_drain_and_read_dlq(nc, run, drain_bound_s)
        bad_frames = await asyncio.to_thread(_read_metrics, fleet, run)
        await asyncio.sleep(1.5)  # one more health round after the drain
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()
        await asyncio.to_thread(fleet.stop)
    restarts = sum(len(pids) - 1 for pids in run.pids.values())
    if restarts:
        run.violate("restart", f"worker pids changed: { {n: sorted(p) for n, p in run.pids.items()} }")
    return {
        "seed": seed,
        "fast_path": fast_path,
        "frames": frames,
        "frames_by_family": dict(sorted(run.families.items())),
        "hostile_stored": len(run.hostile),
        "canaries_ok": len(run.canaries_ok & run.canaries.keys()),
        "canaries_total": len(run.canaries),
        "dead_letters": dict(sorted(dead.items())),
        "bad_frames_counted": bad_frames,
        "restarts": restarts,
        "raw_reconnects": run.reconnects,
        "violations": run.violations,
    }


def _async(cb: Callable[[Msg], None]) -> Callable[[Msg], Any]:
    async def call(msg: Msg) -> None:
        cb(msg)

    return call


async def _send_frames(
    url: str, seed: int, run: _Run, *, seconds: float, max_frames: int | None, rate_hz: float
) -> int:
    """Send the seed's frames for ``seconds`` (or ``max_frames``); record what JetStream stored."""
    raw = await RawNats.for_url(url).open()
    gen = FrameGen(seed, max_payload=raw.max_payload, canary_seqs=lambda: run.canary_seqs[-100:])
    acks: list[tuple[Frame, asyncio.Future[bytes]]] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    sent = 0
    try:
        while loop.time() < end and (max_frames is None or sent < max_frames):
            frame = gen.next()
            sent += 1
            run.families[frame.family] += 1
            reply = b""
            if frame.stored:
                reply, fut = raw.new_reply()
                acks.append((frame, fut))
            if frame.header_block is None:
                data = pub_frame(frame.subject, frame.payload, reply)
            else:
                data = hpub_frame(frame.subject, frame.header_block, frame.payload, reply)
            try:
                await raw.send(data)
                if sent % 25 == 0:
                    await raw.ping()  # bounded: never more than 25 frames ahead of the server
            except (ConnectionError, TimeoutError):
                # the server may drop a client over a frame it refuses; that is our client, not a worker
                run.reconnects += 1
                await raw.close()
                raw = await RawNats.for_url(url).open()
            await asyncio.sleep(1 / rate_hz)
        await raw.ping()
        if acks:  # one bound for all: an ack that never comes (no stream, refused) costs nothing more
            await asyncio.wait([fut for _, fut in acks], timeout=10)
        for frame, fut in acks:
            if not fut.done() or fut.cancelled():
                continue
            with contextlib.suppress(ValueError, TypeError, KeyError):
                ack = json.loads(fut.result())
                if "seq" in ack and not ack.get("duplicate"):
                    run.hostile[int(ack["seq"])] = frame
    finally:
        await raw.close()
    return sent


async def _canaries(nc: Client, run: _Run, *, every_s: float) -> None:
    """Five ordinary tasks of the canary tenant every ``every_s``, until cancelled."""
    pub = Publisher(nc)
    n = 0
    while True:
        for _ in range(5):
            n += 1
            task_id = f"canary-{n}"
            try:
                ref = await pub.submit(CANARY_TENANT, "echo", {"text": task_id}, task_id=task_id)
            except Exception as exc:  # a canary that cannot even be stored is a violation too
                run.violate("canary", f"{task_id} not stored: {exc}")
                continue
            if isinstance(ref, TaskRef):
                run.canaries[task_id] = time.monotonic()
                run.canary_seqs.append(ref.seq)
        await asyncio.sleep(every_s)


async def _watch_health(fleet: UpFleet, run: _Run) -> None:
    """Every second: each worker's /healthz, and its pid (a new one is a restart)."""
    while True:
        for name, port in fleet.ports.items():
            status, body = await asyncio.to_thread(http_get, port, "/healthz")
            if status != 200:
                run.violate("healthz", f"{name} answered {status}: {body[:200]}")
        pids = await asyncio.to_thread(fleet.pids)
        for name, pid in pids.items():
            run.pids.setdefault(name, set()).add(pid)
        for name in fleet.ports.keys() - pids.keys():
            run.violate("worker", f"{name} is not running")
        await asyncio.sleep(1.0)


async def _await_canaries(run: _Run, bound_s: float) -> None:
    while True:
        late = [c for c, t in run.canaries.items() if c not in run.canaries_ok]
        if not late:
            return
        oldest = min(run.canaries[c] for c in late)
        if time.monotonic() - oldest > bound_s:
            for task_id in late:
                run.violate("canary", f"{task_id} did not complete within {bound_s:g}s")
            return
        await asyncio.sleep(0.2)


async def _await_drain_and_read_dlq(nc: Client, run: _Run, bound_s: float) -> Counter[str]:
    """TASKS must drain to zero; then every stored hostile task must have its fate."""
    js = nc.jetstream()
    deadline = time.monotonic() + bound_s
    while (left := (await js.stream_info(TASKS_STREAM)).state.messages) != 0:
        if time.monotonic() > deadline:
            info = await js.stream_info(TASKS_STREAM, subjects_filter=">")
            stuck = dict(list((info.state.subjects or {}).items())[:10])
            run.violate("drain", f"TASKS still holds {left} messages after {bound_s:g}s: {stuck}")
            break
        await asyncio.sleep(0.2)
    reasons: Counter[str] = Counter()
    letter_seqs: set[int] = set()
    state = (await js.stream_info(DLQ_STREAM)).state
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        try:
            raw = await js.get_msg(DLQ_STREAM, seq)
        except NotFoundError:
            continue
        try:
            letter = _letter.decode(raw.data or b"")
        except msgspec.DecodeError:
            run.violate(
                "dlq", f"DLQ seq {seq} on {raw.subject} is not a dead letter: {(raw.data or b'')[:120]!r}"
            )
            continue
        if not letter.reason:
            run.violate("dlq", f"DLQ seq {seq} has no reason")
        if letter.tenant == CANARY_TENANT or (raw.subject or "").startswith(f"dlq.{CANARY_TENANT}."):
            run.violate("canary", f"canary dead-lettered: {raw.subject} {letter.reason} {letter.task_id}")
        reasons[letter.reason] += 1
        letter_seqs.add(letter.stream_seq)
    for seq, frame in sorted(run.hostile.items()):
        if seq not in letter_seqs and (frame.tenant, frame.task_id) not in run.results:
            what = f"{frame.family} frame on {frame.subject[:60]!r} ({frame.payload[:60]!r})"
            run.violate(
                "fate", f"hostile task seq {seq} ended with neither a result nor a dead letter: {what}"
            )
    return reasons


def _read_metrics(fleet: UpFleet, run: _Run) -> float:
    total = 0.0
    for name, port in fleet.ports.items():
        status, body = http_get(port, "/metrics")
        count = metric_sum(body, BAD_FRAMES) if status == 200 else None
        if count is None:
            run.violate("metrics", f"{name}: /metrics answered {status} without {BAD_FRAMES}")
        total += count or 0.0
    return total


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several runs (the JSON line ``make fuzz`` ends with)."""
    dead: Counter[str] = Counter()
    for r in runs:
        dead.update(r["dead_letters"])
    mode = {True: "on", False: "off"}
    return {
        "seed": runs[0]["seed"] if runs else None,
        "frames": sum(r["frames"] for r in runs),
        "canaries_ok": sum(r["canaries_ok"] for r in runs),
        "canaries_total": sum(r["canaries_total"] for r in runs),
        "hostile_stored": sum(r["hostile_stored"] for r in runs),
        "dead_letters": dict(sorted(dead.items())),
        "bad_frames_counted": sum(r["bad_frames_counted"] for r in runs),
        "restarts": sum(r["restarts"] for r in runs),
        "violations": [f"fast path {mode[r['fast_path']]}: {v}" for r in runs for v in r["violations"]],
        "runs": [{k: v for k, v in r.items() if k != "violations"} for r in runs],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m loadtest.fuzz_fleet``: exit 0 only when every invariant held."""
    p = argparse.ArgumentParser(prog="python -m loadtest.fuzz_fleet", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=180.0, help="frames are sent this long, over all runs")
    p.add_argument("--seed", type=int, help="of the frame stream (default: random, printed)")
    p.add_argument("--fast-path", choices=("on", "off", "both"), default="both", help="(default both)")
    p.add_argument("--frames", type=int, help="stop each run after this many frames (reproducing a seed)")
    p.add_argument("--rate", type=float, default=40.0, help="frames per second (default 40)")
    p.add_argument("--workdir", help="where up.json and the logs go (default: a temp dir, kept)")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 32)
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.fast_path]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="agentbus-fuzz-"))
    print(f"fuzz_fleet: seed {seed}; reproduce with --seed {seed}; logs in {root}", flush=True)

    async def all_runs() -> list[dict[str, Any]]:
        out = []
        for fast in modes:
            summary = await fuzz_fleet(
                seconds=args.seconds / len(modes),
                seed=seed,
                fast_path=fast,
                workdir=root / f"fast-path-{'on' if fast else 'off'}",
                max_frames=args.frames,
                rate_hz=args.rate,
                say=lambda s: print(s, flush=True),
            )
            for v in summary["violations"]:
                print(f"VIOLATION (fast path {'on' if fast else 'off'}): {v}", flush=True)
            out.append(summary)
        return out

    summary = combine(asyncio.run(all_runs()))
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
