# syntax=docker/dockerfile:1
# Tollgate in a container: slim Python, a numeric non-root user, pinned runtime dependencies only.
#
#   docker build -t tollgate .
#   docker run --rm -p 8080:8080 --stop-timeout 40 \
#       -v "$PWD/my-gateway.yaml:/etc/tollgate/gateway.yaml:ro" -v tollgate-data:/var/lib/tollgate tollgate
#
# The config is mounted read-only, never baked in. The gateway's own files (a SQLite database, the spend
# log's spill file, a registry or usage file) go under /var/lib/tollgate, a volume: relative paths in the
# config are read under $TOLLGATE_DATA_DIR (the config's data_dir: overrides it). Reload the config with
# `docker kill --signal HUP <container>`; `docker stop` sends SIGTERM and the gateway drains for
# server.shutdown_grace (30 s by default), so give the container a longer --stop-timeout. More workers:
# `-e TOLLGATE_WORKERS=4` (needs store.backend: redis). See README.md, "Docker".

ARG PYTHON_VERSION=3.12.8
# Optional extras of the package, comma-separated: `--build-arg EXTRAS=tracing` adds OpenTelemetry export.
ARG EXTRAS=""

# The hot path compiled by mypyc (pyproject.toml [tool.tollgate.compile]): a third less CPU a request.
# `--build-arg TOLLGATE_COMPILE=0` builds the interpreted package instead (no compiler needed).
ARG TOLLGATE_COMPILE=1
ARG MYPY_VERSION=2.4.1
ARG SETUPTOOLS_VERSION=84.2.1

# ---- build: the tollgate wheel and the wheels of its dependencies, at the versions of constraints.txt
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TOLLGATE_COMPILE
ARG MYPY_VERSION
ARG SETUPTOOLS_VERSION
RUN if [ "$TOLLGATE_COMPILE" = 1 ]; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && pip install -q "setuptools==${SETUPTOOLS_VERSION}" "mypy==${MYPY_VERSION}"
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE constraints.txt ./
COPY tollgate ./tollgate
COPY lua ./lua
COPY config ./config
ARG EXTRAS
RUN TOLLGATE_COMPILE=${TOLLGATE_COMPILE} pip wheel --no-build-isolation --constraint constraints.txt \
      --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

# ---- runtime: no compiler, no sources, no test or benchmark extras
FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOLLGATE_WORKERS=1 \
    TOLLGATE_DATA_DIR=/var/lib/tollgate
# A numeric user and group (Kubernetes' runAsNonRoot can check a number, not a name).
RUN groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin tollgate \
 && mkdir -p /etc/tollgate /var/lib/tollgate \
 && chown 10001:10001 /var/lib/tollgate \
 && chmod 0750 /var/lib/tollgate
ARG EXTRAS
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "tollgate${EXTRAS:+[$EXTRAS]}"
USER 10001:10001
WORKDIR /var/lib/tollgate
EXPOSE 8080
VOLUME ["/var/lib/tollgate"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]
ENTRYPOINT ["tollgate"]
CMD ["serve", "--config", "/etc/tollgate/gateway.yaml", "--host", "0.0.0.0", "--port", "8080"]
