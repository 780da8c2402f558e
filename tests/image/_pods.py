"""What the rendered chart asks of a container: its command line, its environment."""

from __future__ import annotations

from typing import Any

from helm._chart import Rendered

from ._container import Image


def pod_containers(rendered: Rendered, component: str) -> list[dict[str, Any]]:
    """The containers of one component's pods."""
    return [
        c
        for obj in rendered.workloads()
        if obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
        for c in obj["spec"]["template"]["spec"]["containers"]
    ]


def pod_argv(image: Image, container: dict[str, Any]) -> list[str]:
    """What the kubelet runs: ``command`` replaces the image's entrypoint, ``args`` its CMD."""
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return [*image.entrypoint, *container.get("args", image.cmd)]


def pod_env(rendered: Rendered, container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The environment Kubernetes gives the container: ConfigMaps, literal values, the pod name."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(next(c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"] == name)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", var
            env[var["name"]] = pod_name
    return env
