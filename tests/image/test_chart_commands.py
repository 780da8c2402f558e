"""Every command and flag the chart renders for a container exists in that container's image.

The command line is what the kubelet would run (the image's entrypoint unless the container
sets ``command``); its program runs ``--help`` in the image, and every flag is one that the
help of its (sub)command offers. A worker pod that ran ``locust`` with the worker's flags, as
the Dockerfile's default target once made it, fails here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from helm._chart import Rendered, all_features_values

from ._container import Container
from ._pods import pod_argv

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

FLAG = re.compile(r"(?<![\w-])--[a-z][-a-z0-9]*")


def flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


class Helps:
    """``--help`` output of commands in a container, each asked once."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self._ask = cache(self._run)

    def _run(self, argv: tuple[str, ...]) -> str:
        done = self.container.run([*argv, "--help"])
        assert done.returncode == 0, f"{argv} --help in {self.container.image.name}: {done.stderr}"
        return done.stdout

    def offered(self, *argv: str) -> set[str]:
        return set(FLAG.findall(self._ask(argv)))

    def text(self, *argv: str) -> str:
        return self._ask(argv)


def check_agentbus(helps: Helps, argv: list[str]) -> None:
    program, *rest = argv
    top = helps.text(program)
    commands = re.findall(r"^    ([a-z][-a-z]*)  ", top, re.MULTILINE)  # argparse's COMMAND list
    assert "worker" in commands, top
    position = next(i for i, a in enumerate(rest) if a in commands)
    before, sub, after = rest[:position], rest[position], rest[position + 1 :]
    assert flags(before) <= helps.offered(program), flags(before) - helps.offered(program)
    used, offered = flags(after), helps.offered(program, sub)
    assert used <= offered, f"{program} {sub}: {used - offered}"


# Locust's own parser with the locustfile's options added, as `locust` builds it at start
# (its --help stops before the locustfile is loaded, so the help cannot show them).
LOCUST_PARSE = """
import sys
import loadtest.locustfile
from locust.argument_parser import get_parser
get_parser().parse_args(sys.argv[1:])
"""


def check_locust(helps: Helps, argv: list[str], rendered: Rendered, tmp_path: Path) -> None:
    """Locust runs; its parser takes the args and the mounted config file; the locustfile exists."""
    helps.offered(argv[0])
    mounts = {}
    if "--config" in argv:  # the ConfigMap, mounted where the chart mounts it
        (conf,) = [
            c["data"]["locust.conf"] for c in rendered.of_kind("ConfigMap") if "locust.conf" in c["data"]
        ]
        settings = dict(line.split(" = ", 1) for line in conf.splitlines() if line.strip())
        exists = "import pathlib, sys; sys.exit(not pathlib.Path(sys.argv[1]).is_file())"
        assert helps.container.run(["python3", "-c", exists, settings["locustfile"]]).returncode == 0
        mounted = Path(argv[argv.index("--config") + 1])
        local = tmp_path / "locust"
        local.mkdir(exist_ok=True)
        (local / mounted.name).write_text(conf)
        mounts[str(mounted.parent)] = local
    done = helps.container.run(["python3", "-c", LOCUST_PARSE, *argv[1:]], mounts=mounts)
    assert done.returncode == 0, f"{argv}: {done.stderr}"


@pytest.mark.parametrize("values", ["default", "all-features"])
def test_every_rendered_command_and_flag_exists_in_its_image(
    render: Callable[[dict[str, Any]], Rendered],
    containers: dict[str, Container],
    values: str,
    tmp_path: Path,
) -> None:
    rendered = render(all_features_values() if values == "all-features" else {})
    helps = {name: Helps(c) for name, c in containers.items()}
    checked = []
    for obj in rendered.workloads():
        for c in obj["spec"]["template"]["spec"]["containers"]:
            assert c["image"] in containers, f"{c['name']}: {c['image']} is not an image `make image` builds"
            argv = pod_argv(containers[c["image"]].image, c)
            program = argv[0].rsplit("/", 1)[-1]
            if program == "agentbus":
                check_agentbus(helps[c["image"]], argv)
            elif program == "locust":
                check_locust(helps[c["image"]], argv, rendered, tmp_path)
            else:
                raise AssertionError(f"{c['name']} runs {argv[0]}, which no test here knows")
            checked.append((obj["kind"], c["name"], program))
    components = {"agent", "scaler", "test", "locust-master", "locust-worker"}
    expected = components if values == "all-features" else {"agent", "test"}
    labels = [o["spec"]["template"]["metadata"]["labels"] for o in rendered.workloads()]
    seen = {label["app.kubernetes.io/component"] for label in labels}
    assert seen == expected
    assert checked
