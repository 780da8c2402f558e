"""``agentbus kb``: fill and query a knowledge base (docs/llm.md, "Retrieval").

    agentbus kb add --tenant acme --collection handbook docs/handbook/
    agentbus kb search --tenant acme --collection handbook "how long do refunds take?"
    agentbus kb list --tenant acme

The file is ``--db`` or ``AGENTBUS_KB_PATH``; the embedder is ``AGENTBUS_KB_EMBED_*``'s
(default: the offline hash embedder). ``add`` reads ``.md`` and ``.txt`` files (directories
recursively); a document's id is its path relative to the argument it was found under,
so adding the same files again replaces them. Output is JSON, one line per item.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec

from agentbus.errors import UsageError
from agents.kb import Document, KBConfig, KnowledgeBase, SQLiteStore

__all__ = ["register"]

_SUFFIXES = (".md", ".txt")


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("kb", help="fill and query a knowledge base")
    kb = p.add_subparsers(dest="kb_command", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", help="the SQLite file (default $AGENTBUS_KB_PATH or agentbus-kb.sqlite3)")
        q.add_argument("--tenant", required=True, help="whose knowledge base")

    add = kb.add_parser("add", help="add (or replace) documents: .md/.txt files and directories")
    common(add)
    add.add_argument("--collection", required=True)
    add.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    add.set_defaults(run=run)
    search = kb.add_parser("search", help="the passages nearest to a query")
    common(search)
    search.add_argument("--collection", required=True)
    search.add_argument("query")
    search.add_argument("-k", type=int, default=4, help="passages (default %(default)s)")
    search.set_defaults(run=run)
    lst = kb.add_parser("list", help="the tenant's collections")
    common(lst)
    lst.set_defaults(run=run)


def _documents(paths: list[Path]) -> list[Document]:
    docs = []
    for root in paths:
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
            docs += [Document(str(p.relative_to(root)), _read(p), p.name) for p in files]
        elif root.is_file():
            docs.append(Document(root.name, _read(root), root.name))
        else:
            raise UsageError(f"no such file or directory: {root}")
    return docs


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Run one action; exit 0, or 78 for bad settings, 2 for a bad command line."""
    config = KBConfig.from_env()
    kb = KnowledgeBase(SQLiteStore(args.db or config.path), config.embedder())
    return asyncio.run(_run(args, kb))


async def _run(args: argparse.Namespace, kb: KnowledgeBase) -> int:
    out = sys.stdout
    enc = msgspec.json.Encoder()
    try:
        if args.kb_command == "add":
            docs = _documents(args.paths)
            passages = await kb.add(args.tenant, args.collection, docs)
            out.write(enc.encode({"documents": len(docs), "passages": passages}).decode() + "\n")
        elif args.kb_command == "search":
            for hit in await kb.search(args.tenant, args.collection, args.query, args.k):
                out.write(enc.encode(hit).decode() + "\n")
        else:
            store = kb.store
            assert isinstance(store, SQLiteStore)
            for name, embedder, chunks in store.collections(args.tenant):
                out.write(enc.encode({"collection": name, "embedder": embedder, "passages": chunks}).decode())
                out.write("\n")
    finally:
        close = getattr(kb.embedder, "aclose", None)
        if close is not None:
            await close()
        store_close = getattr(kb.store, "close", None)
        if store_close is not None:
            store_close()  # the last connection checkpoints the WAL into the file
    return 0
