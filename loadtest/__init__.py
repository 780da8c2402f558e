"""Load tests and benchmarks of agentbus."""

__all__: list[str] = []
