"""The hostile frames of the fleet fuzz: a seeded, deterministic stream (:mod:`loadtest.fuzz_fleet`).

Frame ``n`` of seed ``s`` is always the same frame (given the same inputs: the stream
sequences of canaries a forged advisory may name), so a failure is reproduced with
``--seed s --frames n``. Families, and what each one is after:

* ``task``: envelopes on ``tasks.<tenant>.<kind>`` that break every rule of the wire:
  64 KiB ids, ids with spaces, dots or non-ASCII, deep JSON, NaN and infinite
  deadlines (``1e999``), wrong types, bodies that claim another tenant, payloads up
  to the server's max_payload, garbage bytes; with hostile ``Agentbus-Reply`` and
  ``Nats-Msg-Id`` headers.
* ``subject``: tasks on subjects with invalid UTF-8, reserved or over-long tokens,
  too few or too many tokens.
* ``headers``: ``HPUB`` with short, empty, truncated or binary header blocks (and blocks
  that start with digits and CRLF, which nats-py's control-line regex read as sizes) on
  ``tasks.>``, ``agentbus.>``, ``$JS.EVENT.>`` and ``results.>``.
* ``advisory``: forged ``MAX_DELIVERIES`` advisories naming canaries' stream sequences,
  and garbage under ``$JS.EVENT.>``.
* ``internal``: garbage on gossip subjects and the state query.

Never sent: frames on the canary tenant's subjects (NATS permissions stop a tenant
from publishing there in a real deployment), ``$JS.API.>`` (operator-only), and
``Nats-Msg-Id`` values in the canary tenant's dedupe scope.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["CANARY_TENANT", "HOSTILE_TENANTS", "Frame", "FrameGen"]

CANARY_TENANT = "canary"
HOSTILE_TENANTS = ("h1", "h-2", "H_3")
"""Valid tenant tokens whose results the fuzz follows (a task of theirs may succeed)."""
_BAD_TENANTS = (b"_x", b"-x", b"a" * 65, b"\xc3\xa9", b"\xff\xfe", b"x\xc3(", b"")
_KINDS = ("echo", "echo", "echo", "summarize", "nosuchkind")
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class Frame:
    """One message to send with the raw protocol."""

    family: str
    subject: bytes
    payload: bytes
    header_block: bytes | None = None
    stored: bool = False
    """Published with a reply subject: JetStream's ack says whether ``tasks.>`` stored it."""
    tenant: str = ""
    task_id: str = ""
    """The envelope's id when it is a string (a result of a task that ran carries it)."""


def _headers(pairs: Sequence[tuple[str, str]]) -> bytes:
    return b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in pairs) + b"\r\n"


