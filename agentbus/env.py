"""The one reader of ``AGENTBUS_*`` variables: typed, with one error format and one boolean spelling.

Every configuration type (``WorkerConfig``, ``LLMConfig``, the scaler's config, NATS auth)
reads the environment through :class:`Env`, once, at start:

* a variable that is set is read, even when empty: an empty number or switch is an
  error; an empty text is ``""`` (the caller decides whether that means "none"), an
  empty list ``()``, an empty file name unset;
* booleans are ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, any case;
  anything else is an error, not a silent "on";
* every error is a :class:`~agentbus.errors.ConfigError` that reads
  ``NAME='value': expected <what>``, raised before anything starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from agentbus.errors import ConfigError

__all__ = ["FALSE", "TRUE", "Env"]

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})


class Env:
    """Typed reads of one environment (``os.environ`` unless another mapping is given)."""

    __slots__ = ("_env",)

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env: Mapping[str, str] = os.environ if environ is None else environ

    def __contains__(self, name: object) -> bool:
        return name in self._env

    def names(self, prefix: str) -> list[str]:
        """The set variables whose names start with ``prefix``, sorted."""
        return sorted(n for n in self._env if n.startswith(prefix))

    def text(self, name: str) -> str | None:
        """The value as set (maybe empty), or None when unset."""
        return self._env.get(name)

    def _typed(self, name: str) -> str | None:
        value = self._env.get(name)
        return None if value is None else value.strip()

    def integer(self, name: str) -> int | None:
        """An integer, or None when unset."""
        value = self._typed(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise self.error(name, "an integer") from None

    def number(self, name: str) -> float | None:
        """A number (units are in the variable's name), or None when unset."""
        value = self._typed(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            raise self.error(name, "a number") from None
        if number != number:  # NaN compares with nothing: no bound could check it
            raise self.error(name, "a number")
        return number

    def flag(self, name: str) -> bool | None:
        """A switch: 1/true/yes/on or 0/false/no/off (any case), or None when unset."""
        value = self._typed(name)
        if value is None:
            return None
        word = value.lower()
        if word in TRUE:
            return True
        if word in FALSE:
            return False
        raise self.error(name, "1, true, yes, on, 0, false, no or off")

    def items(self, name: str) -> tuple[str, ...] | None:
        """Comma-separated items, stripped, empty ones dropped; None when unset, () when empty."""
        if name not in self._env:
            return None
        return tuple(item.strip() for item in self._env[name].split(",") if item.strip())

    def file(self, name: str) -> str | None:
        """A path that must name an existing file, or None when unset or empty."""
        path = self.text(name) or None
        if path is not None and not os.path.isfile(path):
            raise self.error(name, "an existing file")
        return path

    def secret(self, name: str) -> str | None:
        """``name`` when set and not empty, else the stripped contents of the file ``name``_FILE
        names (a mounted Secret); None when neither is given."""
        value = self.text(name)
        path = self.text(f"{name}_FILE")
        if value or not path:
            return value
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r}: expected a readable file ({exc.strerror})") from exc

    def error(self, name: str, expected: str) -> ConfigError:
        """The one error format: ``NAME='value': expected <what>``."""
        return ConfigError(f"{name}={self._env.get(name, '')!r}: expected {expected}")
