"""The chart under test and what a render of it holds (shared by the tests in this package)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "agentbus"
ALL_FEATURES = CHART / "ci" / "all-features-values.yaml"
RELEASE, NAMESPACE = "ab", "agents"
NOTES = "agentbus/templates/NOTES.txt"
DEFAULT_VALUES: dict[str, Any] = {"tenants": {"allowAnyTenant": True}}
"""The least an install must say: which tenants are served (here: any; values.yaml requires a choice)."""


@dataclass
class Rendered:
    """The output of one render: manifests by template, parsed objects, NOTES.txt."""

    files: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: str = ""

    @classmethod
    def of(cls, files: dict[str, str]) -> Rendered:
        objects = [
            obj
            for name, text in sorted(files.items())
            if name != NOTES
            for obj in yaml.safe_load_all(text)
            if obj
        ]
        return cls(files=files, objects=objects, notes=files.get(NOTES, ""))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a Kubernetes kind."""
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        """The object of this kind and name (fails if missing)."""
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        """Objects that carry a pod template."""
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def all_features_values() -> dict[str, Any]:
    """The values file that switches every optional part on."""
    values: dict[str, Any] = yaml.safe_load(ALL_FEATURES.read_text())
    return values
