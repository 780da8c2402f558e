"""``python -m agentbus`` runs the command-line interface."""

from agents.cli import main

raise SystemExit(main())
