# One Makefile that CI calls (.ci/run -> make test). Every target sets itself up.
# The distribution's python3 when it is 3.11 or later and can make a venv (Debian's needs
# python3-venv for that), else the first python3 on PATH. Debian and Ubuntu build theirs with
# PGO and LTO, as the python:3.11-slim image the chart runs is; pyenv's default build has
# neither and runs agentbus's Python about 15 % slower, which the benchmarks would count
# against it (docs/llm.md, "Which interpreter").
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps image demo test lint bench bench-llm loadtest fuzz chaos clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages, installed only when missing.
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends

# redis-server and prometheus (promtool) for the tests; buildah and mmdebstrap to build and run
# the images in tests/image without a container daemon.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v redis-server >/dev/null \
		|| ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then \
		$(APT_INSTALL) prometheus redis-server buildah mmdebstrap >/dev/null; \
	fi

# agentbus:dev (the runtime, the Dockerfile's default target) and agentbus:dev-loadtest, with
# docker, podman or buildah, whichever works here (scripts/image.sh, docs/kubernetes.md);
# buildah and mmdebstrap are installed only where neither docker nor podman answers.
image:
	@if ! docker info >/dev/null 2>&1 && ! podman info >/dev/null 2>&1 \
		&& { ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; }; then \
		$(APT_INSTALL) buildah mmdebstrap >/dev/null; \
	fi
	scripts/image.sh

demo: setup
	$(BIN)/agentbus demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The data path's worker-process tests run a second time with nats-py's fast path off
# (the poison, wire-rule and bad-input suites run both ways inside the first pass).
DATA_PATH_TESTS := tests/integration/test_roundtrip.py tests/integration/test_prefetch.py \
	tests/integration/test_backpressure.py tests/integration/test_drain.py

test: setup lint
	$(BIN)/pytest
	AGENTBUS_NATS_FAST_PATH=0 $(BIN)/pytest -q $(DATA_PATH_TESTS)

# The data path against a raw nats-py loop, then LLM agents against a hand-written anchor;
# both print the anchor and the ratio. Exit 1 when the data path misses a target.
bench: setup
	$(BIN)/python -m loadtest; rc=$$?; $(BIN)/python -m loadtest.bench_llm || rc=1; exit $$rc

# One worker, 2,000 LLM tasks in flight against a 200 ms model (docs/llm.md#performance).
bench-llm: setup
	$(BIN)/python -m loadtest.bench_llm $(ARGS)

# Locust against the embedded default, judged by loadtest/slo.toml (docs/loadtest.md).
# make loadtest ARGS="--scenario spike"; ARGS="--scenario all"; ARGS="--nats-url nats://host:4222 --metrics ..."
loadtest: setup
	$(BIN)/python -m loadtest.run $(ARGS)

# Hostile frames against a real 3-worker fleet, fast path on then off (docs/fuzzing.md);
# the last line is one JSON summary, exit 1 on any violation. make fuzz ARGS="--seed 123"
FUZZ_SECONDS ?= 180
fuzz: setup
	timeout $$(( $(FUZZ_SECONDS) + 900 )) $(BIN)/python -m loadtest.fuzz_fleet --seconds $(FUZZ_SECONDS) $(ARGS)

# 20 fault rounds against a 3-node R3 cluster (kill -9 of the stream leader and of a follower,
# SIGSTOP, a partition, a restart of all three; every other cycle with a worker kill -9), judged
# by the history checker, then R3 against R1 (docs/cluster.md). Last line: one JSON summary;
# exit 1 if an acknowledged task was lost or the checker found a violation.
chaos: setup
	timeout 900 $(BIN)/python -m loadtest.chaos $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .agentbus .cache reports
