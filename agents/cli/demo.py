"""``agentbus demo``: placeholder, written next."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the demo workload on the embedded default")
    p.set_defaults(run=lambda a: 0)
