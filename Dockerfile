# syntax=docker/dockerfile:1
# The gateway without the embedded databases: point GATEWAY_DATABASE_URL and GATEWAY_REDIS_URL
# at a PostgreSQL and a Redis, and set GATEWAY_MASTER_KEY (and GATEWAY_PUBLIC_URL when channels
# and payers reach the container under another address). `gateway serve` applies the
# migrations at start-up. Other commands run the same image:
#   docker run --rm -e GATEWAY_DATABASE_URL=... -e GATEWAY_MASTER_KEY=... IMAGE merchant create --name shop --json

# --- builder: a virtual environment holding the gateway and its dependencies ---------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, in a layer of their own that a code change does not invalidate.
COPY pyproject.toml ./
RUN mkdir -p gateway adapters routing \
    && touch gateway/__init__.py adapters/__init__.py routing/__init__.py \
    && pip install . \
    && pip uninstall --yes payment-gateway
COPY gateway ./gateway
COPY adapters ./adapters
COPY routing ./routing
RUN pip install --no-deps . && python -m compileall -q /opt/venv

# --- runtime: python:3.11-slim with only the venv and the configuration ------------------
FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home gateway

COPY --from=builder /opt/venv /opt/venv
# config/routing.yaml and the keys it names resolve from the working directory (the
# defaults of GATEWAY_ROUTING_FILE and GATEWAY_CONFIG_DIR); owned by root, read-only to the
# gateway user.
WORKDIR /app
COPY config ./config

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_VAR_DIR=/tmp/gateway

USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["gateway"]
CMD ["serve"]
