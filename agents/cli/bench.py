"""``agentbus bench``: placeholder, written next."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("bench", help="benchmark agentbus against raw nats-py")
    p.set_defaults(run=lambda a: 0)
