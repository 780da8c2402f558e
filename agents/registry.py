"""A registry of agent specs, built explicitly from specs or from modules that define them."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from typing import Any

from agentbus.errors import ConfigError
from agents.api import AgentSpec

__all__ = ["Registry"]


class Registry:
    """Agents by kind; one spec per kind."""

    def __init__(self, specs: Iterable[AgentSpec[Any, Any]] = ()) -> None:
        self._specs: dict[str, AgentSpec[Any, Any]] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: AgentSpec[Any, Any]) -> None:
        """Register ``spec``; a second spec for the same kind is a configuration error."""
        if spec.kind in self._specs and self._specs[spec.kind] is not spec:
            raise ConfigError(f"two agents for kind {spec.kind!r}")
        self._specs[spec.kind] = spec

    @classmethod
    def from_modules(cls, names: Iterable[str]) -> Registry:
        """Import each module and collect the :class:`AgentSpec` objects it defines."""
        registry = cls()
        for name in names:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise ConfigError(f"cannot import agent module {name!r}: {exc}") from exc
            found = [v for v in vars(module).values() if isinstance(v, AgentSpec)]
            if not found:
                raise ConfigError(f"module {name!r} defines no @agent")
            for spec in found:
                registry.add(spec)
        return registry

    def only(self, kinds: Iterable[str]) -> Registry:
        """A registry with just ``kinds`` (each must exist)."""
        wanted = list(kinds)
        missing = [k for k in wanted if k not in self._specs]
        if missing:
            raise ConfigError(f"unknown agent kinds: {', '.join(missing)}; known: {', '.join(self.kinds)}")
        return Registry(self._specs[k] for k in wanted)

    @property
    def kinds(self) -> list[str]:
        """Registered kinds, sorted."""
        return sorted(self._specs)

    def __getitem__(self, kind: str) -> AgentSpec[Any, Any]:
        return self._specs[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._specs

    def __iter__(self) -> Iterator[AgentSpec[Any, Any]]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)
