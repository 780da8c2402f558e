"""``python -m agentbus`` runs the command-line interface."""

from agentbus.cli import main

raise SystemExit(main())
