"""Fan-out / fan-in: split a document, map its chunks on the worker pool, aggregate when all are in.

``doc_split`` cuts a document into chunks of ``chunk_words`` words and queues one
``doc_chunk`` task per chunk (``ctx.publish`` with a step per chunk: a retried split queues
no chunk twice). Each ``doc_chunk`` counts its words, stores its part under the tenant's key
``pipe.<job>.part-<i>`` and adds its index to ``pipe.<job>.done`` with compare-and-set (a
set: a chunk run twice adds itself once). The chunk that completes the set queues
``doc_join`` with the id ``SplitOut.join`` (derived from the job); two chunks that both see
it complete queue it once (JetStream's duplicate window), and a join run twice computes the
same answer. ``doc_join`` reads the parts and answers; its result is stored like every
result, so the publisher asks ``Publisher.result(split_output.join)``.

All aggregation state is in NATS KV (``ctx.kv``), none in a worker: a worker killed in the
middle loses nothing; its chunks are delivered again to another worker.
"""

from __future__ import annotations

import asyncio

import msgspec

from agentbus.errors import Reject, Retry
from agents.api import Context, agent, follow_up_id

__all__ = [
    "ChunkIn",
    "ChunkOut",
    "JoinIn",
    "JoinOut",
    "SplitIn",
    "SplitOut",
    "doc_chunk",
    "doc_join",
    "doc_split",
    "join_id",
]

MAX_PARTS = 256
_CAS_TRIES = 64


class SplitIn(msgspec.Struct):
    """A document to process in parallel."""

    text: str
    chunk_words: int = 50
    hold_s: float = 0.0
    """Each chunk pretends to work this long on its first attempt (demos, tests)."""


class SplitOut(msgspec.Struct):
    """The job (the split task's id), its number of parts and the join task's id."""

    job: str
    parts: int
    join: str


class ChunkIn(msgspec.Struct):
    """One chunk of a job."""

    job: str
    index: int
    total: int
    text: str
    hold_s: float = 0.0


class ChunkOut(msgspec.Struct):
    """What a chunk found."""

    index: int
    words: int
    longest: str


class JoinIn(msgspec.Struct):
    """Aggregate a job whose parts are all in."""

    job: str
    total: int


class JoinOut(msgspec.Struct):
    """The document's numbers, from every part."""

    job: str
    parts: int
    words: int
    longest: str


_part = msgspec.json.Decoder(ChunkOut)
_indexes = msgspec.json.Decoder(list[int])


@agent(kind="doc_split", input=SplitIn, output=SplitOut, max_inflight=16, timeout_s=30)
async def doc_split(ctx: Context, task: SplitIn) -> SplitOut:
    """Fan out: one ``doc_chunk`` task per chunk."""
    words = task.text.split()
    size = max(1, task.chunk_words)
    chunks = [" ".join(words[i : i + size]) for i in range(0, len(words), size)] or [""]
    if len(chunks) > MAX_PARTS:
        raise Reject(f"{len(chunks)} chunks: at most {MAX_PARTS} (raise chunk_words)")
    for index, text in enumerate(chunks):
        part = ChunkIn(job=ctx.task_id, index=index, total=len(chunks), text=text, hold_s=task.hold_s)
        await ctx.publish("doc_chunk", part, step=f"chunk-{index}")
    return SplitOut(job=ctx.task_id, parts=len(chunks), join=join_id(ctx.task_id))


def join_id(job: str) -> str:
    """The id of a job's ``doc_join`` task (every chunk derives the same one)."""
    return follow_up_id(job, "doc_join", "join")


@agent(kind="doc_chunk", input=ChunkIn, output=ChunkOut, max_inflight=64, timeout_s=30)
async def doc_chunk(ctx: Context, task: ChunkIn) -> ChunkOut:
    """Map one chunk, record its part, and queue the join when it completes the set."""
    if not 0 <= task.index < task.total <= MAX_PARTS:
        raise Reject(f"chunk {task.index} of {task.total} is out of range")
    if task.hold_s > 0 and ctx.attempt == 1:
        await asyncio.sleep(task.hold_s)
    words = task.text.split()
    out = ChunkOut(index=task.index, words=len(words), longest=max(words, key=len, default=""))
    await ctx.kv.put(f"pipe.{task.job}.part-{task.index}", msgspec.json.encode(out))
    done = await _add_done(ctx, task.job, task.index)
    if len(done) == task.total:
        await ctx.publish("doc_join", JoinIn(job=task.job, total=task.total), task_id=join_id(task.job))
    return out


async def _add_done(ctx: Context, job: str, index: int) -> set[int]:
    """Add ``index`` to the job's set of finished chunks (compare-and-set); the set after."""
    key = f"pipe.{job}.done"
    for _ in range(_CAS_TRIES):
        found = await ctx.kv.get(key)
        if found is None:
            if await ctx.kv.create(key, msgspec.json.encode([index])) is not None:
                return {index}
            continue
        done = set(_indexes.decode(found[0]))
        if index in done:
            return done
        done.add(index)
        if await ctx.kv.update(key, msgspec.json.encode(sorted(done)), found[1]) is not None:
            return done
    raise Retry(f"job {job}: the set of finished chunks kept changing", delay_s=0.1)


@agent(kind="doc_join", input=JoinIn, output=JoinOut, max_inflight=16, timeout_s=30)
async def doc_join(ctx: Context, task: JoinIn) -> JoinOut:
    """Fan in: aggregate every part of the job."""
    if not 0 < task.total <= MAX_PARTS:
        raise Reject(f"{task.total} parts is out of range")
    parts: list[ChunkOut] = []
    for index in range(task.total):
        found = await ctx.kv.get(f"pipe.{task.job}.part-{index}")
        if found is None:
            raise Retry(f"part {index} of job {task.job} is not in yet", delay_s=0.5)
        parts.append(_part.decode(found[0]))
    longest = max((p.longest for p in parts), key=len, default="")
    return JoinOut(job=task.job, parts=len(parts), words=sum(p.words for p in parts), longest=longest)
