"""The exit codes of every ``agentbus`` command."""

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_USAGE"]

EXIT_FAILURE = 1
"""A command that could not do its job (no NATS, a task that failed, workers not ready)."""
EXIT_USAGE = 2
"""A bad command line: argparse's code, and :class:`~agentbus.errors.UsageError`'s."""
EXIT_CONFIG = 78
"""Bad configuration found at start (sysexits' ``EX_CONFIG``): a restart would fail the same way,
so ``agentbus up`` does not restart a worker that exits with it."""
