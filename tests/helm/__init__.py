"""Chart tests: render, lint, validate, schema, policy and CLI checks of helm/agentbus."""
