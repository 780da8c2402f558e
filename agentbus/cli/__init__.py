"""The ``agentbus`` command: ``up``, ``worker``, ``publish``, ``status``, ``demo``, ``scaler``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from agentbus import __version__
from agentbus.cli._codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE
from agentbus.errors import AgentbusError, ConfigError, UsageError

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (used by ``--help`` tests too)."""
    from agentbus.cli import demo, publish, scaler, status, up, worker

    parser = argparse.ArgumentParser(prog="agentbus", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agentbus {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, worker, publish, status, demo, scaler):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.run(args)
    except AgentbusError as exc:
        print(f"agentbus: error: {exc}", file=sys.stderr)
        if isinstance(exc, UsageError):
            return EXIT_USAGE
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code