class FrameGen:
    """Hostile frames from ``seed``; ``canary_seqs`` names stream sequences worth forging advisories for."""

    def __init__(self, seed: int, *, max_payload: int, canary_seqs: Callable[[], Sequence[int]]) -> None:
        self.rng = random.Random(seed)
        self.max_payload = max_payload
        self._canary_seqs = canary_seqs
        self._n = 0

    def next(self) -> Frame:
        """The next frame of the stream."""
        self._n += 1
        family = self.rng.choices(
            ("task", "subject", "headers", "advisory", "internal"), weights=(50, 10, 20, 10, 10)
        )[0]
        make: Callable[[], Frame] = getattr(self, f"_{family}")
        return make()

    # -- families ---------------------------------------------------------------------------

    def _task(self) -> Frame:
        r = self.rng
        tenant = r.choice(HOSTILE_TENANTS)
        kind = r.choice(_KINDS)
        task_id, body = self._envelope()
        headers: list[tuple[str, str]] = []
        if r.random() < 0.5:
            headers.append(("Nats-Msg-Id", self._msg_id()))
        if r.random() < 0.3:
            headers.append(("Agentbus-Reply", self._reply()))
        if r.random() < 0.05:
            headers.append(("traceparent", self._token(r.randrange(1, 200))))
        block = _headers(headers) if headers else None
        body = body[: max(0, self.max_payload - len(block or b"") - 64)]
        subject = f"tasks.{tenant}.{kind}".encode()
        return Frame("task", subject, body, block, stored=True, tenant=tenant, task_id=task_id)

    def _subject(self) -> Frame:
        r = self.rng
        shape = r.randrange(5)
        kind = r.choice(_KINDS).encode()
        tenant = r.choice(_BAD_TENANTS)
        if shape == 0:
            subject = b"tasks." + tenant + b"." + kind
        elif shape == 1:
            subject = b"tasks." + r.choice(HOSTILE_TENANTS).encode() + b"." + r.choice(_BAD_TENANTS[:6])
        elif shape == 2:
            subject = b"tasks." + r.choice(HOSTILE_TENANTS).encode() + b".x." + kind
        elif shape == 3:
            subject = b"tasks." + r.choice(HOSTILE_TENANTS).encode()
        else:
            subject = b"tasks." + b"t" * r.randrange(65, 1500) + b"." + kind
        task_id, body = self._envelope(small=True)
        return Frame("subject", subject, body, stored=True, task_id=task_id)

    def _headers(self) -> Frame:
        r = self.rng
        block = r.choice(
            (
                b"NATS/1.0\r\n\r\n",
                b"NATS/1.0\r\n",
                b"NATS/1.0",
                b"NATS/1.0 503\r\n\r\n",
                b"NATS/1.0 100 Idle Heartbeat\r\n\r\n",
                b"NATS/1.0 abc\r\n\r\n",
                b"NATS/2.0\r\nA: b\r\n\r\n",
                b"NATS/1.0\r\nNoColon\r\n\r\n",
                b"NATS/1.0\r\n: empty-key\r\n\r\n",
                b"NATS/1.0\r\nK: \xff\xfe\r\n\r\n",
                b"NATS/1.0\r\n\xff: v\r\n\r\n",
                b"NATS/1.0\r\nK: v",
                b"\r\n\r\n",
                b"x",
                bytes(r.randrange(256) for _ in range(r.randrange(1, 64))) + b"\r\n\r\n",
                b"NATS/1.0\r\nK: " + b"v" * r.randrange(1000, 8000) + b"\r\n\r\n",
                b"0\r\n",  # nats-py's control-line regex took its sizes from such a block
                self._smuggling_block(),
            )
        )
        subject = r.choice(
            (
                f"tasks.{r.choice(HOSTILE_TENANTS)}.echo".encode(),
                b"agentbus.gossip.all",
                b"agentbus.gossip.w" + str(r.randrange(1, 4)).encode(),
                b"agentbus.state.query",
                b"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TASKS.agents-echo",
                b"$JS.EVENT.METRIC.CONSUMER.ACK.TASKS.agents-echo",
                b"results.spoof." + self._token(8).encode(),
            )
        )
        task_id, payload = self._envelope(small=True) if r.random() < 0.5 else ("", self._garbage(200))
        if not subject.startswith(b"tasks."):
            return Frame("headers", subject, payload, block)
        tenant = subject.split(b".")[1].decode()
        return Frame("headers", subject, payload, block, stored=True, tenant=tenant, task_id=task_id)

    def _smuggling_block(self) -> bytes:
        """A block nats-py 2.16 read as a 0-byte message followed by a forged task delivery
        on another subscription of the subscriber's connection (tests/unit/test_control_line.py)."""
        r = self.rng
        task = json.dumps({"id": f"smuggled-{r.randrange(1 << 30)}", "payload": {"text": "x"}}).encode()
        sid, tenant = r.randrange(1, 40), r.choice(HOSTILE_TENANTS)
        ack = b"$JS.ACK.TASKS.agents-echo.1.%d.%d.1700000000000000000.0" % (sid, sid)
        forged = b"MSG tasks.%s.echo %d %s %d\r\n%s\r\n" % (tenant.encode(), sid, ack, len(task), task)
        return b"0\r\nxx" + forged + b"+OK"

    def _advisory(self) -> Frame:
        r = self.rng
        seqs = list(self._canary_seqs())
        pick, anywhere, index = r.random(), r.randrange(0, 1 << 20), r.randrange(1 << 30)
        seq: object = seqs[index % len(seqs)] if seqs and pick < 0.7 else anywhere
        seq = r.choice((seq, seq, -1, "7", 1e300, None, 2**70))
        consumer = r.choice(("agents-echo", "agents-summarize", "agents-nosuchkind", "x"))
        body: dict[str, object] = {"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": "TASKS"}
        body["consumer"] = consumer
        body |= {"stream_seq": seq, "deliveries": r.choice((5, 0, -1, 10**20))}
        payload = json.dumps(body).encode() if r.random() < 0.8 else self._garbage(300)
        subject = (
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TASKS.{consumer}".encode()
            if r.random() < 0.8
            else b"$JS.EVENT.ADVISORY." + self._token(10).encode()
        )
        return Frame("advisory", subject, payload)

    def _internal(self) -> Frame:
        r = self.rng
        subject = r.choice(
            (b"agentbus.gossip.all", b"agentbus.gossip.w1", b"agentbus.gossip.zz", b"agentbus.state.query")
        )
        block = (
            _headers([("Agentbus-Gossip-From", self._token(r.randrange(1, 40)))])
            if r.random() < 0.5
            else None
        )
        return Frame("internal", subject, self._garbage(2000), block)

    # -- parts ------------------------------------------------------------------------------

    def _envelope(self, small: bool = False) -> tuple[str, bytes]:
        """``(id if it is a string, bytes)`` of a hostile task envelope."""
        r = self.rng
        task_id: object = self._task_id()
        payload: dict[str, object] = {"text": "fuzz"}
        extra: dict[str, object] = {}
        mutation = r.randrange(14)
        if mutation == 1:
            payload["extra"] = "[" * r.randrange(500, 10_000)  # placeholder, replaced below
        elif mutation == 2:
            extra["deadline"] = r.choice(("1e999", "-1e999", '"NaN"', "NaN", "1e308", "0", "-1", "10" * 20))
        elif mutation == 3:
            payload = {"text": r.choice((1, None, ["a"], {"a": 1}, "\ud800"))}
        elif mutation == 4:
            extra["tenant"] = r.choice((CANARY_TENANT, "h1", "\u0000"))
        elif mutation == 5:
            payload["fail"] = r.choice(("always", "once", "reject"))
        elif mutation == 6:
            payload["sleep_s"] = r.choice((0.05, -1, 0.2))
        elif mutation == 7 and not small:  # now and then up to the server's max_payload
            top = self.max_payload - 1024 if r.random() < 0.3 else 300 * 1024
            payload["text"] = "p" * r.randrange(top // 2, top)
        elif mutation == 8:
            task_id = r.choice((None, 42, ["x"], "", {"id": "x"}))
        elif mutation == 9:
            return "", self._garbage(r.randrange(1, 5000))
        elif mutation == 10:
            return "", b"[" * r.randrange(500, 20_000)
        body = json.dumps({"id": task_id, "payload": payload}).encode()
        if mutation == 1:
            depth = len(str(payload["extra"]))
            body = body.replace(b'"' + b"[" * depth + b'"', b"[" * depth + b"]" * depth)
        for name, literal in extra.items():
            raw = literal if isinstance(literal, str) and name == "deadline" else json.dumps(literal)
            body = body[:-1] + f', "{name}": {raw}}}'.encode()
        return (task_id if isinstance(task_id, str) else ""), body

    def _task_id(self) -> str:
        r = self.rng
        shape = r.randrange(10)
        if shape == 0:
            return "".join(r.choices(_ALNUM, k=64 * 1024))
        if shape == 1:
            return "".join(r.choices(_ALNUM, k=r.randrange(129, 5000)))
        if shape == 2:
            return r.choice(("has space", "has.dot", "wild*", "gt>", "tab\tid", "nl\nid", "é-id", "\x00"))
        return f"fz-{self._n}-{r.randrange(1 << 30)}"

    def _msg_id(self) -> str:
        r = self.rng
        return r.choice(
            (f"m-{self._n}", "fz-dup", "x" * r.randrange(1, 3000), "has space", f"h1:echo:{self._n}")
        )

    def _reply(self) -> str:
        r = self.rng
        return r.choice(
            (
                f"_INBOX.fz{self._n}",
                "_INBOX.a b",
                f"tasks.{CANARY_TENANT}.echo",
                f"dlq.{CANARY_TENANT}.echo",
                f"results.{CANARY_TENANT}.x",
                "agentbus.gossip.all",
                "$JS.API.STREAM.DELETE.TASKS",
                "_INBOX.*",
                "_INBOX.>",
                "",
                "_INBOX." + "r" * r.randrange(100, 6000),
            )
        )

    def _token(self, n: int) -> str:
        return "".join(self.rng.choices(_ALNUM, k=n))

    def _garbage(self, limit: int) -> bytes:
        r = self.rng
        return bytes(r.randrange(256) for _ in range(r.randrange(0, limit)))
