"""Both images run as UID 10001, hold no compiler, and give that user nothing to write outside
/tmp: what ``readOnlyRootFilesystem`` enforces on a cluster holds in the image itself."""

from __future__ import annotations

import json

import pytest

from ._container import LOADTEST, RUNTIME, Container

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.parametrize("name", [RUNTIME, LOADTEST]),
]

COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc")

# Walks the root as the image's user. /proc, /sys and /dev are the runtime's mounts, not the
# image's files; /tmp is the one place the chart mounts writable (an emptyDir).
WALK = """
import json, os
skip = {"/proc", "/sys", "/dev", "/tmp"}
writable = []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
    for name in [top, *(os.path.join(top, f) for f in files)]:
        if not os.path.islink(name) and os.access(name, os.W_OK):
            writable.append(name)
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "writable": writable}))
"""


def test_runs_as_uid_10001_with_nothing_writable_outside_tmp(
    containers: dict[str, Container], name: str
) -> None:
    container = containers[name]
    assert container.image.config["User"] == "10001:10001"
    done = container.run(["python3", "-c", WALK])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["uid"], seen["gid"]) == (10001, 10001)
    assert seen["writable"] == []


def test_holds_no_compiler(containers: dict[str, Container], name: str) -> None:
    find = "import shutil, sys; print([c for c in sys.argv[1:] if shutil.which(c)])"
    done = containers[name].run(["python3", "-c", find, *COMPILERS])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
