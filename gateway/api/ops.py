"""Operational endpoints: /healthz, /readyz, /metrics, /openapi.json."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway import metrics
from gateway.api.context import services
from gateway.api.openapi import openapi_document


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = await services(request).readiness()
    ready = all(v.startswith("ok") for v in checks.values())
    return web.Response(
        status=200 if ready else 503,
        body=orjson.dumps({"status": "ready" if ready else "not_ready", "checks": checks}),
        content_type="application/json",
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus: this process, or every gateway process on the host in multiprocess mode."""
    body, content_type = metrics.exposition()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def openapi(request: web.Request) -> web.Response:
    svc = services(request)
    return web.json_response(openapi_document(svc.settings.effective_public_url))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)


def add_metrics_route(app: web.Application) -> None:
    """/metrics: on the internal listener when there is one (`gateway.app`)."""
    app.router.add_get("/metrics", metrics_endpoint)
