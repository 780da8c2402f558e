# syntax=docker/dockerfile:1
# The agentbus images for the Helm chart (helm/agentbus). The default target, the last stage,
# is the runtime image; the Locust image is the named target `loadtest`:
#
#   docker build -t agentbus:0.1.0 .                               # workers, scaler, helm test
#   docker build --target loadtest -t agentbus:0.1.0-loadtest .    # Locust (locust.enabled)
#
# `make image` builds both with docker, podman or buildah, whichever works on the machine
# (docs/kubernetes.md). Both run as UID 10001 with nothing to write outside /tmp, so they work
# under readOnlyRootFilesystem with an emptyDir at /tmp (the chart mounts one).

# Any Debian-like image with python3 (3.11 or later) and its venv module; `make image` makes one
# from Debian packages where the registry cannot be reached.
ARG PYTHON_IMAGE=python:3.11-slim

# -- base: what both images share: the user, the environment, no writable paths -------------
FROM ${PYTHON_IMAGE} AS base
# Bytecode is compiled at build time (a read-only root cannot take .pyc files); logs unbuffered.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# /tmp is the only place the user may write (the chart mounts an emptyDir there): /var/tmp
# becomes /tmp, the world-writable /run/lock is closed (nothing here locks a device), and
# /app is made by root before WORKDIR could make it the user's.
RUN groupadd --system --gid 10001 agentbus \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp agentbus \
 && rm -rf /var/tmp && ln -s /tmp /var/tmp \
 && chmod 0755 /run/lock \
 && install -d -m 0755 /app

# -- build: a virtualenv with agentbus and its wheels (uvloop, msgspec, nats-py, ...) ----------
FROM base AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agentbus/ agentbus/
COPY bus/ bus/
COPY agents/ agents/
COPY state/ state/
COPY scaler/ scaler/
# Binary wheels only: uvloop and msgspec are compiled extensions, and a source build would
# need a compiler these images do not have. /run/build-ca.crt: the CA bundle of a
# TLS-intercepting proxy, which `make image` mounts for the build steps only where it has one.
RUN [ ! -f /run/build-ca.crt ] || export PIP_CERT=/run/build-ca.crt; \
    pip install -q --only-binary=:all: --upgrade pip \
 && pip install -q --prefer-binary ".[otel,mcp]" \
 && python3 -m compileall -q /opt/venv

# -- build-loadtest: the same virtualenv plus Locust ----------------------------------------
FROM build AS build-loadtest
RUN [ ! -f /run/build-ca.crt ] || export PIP_CERT=/run/build-ca.crt; \
    pip install -q --prefer-binary "locust>=2.40" \
 && python3 -m compileall -q /opt/venv

# -- loadtest: Locust and the scenarios (helm value locust.enabled) ---------------------------
FROM base AS loadtest
COPY --from=build-loadtest /opt/venv /opt/venv
COPY loadtest/ /app/loadtest/
RUN python3 -m compileall -q /app/loadtest
# The chart points Locust at /app/loadtest/locustfile.py; loadtest/ is not in the wheel, so the
# package (and its slo.toml) is imported from /app.
ENV PYTHONPATH=/app
WORKDIR /app
USER 10001:10001
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
CMD ["--help"]

# -- runtime (the default target): `agentbus worker`, `agentbus scaler`, `agentbus publish` -----
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Exec form: agentbus is PID 1 and receives SIGTERM itself, which starts the drain.
ENTRYPOINT ["agentbus"]
CMD ["worker", "--http-host", "0.0.0.0", "--http-port", "8080"]
