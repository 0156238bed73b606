"""The merchant API (`/v1`): signed JSON requests, idempotent POSTs. Handlers only parse,
call a service and render."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.api.context import Services, services
from gateway.api.middleware import REQUEST_ID, problem_response
from gateway.auth.authenticator import AuthenticatedMerchant
from gateway.domain.ids import new_id
from gateway.domain.models import (
    CreatePaymentRequest,
    CreateRefundRequest,
    CreateWebhookEndpointRequest,
    EmptyRequest,
    delivery_view,
    endpoint_view,
)
from gateway.errors import ApiError, FieldError
from gateway.services import idempotency
from gateway.store import webhooks as webhook_store

log = structlog.get_logger("api")

MAX_BODY = 64 * 1024
M = TypeVar("M", bound=BaseModel)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _field_message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "Unknown field."
    if error["type"] == "missing":
        return "This field is required."
    return str(error["msg"])


def parse_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            FieldError(".".join(str(p) for p in e["loc"]) or "body", _field_message(e))
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        raise ApiError(
            400, "invalid_request", f"The request is invalid: {summary}", errors
        ) from None


def _decode_json(request: web.Request, body: bytes) -> Any:
    if not body.strip():
        return {}
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "The body must be a JSON object.")
    if b"\\u0000" in body:  # PostgreSQL text cannot hold NUL: refuse it here, not with a 500
        where = _nul_field(data)
        if where is not None:
            raise ApiError(400, "invalid_request", NUL_REFUSED, [FieldError(where, NUL_REFUSED)])
    return data


NUL_REFUSED = "NUL characters (U+0000) are not accepted."


def _nul_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first key or string holding a NUL character, if any."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if not isinstance(value, dict | list):
        return None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        here = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return here
        found = _nul_field(item, here)
        if found is not None:
            return found
    return None


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "payload_too_large", "The body is larger than 64 KiB.")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "payload_too_large", "The body is larger than 64 KiB.") from None


Handler = Callable[[Services, AuthenticatedMerchant, web.Request, Any], Awaitable[web.Response]]


def merchant_endpoint(fn: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler with body limits, signature verification, JSON decoding and, for POSTs
    with an Idempotency-Key, the idempotency record."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        svc = services(request)
        body = await _read_body(request)
        merchant = await svc.authenticator.authenticate(
            request.method, request.raw_path, body, request.headers.get("Authorization")
        )
        structlog.contextvars.bind_contextvars(merchant_id=merchant.merchant_id)
        if "\x00" in request.path or any("\x00" in k + v for k, v in request.query.items()):
            raise ApiError(400, "invalid_request", NUL_REFUSED)
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or key is None:
            data = _decode_json(request, body) if request.method == "POST" else None
            return await fn(svc, merchant, request, data)
        idempotency.validate_key(key)
        replay = await idempotency.begin(
            svc.pool, merchant.merchant_id, key, request.method, request.raw_path, body
        )
        if replay is not None:
            content_type = (
                "application/problem+json" if replay.status >= 400 else "application/json"
            )
            return web.Response(
                status=replay.status,
                body=replay.body,
                content_type=content_type,
                headers={"Idempotent-Replayed": "true"},
            )
        try:
            try:
                async with idempotency.held(svc.pool, merchant.merchant_id, key):
                    response = await fn(svc, merchant, request, _decode_json(request, body))
            except ApiError as exc:
                response = problem_response(exc, request[REQUEST_ID])
        except BaseException:
            await idempotency.abandon(svc.pool, merchant.merchant_id, key)
            raise
        assert isinstance(response.body, bytes)
        await idempotency.finish(
            svc.pool, merchant.merchant_id, key, response.status, response.body
        )
        return response

    return wrapper


@merchant_endpoint
async def create_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    req = parse_model(CreatePaymentRequest, data)
    structlog.contextvars.bind_contextvars(merchant_order_id=req.merchant_order_id)
    outcome = await svc.payments.create(merchant.merchant_id, req)
    structlog.contextvars.bind_contextvars(payment_id=outcome.payment["id"])
    return json_response(outcome.payment, 201 if outcome.created else 200)


@merchant_endpoint
async def get_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    query = _query(request, {"sync"})
    sync = query.get("sync", "false")
    if sync not in ("true", "false"):
        raise ApiError(
            400,
            "invalid_request",
            "sync must be true or false.",
            [FieldError("sync", "true or false")],
        )
    payment_id = request.match_info["id"]
    if sync == "true":
        return json_response(await svc.payments.sync(merchant.merchant_id, payment_id))
    return json_response(await svc.payments.get(merchant.merchant_id, payment_id))


@merchant_endpoint
async def create_refund(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    req = parse_model(CreateRefundRequest, data)
    outcome = await svc.refunds.create(merchant.merchant_id, request.match_info["id"], req)
    return json_response(outcome.refund, 201 if outcome.created else 200)


@merchant_endpoint
async def get_refund(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    return json_response(await svc.refunds.get(merchant.merchant_id, request.match_info["id"]))


@merchant_endpoint
async def find_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    unknown = set(request.query) - {"merchant_order_id"}
    if unknown:
        raise ApiError(
            400,
            "invalid_request",
            f"Unknown query parameters: {', '.join(sorted(unknown))}.",
            [FieldError(name, "Unknown parameter.") for name in sorted(unknown)],
        )
    order_id = request.query.get("merchant_order_id")
    if not order_id:
        raise ApiError(
            400,
            "invalid_request",
            "merchant_order_id is required.",
            [FieldError("merchant_order_id", "This parameter is required.")],
        )
    return json_response(await svc.payments.get_by_order(merchant.merchant_id, order_id))


@merchant_endpoint
async def close_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    parse_model(EmptyRequest, data)
    return json_response(await svc.payments.close(merchant.merchant_id, request.match_info["id"]))


MAX_ENDPOINTS = 16
DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    unknown = set(request.query) - allowed
    if unknown:
        raise ApiError(
            400,
            "invalid_request",
            f"Unknown query parameters: {', '.join(sorted(unknown))}.",
            [FieldError(name, "Unknown parameter.") for name in sorted(unknown)],
        )
    return dict(request.query)


@merchant_endpoint
async def create_webhook_endpoint(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    req = parse_model(CreateWebhookEndpointRequest, data)
    async with svc.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant.merchant_id)
        if await webhook_store.count_endpoints(conn, merchant.merchant_id) >= MAX_ENDPOINTS:
            raise ApiError(
                409, "invalid_state", f"A merchant may subscribe at most {MAX_ENDPOINTS} endpoints."
            )
        row = await webhook_store.insert_endpoint(
            conn, new_id("we"), merchant.merchant_id, req.url, list(req.events)
        )
    return json_response(endpoint_view(row), 201)


@merchant_endpoint
async def list_webhook_endpoints(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    _query(request, set())
    rows = await webhook_store.list_endpoints(svc.pool, merchant.merchant_id)
    return json_response({"data": [endpoint_view(r) for r in rows], "has_more": False})


@merchant_endpoint
async def delete_webhook_endpoint(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    row = await webhook_store.delete_endpoint(
        svc.pool, merchant.merchant_id, request.match_info["id"]
    )
    if row is None:
        raise ApiError(404, "not_found", "No such webhook endpoint.")
    return json_response(endpoint_view(row))


@merchant_endpoint
async def list_webhook_deliveries(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    query = _query(request, {"status", "event_id", "limit", "starting_after"})
    status = query.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise ApiError(
            400,
            "invalid_request",
            f"status must be one of {', '.join(DELIVERY_STATUSES)}.",
            [FieldError("status", "Unknown status.")],
        )
    try:
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        raise ApiError(
            400, "invalid_request", "limit must be 1 to 100.", [FieldError("limit", "1 to 100.")]
        ) from None
    rows = await webhook_store.list_deliveries(
        svc.pool,
        merchant.merchant_id,
        status,
        query.get("event_id"),
        limit + 1,
        query.get("starting_after"),
    )
    return json_response(
        {"data": [delivery_view(r) for r in rows[:limit]], "has_more": len(rows) > limit}
    )


@merchant_endpoint
async def retry_webhook_delivery(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: Any
) -> web.Response:
    parse_model(EmptyRequest, data)
    previous, row = await webhook_store.retry_delivery(
        svc.pool, merchant.merchant_id, request.match_info["id"]
    )
    if previous is None:
        raise ApiError(404, "not_found", "No such webhook delivery.")
    if row is None:
        raise ApiError(
            409, "invalid_state", f"Only failed deliveries can be retried (this one is {previous})."
        )
    return json_response(
        {
            "id": row["id"],
            "object": "webhook_delivery",
            "status": "pending",
            "event_id": row["event_id"],
        },
        202,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/payments", create_payment)
    app.router.add_get("/v1/payments", find_payment)
    app.router.add_get("/v1/payments/{id}", get_payment)
    app.router.add_post("/v1/payments/{id}/close", close_payment)
    app.router.add_post("/v1/payments/{id}/refunds", create_refund)
    app.router.add_get("/v1/refunds/{id}", get_refund)
    app.router.add_post("/v1/webhook-endpoints", create_webhook_endpoint)
    app.router.add_get("/v1/webhook-endpoints", list_webhook_endpoints)
    app.router.add_delete("/v1/webhook-endpoints/{id}", delete_webhook_endpoint)
    app.router.add_get("/v1/webhook-deliveries", list_webhook_deliveries)
    app.router.add_post("/v1/webhook-deliveries/{id}/retry", retry_webhook_delivery)
