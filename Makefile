# One Makefile that CI calls (.ci/run -> make test). Every target sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps demo test lint bench loadtest clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# redis-server and prometheus/promtool come from Debian; install them only when missing.
system-deps:
	@if ! command -v promtool >/dev/null || ! command -v redis-server >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO apt-get install -y -qq --no-install-recommends prometheus redis-server >/dev/null; \
	fi

demo: setup
	$(BIN)/agentbus demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest

bench: setup
	$(BIN)/agentbus bench

# Locust against the embedded default, judged by loadtest/slo.toml (docs/loadtest.md).
# make loadtest ARGS="--scenario spike"; ARGS="--scenario all"; ARGS="--nats-url nats://host:4222 --metrics ..."
loadtest: setup
	$(BIN)/python -m loadtest.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .agentbus reports
