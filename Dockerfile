# syntax=docker/dockerfile:1
# The gateway without the embedded databases and without any key: point GATEWAY_DATABASE_URL
# and GATEWAY_REDIS_URL at a PostgreSQL and a Redis, and set GATEWAY_MASTER_KEY (and
# GATEWAY_PUBLIC_URL when channels and payers reach the container under another address).
# `gateway serve` applies the migrations at start-up.
#
# Routing: by default `serve` reads config/routing.production.example.yaml, baked in: the real
# channel hosts, the accounts from environment variables (listed in that file's header) and the
# key files from /run/secrets/<channel>/ (mount them read-only, readable by uid 10001). To route
# otherwise, mount your own file and point GATEWAY_ROUTING_FILE at it:
#   docker run -v /srv/gateway/routing.yaml:/run/config/routing.yaml:ro \
#     -e GATEWAY_ROUTING_FILE=/run/config/routing.yaml -v /srv/gateway/secrets:/run/secrets:ro ...
# Relative key paths in a routing file resolve under GATEWAY_CONFIG_DIR=/run/secrets. The image
# holds no key: config/keys/ (the development keys) is left out by .dockerignore and never
# copied, so the development set of `make run` cannot reach production.
#
# Other commands run the same image:
#   docker run --rm -e GATEWAY_DATABASE_URL=... -e GATEWAY_MASTER_KEY=... IMAGE merchant create --name shop --json
#
# Supply chain (docs/security.md): the base image is pinned by digest (the tag beside it is for
# people; the digest is what is pulled). Refresh it with
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# and every Python package comes from requirements/runtime.txt with its hashes.

ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# --- builder: a virtual environment holding the gateway and its dependencies ---------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, in a layer of their own that a code change does not invalidate: exactly
# the pins of the lock, each file checked against its hash (pip refuses anything else), wheels
# only (nothing is compiled, so no build tool runs unpinned code here).
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip install --require-hashes --only-binary=:all: -r requirements/runtime.txt
COPY pyproject.toml ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY routing ./routing
# The project itself: no dependency resolved (all are installed above), built by the locked
# setuptools instead of one fetched for an isolated build.
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && python -m compileall -q /opt/venv

# --- runtime: the venv and the two rule files, no key -------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home gateway

COPY --from=builder /opt/venv /opt/venv
# Owned by root, read-only to the gateway user.
WORKDIR /app
COPY config/routing.production.example.yaml config/risk.yaml ./config/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_VAR_DIR=/tmp/gateway \
    GATEWAY_ROUTING_FILE=/app/config/routing.production.example.yaml \
    GATEWAY_RISK_FILE=/app/config/risk.yaml \
    GATEWAY_CONFIG_DIR=/run/secrets

USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["gateway"]
CMD ["serve"]
