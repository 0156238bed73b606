"""Request ids, RFC 9457 problem answers for every error, metrics and timing; and who an
operators' request comes from (`operator_identity`: a bearer token or a console session)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import logs, metrics, timing
from gateway.api.context import services
from gateway.api.problems import error_response, problem_response
from gateway.domain.errors import GatewayError, ServiceUnavailable
from gateway.domain.permissions import Identity
from gateway.domain.records import OperatorSession
from gateway.services.operators import SESSION_COOKIE

log = structlog.get_logger("http")

REQUEST_ID = web.RequestKey("request_id", str)

DATABASE_AWAY: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin or crash shutdown of the server
    asyncpg.InterfaceError,
    # a pooled connection the server dropped mid-operation, reused ("cannot switch to state
    # 15; another operation is in progress", seen while PostgreSQL restarts)
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)
"""Errors that mean the database could not be reached or went away mid-request (as opposed to
a bug): answered 503 with Retry-After, which merchants retry safely (creates and refunds are
idempotent by merchant_order_id / merchant_refund_id and Idempotency-Key)."""

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = "req_" + secrets.token_hex(12)
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    logs.bind_request_id(request_id)
    timing.start()
    started = time.perf_counter()
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(
            exc.status, "invalid_request" if exc.status < 500 else "internal_error"
        )
        detail = {
            404: "No such resource.",
            405: f"{request.method} is not allowed here.",
            413: "The body is larger than 64 KiB.",
        }.get(exc.status, exc.reason)
        response = problem_response(exc.status, code, detail, request_id)
    except DATABASE_AWAY as exc:
        # PostgreSQL restarting or unreachable: nothing was committed by this request
        log.error("database_unavailable", path=request.path, error=repr(exc))
        response = error_response(
            ServiceUnavailable("The database is unavailable; retry shortly.", retry_after_s=2),
            request_id,
        )
    except Exception:
        log.exception("unhandled_error", path=request.path)
        response = problem_response(
            500, "internal_error", "Something went wrong on our side.", request_id
        )
    response.headers["X-Request-Id"] = request_id
    elapsed = time.perf_counter() - started
    channel_s = timing.channel_time()
    response.headers["X-Gateway-Overhead-Ms"] = f"{(elapsed - channel_s) * 1000:.2f}"
    route = _route_name(request)
    metrics.REQUESTS.labels(route=route, method=request.method, status=str(response.status)).inc()
    metrics.REQUEST_LATENCY.labels(route=route).observe(elapsed)
    return response


# ---- operators' identities ------------------------------------------------------------------

CSRF_HEADER = "X-CSRF-Token"
"""A change made with a console session (not a bearer token) carries the session's CSRF token
here (or, from the console's forms, in a `csrf_token` field the console checks)."""


@dataclass(frozen=True, slots=True)
class OperatorRequest:
    identity: Identity
    session: OperatorSession | None
    """The console session it came with (None for a bearer token)."""


def source_ip(request: web.Request) -> str | None:
    """The peer's address (a proxy in front must be trusted to be the peer named here)."""
    return request.remote


async def operator_identity(request: web.Request) -> OperatorRequest | None:
    """Who an operators' request comes from: `Authorization: Bearer <token>` (an operator
    token or GATEWAY_ADMIN_TOKEN), else the console's session cookie. None when there is no
    identity or an unknown, revoked, expired or disabled one."""
    operators = services(request).operators
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        identity = await operators.bearer_identity(token.strip())
        return None if identity is None else OperatorRequest(identity, None)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is None:
        return None
    session = await operators.live_session(cookie)
    if session is None:
        return None
    return OperatorRequest(operators.session_identity_of(session), session)
