"""The ``agentbus`` command: ``up``, ``worker``, ``publish``, ``result``, ``audit``, ``dlq``, ``status``,
``demo``, ``scaler``, ``auth``, ``mcp``, ``kb``,
``edge``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agentbus import __version__
from agentbus.cli._codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_USAGE
from agentbus.env import Env
from agentbus.errors import AgentbusError, ConfigError, UsageError
from agentbus.logs import FORMATS
from agentbus.logs import configure as configure_logging
from bus import tracing

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (used by ``--help`` tests too)."""
    from agentbus.cli import (
        audit,
        auth,
        demo,
        dlq,
        edge,
        kb,
        mcp,
        publish,
        result,
        scaler,
        status,
        up,
        worker,
    )

    parser = argparse.ArgumentParser(prog="agentbus", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agentbus {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default %(default)s)")
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=Env().text("AGENTBUS_LOG_FORMAT") or "text",
        help="text, or json: one object per line; lines about a task carry tenant, kind, task_id,"
        " attempt and trace_id (default $AGENTBUS_LOG_FORMAT or text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, worker, publish, result, audit, dlq, status, demo, scaler, auth, mcp, kb, edge):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:  # AGENTBUS_LOG_FORMAT or --log-level (argparse checks --log-format)
        print(f"agentbus: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        tracing.configure_from_env()
        code: int = args.run(args)
    except AgentbusError as exc:
        print(f"agentbus: error: {exc}", file=sys.stderr)
        if isinstance(exc, UsageError):
            return EXIT_USAGE
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code
