"""The dependency direction of docs/architecture.md, read from the source: a new import that
breaks it fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = ("agentbus", "bus", "agents", "state", "scaler", "loadtest")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at any depth: lazy imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _modules(package: str) -> dict[str, set[str]]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name] = {m for m in _imports(path) if m.split(".")[0] in TOP}
    return out


def _offenders(package: str, allowed: tuple[str, ...], *, skip: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for module, imported in _modules(package).items():
        if module.startswith(skip):
            continue
        for target in sorted(imported):
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{module} imports {target}")
    return bad


KERNEL = ("agentbus.errors", "agentbus.backoff", "agentbus.env", "agentbus.http", "agentbus.logs")
"""What every process shares; never ``agentbus.cli``, which sits on top."""

RULES = {
    "bus": ("bus", *KERNEL, "state.delegate"),  # bus/gossip.py implements state's Transport
    "state": ("state", *KERNEL),
    "scaler": ("scaler", *KERNEL),
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_lower_layers_import_only_what_they_may(package: str) -> None:
    assert _offenders(package, RULES[package]) == []


def test_the_agent_runtime_never_imports_a_plugin_or_the_command_line() -> None:
    allowed = ("agents", "bus", "state", *KERNEL)
    plugins = ("agents.llm", "agents.builtin")
    assert _offenders("agents", allowed, skip=plugins) == []
    runtime = {m: i for m, i in _modules("agents").items() if not m.startswith(plugins)}
    assert "agents.worker" in runtime
    assert {m for m, i in runtime.items() if any(t.startswith(plugins) for t in i)} == set()


def test_nothing_in_the_product_imports_loadtest() -> None:
    for package in ("agentbus", "bus", "agents", "state", "scaler"):
        users = {m for m, i in _modules(package).items() if any(t.split(".")[0] == "loadtest" for t in i)}
        assert users == set(), package


def test_the_agentbus_kernel_imports_nothing_but_the_command_line_does() -> None:
    kernel = {m: i for m, i in _modules("agentbus").items() if not m.startswith("agentbus.cli")}
    assert {m: sorted(i - {*KERNEL, "agentbus.cli"}) for m, i in kernel.items()} == {m: [] for m in kernel}
    assert any(
        t.startswith("agents") for i in _modules("agentbus").values() for t in i
    )  # the rule sees imports
