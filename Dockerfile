# syntax=docker/dockerfile:1
# The agentbus image: `agentbus worker` and `agentbus scaler` for the Helm chart (helm/agentbus).
#
#   docker build -t agentbus:0.1.0 .                               # workers, scaler, helm test
#   docker build --target loadtest -t agentbus:0.1.0-loadtest .    # + Locust (locust.enabled)
#
# Runs as UID 10001 with nothing to write outside /tmp, so it works under
# readOnlyRootFilesystem with an emptyDir at /tmp (the chart mounts one).

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: a virtualenv with agentbus and its wheels (uvloop, msgspec, nats-py, ...) ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not re-download them.
COPY pyproject.toml README.md ./
COPY agentbus/ agentbus/
COPY bus/ bus/
COPY agents/ agents/
COPY state/ state/
COPY scaler/ scaler/
# Binary wheels only: uvloop and msgspec are compiled extensions, and a source build would
# need a compiler this image does not have.
RUN pip install --only-binary=:all: --upgrade pip \
 && pip install --prefer-binary . \
 && python -m compileall -q /opt/venv

# -- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Bytecode is compiled at build time (a read-only root cannot take .pyc files); logs unbuffered.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN groupadd --system --gid 10001 agentbus \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp agentbus
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Exec form: agentbus is PID 1 and receives SIGTERM itself, which starts the drain.
ENTRYPOINT ["agentbus"]
CMD ["worker", "--http-host", "0.0.0.0", "--http-port", "8080"]

# -- loadtest: the runtime plus Locust and the scenarios (helm value locust.enabled) ------------
FROM runtime AS loadtest
USER root
RUN pip install --no-cache-dir --prefer-binary "locust>=2.40" && python -m compileall -q /opt/venv
COPY loadtest/ /app/loadtest/
# loadtest/ is not in the wheel: the scenarios and loadtest/slo.toml are imported from /app.
ENV PYTHONPATH=/app
USER 10001:10001
ENTRYPOINT ["locust"]
CMD ["--help"]
