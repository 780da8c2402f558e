"""Must show 2: every rendered object validates strictly against Kubernetes 1.29 through 1.37.

kubernetes-validate ships the OpenAPI schemas of each release (``-local-strict``: unknown
fields rejected). Its ``validate()`` re-reads the 1.2 MB definitions file on every call, so
the validators are built here once per (version, kind) from the same files, and one test
checks that they agree with ``kubernetes_validate.validate``. prometheus-operator CRDs have
no shipped schema: they are checked against the strict subsets in ``schemas/``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

from ._chart import Rendered

VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]
CRD_SCHEMAS = Path(__file__).resolve().parent / "schemas"
CRD_GROUP = "monitoring.coreos.com/"


@functools.cache
def _definitions(version: str) -> Resource[Any]:
    return Resource.from_contents(
        kv_utils.schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    )


@functools.cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """What kubernetes_validate.validate(obj, version, strict=True) builds, built once."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # rbac.authorization.k8s.io/v1
    schema = kv_utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/{kind.lower()}-{group_version}.json", version
    )
    resource = Resource.from_contents(schema)
    registry: Registry[Any] = _definitions(version) @ (resource @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@functools.cache
def _crd_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((CRD_SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(obj: dict[str, Any], version: str) -> list[str]:
    """Every schema violation of one object, as 'path: message'."""
    if obj["apiVersion"].startswith(CRD_GROUP):
        validator = _crd_validator(obj["kind"])
    else:
        validator = _validator(version, obj["kind"], obj["apiVersion"])
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=str)
    ]


def test_every_version_has_strict_schemas() -> None:
    shipped = set(kv_utils.all_versions())
    assert {v for v in VERSIONS} <= shipped, sorted(shipped)


ADMISSION_POLICY_KINDS = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
"""admissionregistration.k8s.io/v1 from 1.30 on: the chart renders them only there (test_admission_policy)."""


def exists_in(obj: dict[str, Any], version: str) -> bool:
    """Whether the chart renders ``obj`` for a cluster of ``version`` (rendered here for the newest)."""
    return obj["kind"] not in ADMISSION_POLICY_KINDS or int(version.split(".")[1]) >= 30


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(rendered: Rendered, version: str) -> None:
    failures = {
        f"{o['kind']}/{o['metadata']['name']}": found
        for o in rendered.objects
        if exists_in(o, version) and (found := problems(o, version))
    }
    assert failures == {}


def test_the_cached_validators_agree_with_kubernetes_validate(full: Rendered) -> None:
    """Same verdicts as the library's own entry point, on good objects and on a broken one."""
    for obj in full.objects:
        if not obj["apiVersion"].startswith(CRD_GROUP) and exists_in(obj, VERSIONS[0]):
            kubernetes_validate.validate(obj, VERSIONS[0], strict=True)
            kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(full.of_kind("Deployment")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolcy"] = container.pop("imagePullPolicy")  # a typo strict mode must catch
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    for version in VERSIONS:
        assert any("imagePullPolcy" in p for p in problems(deployment, version)), version


def test_crd_schemas_reject_what_prometheus_operator_rejects(full: Rendered) -> None:
    (monitor,) = full.of_kind("ServiceMonitor")
    assert problems(monitor, VERSIONS[0]) == []
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["interval"] = 15  # must be a duration string
    del bad["spec"]["selector"]
    found = problems(bad, VERSIONS[0])
    assert any("interval" in p for p in found)
    assert any("'selector' is a required property" in p for p in found)
    typo = copy.deepcopy(monitor)
    typo["spec"]["endpoint"] = typo["spec"].pop("endpoints")
    assert problems(typo, VERSIONS[0])


def test_the_pod_monitor_variant_validates(render: Callable[..., Rendered]) -> None:
    out = render({"metrics": {"podMonitor": {"enabled": True}}, "scaler": {"enabled": True}})
    assert out.of_kind("PodMonitor")
    for version in (VERSIONS[0], VERSIONS[-1]):
        present = [o for o in out.objects if exists_in(o, version)]
        assert {f"{o['kind']}/{o['metadata']['name']}": problems(o, version) for o in present} == {
            f"{o['kind']}/{o['metadata']['name']}": [] for o in present
        }
