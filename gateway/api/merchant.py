"""The merchant API (`/v1`): signed JSON requests, idempotent POSTs. Handlers only parse, call a
service and render its records as the API's objects (`gateway.domain.models`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.api.context import Services, services
from gateway.api.middleware import REQUEST_ID
from gateway.api.problems import budget_headers, error_response
from gateway.auth.authenticator import AuthenticatedMerchant
from gateway.auth.budgets import RequestClass
from gateway.domain.errors import (
    FieldError,
    GatewayError,
    InvalidRequest,
    MalformedJson,
    MerchantNotActive,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from gateway.domain.models import (
    DESTINATIONS,
    CreatePaymentRequest,
    CreateRefundRequest,
    CreateWebhookEndpointRequest,
    EmptyRequest,
    PaymentObject,
    QueuedDeliveryObject,
    RefundObject,
    WebhookDeliveryList,
    WebhookDeliveryObject,
    WebhookEndpointList,
    WebhookEndpointObject,
)
from gateway.domain.states import DeliveryStatus, MerchantStatus
from gateway.services import idempotency

log = structlog.get_logger("api")

MAX_BODY = 64 * 1024
M = TypeVar("M", bound=BaseModel)

JsonBody = dict[str, Any] | None
"""A request's decoded JSON object (None for a GET)."""


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def object_response(obj: BaseModel, status: int = 200) -> web.Response:
    """One of the API's objects (`gateway.domain.models`), as the OpenAPI document says."""
    body = obj.__pydantic_serializer__.to_json(obj)
    return web.Response(body=body, status=status, content_type="application/json")


def _field_message(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "Unknown field."
    if error["type"] == "missing":
        return "This field is required."
    return str(error["msg"])


def parse_model(model: type[M], data: JsonBody, context: dict[str, Any] | None = None) -> M:
    """The request body as `model`; `context` reaches its validators (see `DESTINATIONS`)."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = [
            FieldError(".".join(str(p) for p in e["loc"]) or "body", _field_message(e))
            for e in exc.errors()
        ]
        summary = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        raise InvalidRequest(f"The request is invalid: {summary}", errors) from None


def _decode_json(request: web.Request, body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"The body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedJson("The body must be a JSON object.")
    if b"\\u0000" in body:  # PostgreSQL text cannot hold NUL: refuse it here, not with a 500
        where = _nul_field(data)
        if where is not None:
            raise InvalidRequest.field(where, NUL_REFUSED)
    return data


NUL_REFUSED = "NUL characters (U+0000) are not accepted."


def _nul_field(value: object, path: str = "") -> str | None:
    """The dotted path of the first key or string holding a NUL character, if any."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if not isinstance(value, dict | list):
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
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
        raise PayloadTooLarge("The body is larger than 64 KiB.")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("The body is larger than 64 KiB.") from None


Handler = Callable[
    [Services, AuthenticatedMerchant, web.Request, JsonBody], Awaitable[web.Response]
]
Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]

SAFE_METHODS = frozenset({"GET", "HEAD"})
"""What a merchant that is not active may still do (API.md §1.4: its GETs keep working)."""


def merchant_endpoint(
    request_class: RequestClass = RequestClass.OTHER,
) -> Callable[[Handler], Endpoint]:
    """Wrap a handler with body limits, signature verification and the merchant's budget for
    `request_class`, the merchant's status (only an active merchant may do more than read), JSON
    decoding and, for POSTs with an Idempotency-Key, the idempotency record. Every answer to an
    authenticated request carries its budget's RateLimit-* headers."""

    def decorate(fn: Handler) -> Endpoint:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            svc = services(request)
            body = await _read_body(request)
            merchant = await svc.authenticator.authenticate(
                request.method,
                request.raw_path,
                body,
                request.headers.get("Authorization"),
                source=source_address(request, svc.settings.trusted_proxies),
                request_class=request_class,
            )
            structlog.contextvars.bind_contextvars(merchant_id=merchant.merchant_id)
            try:
                response = await _authenticated(svc, merchant, request, body, fn)
            except GatewayError as exc:
                response = error_response(exc, request[REQUEST_ID])
            if merchant.budget is not None:
                response.headers.update(budget_headers(merchant.budget))
            return response

        return wrapper

    return decorate


async def _authenticated(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, body: bytes, fn: Handler
) -> web.Response:
    if request.method not in SAFE_METHODS and merchant.status is not MerchantStatus.ACTIVE:
        raise MerchantNotActive(merchant.status.value)
    if "\x00" in request.path or any("\x00" in k + v for k, v in request.query.items()):
        raise InvalidRequest(NUL_REFUSED)
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or key is None:
        data = _decode_json(request, body) if request.method == "POST" else None
        return await fn(svc, merchant, request, data)
    idempotency.validate_key(key)
    keys = svc.idempotency
    replay = await keys.begin(merchant.merchant_id, key, request.method, request.raw_path, body)
    if replay is not None:
        content_type = "application/problem+json" if replay.status >= 400 else "application/json"
        return web.Response(
            status=replay.status,
            body=replay.body,
            content_type=content_type,
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        try:
            async with keys.held(merchant.merchant_id, key):
                response = await fn(svc, merchant, request, _decode_json(request, body))
        except GatewayError as exc:
            response = error_response(exc, request[REQUEST_ID])
    except BaseException:
        await keys.abandon(merchant.merchant_id, key)
        raise
    assert isinstance(response.body, bytes)
    await keys.finish(merchant.merchant_id, key, response.status, response.body)
    return response


def source_address(request: web.Request, trusted: Sequence[IPv4Network | IPv6Network]) -> str:
    """Where a request comes from, for the budget of failed authentications: the peer's
    address, or, when the peer is a trusted proxy, the last address of X-Forwarded-For that is
    not a trusted proxy's (those before it are the client's to write). An IPv6 address counts
    as its /64, which one host usually holds whole."""
    hops = [request.remote or ""]
    if trusted:
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()] + hops
    for hop in reversed(hops):
        try:
            address = ip_address(hop)
        except ValueError:
            return hop[:64]  # not an address (a unix socket's peer): counted as it is
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not any(address in network for network in trusted):
            if isinstance(address, IPv6Address):
                return str(ip_network(f"{address}/64", strict=False))
            return str(address)
    return hops[0][:64]


@merchant_endpoint(RequestClass.PAYMENTS)
async def create_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    req = parse_model(CreatePaymentRequest, data, {DESTINATIONS: svc.dispatcher.destinations})
    structlog.contextvars.bind_contextvars(merchant_order_id=req.merchant_order_id)
    outcome = await svc.payments.create(merchant.merchant_id, req)
    structlog.contextvars.bind_contextvars(payment_id=outcome.payment.id)
    return object_response(PaymentObject.of(outcome.payment), 201 if outcome.created else 200)


@merchant_endpoint()
async def get_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    query = _query(request, {"sync"})
    sync = query.get("sync", "false")
    if sync not in ("true", "false"):
        raise InvalidRequest.field("sync", "true or false", "sync must be true or false.")
    payment_id = request.match_info["id"]
    if sync == "true":
        payment = await svc.payments.sync(merchant.merchant_id, payment_id)
    else:
        payment = await svc.payments.get(merchant.merchant_id, payment_id)
    return object_response(PaymentObject.of(payment))


@merchant_endpoint(RequestClass.REFUNDS)
async def create_refund(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    req = parse_model(CreateRefundRequest, data)
    outcome = await svc.refunds.create(merchant.merchant_id, request.match_info["id"], req)
    return object_response(RefundObject.of(outcome.refund), 201 if outcome.created else 200)


@merchant_endpoint()
async def get_refund(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    refund = await svc.refunds.get(merchant.merchant_id, request.match_info["id"])
    return object_response(RefundObject.of(refund))


@merchant_endpoint()
async def find_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    query = _query(request, {"merchant_order_id"})
    order_id = query.get("merchant_order_id")
    if not order_id:
        raise InvalidRequest.field(
            "merchant_order_id", "This parameter is required.", "merchant_order_id is required."
        )
    payment = await svc.payments.get_by_order(merchant.merchant_id, order_id)
    return object_response(PaymentObject.of(payment))


@merchant_endpoint()
async def close_payment(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    parse_model(EmptyRequest, data)
    payment = await svc.payments.close(merchant.merchant_id, request.match_info["id"])
    return object_response(PaymentObject.of(payment))


DELIVERY_STATUSES = ("pending", "succeeded", "failed")


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    unknown = set(request.query) - allowed
    if unknown:
        raise InvalidRequest(
            f"Unknown query parameters: {', '.join(sorted(unknown))}.",
            [FieldError(name, "Unknown parameter.") for name in sorted(unknown)],
        )
    return dict(request.query)


@merchant_endpoint()
async def create_webhook_endpoint(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    req = parse_model(
        CreateWebhookEndpointRequest, data, {DESTINATIONS: svc.dispatcher.destinations}
    )
    endpoint = await svc.webhooks.create_endpoint(merchant.merchant_id, req.url, req.events)
    return object_response(WebhookEndpointObject.of(endpoint), 201)


@merchant_endpoint()
async def list_webhook_endpoints(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    _query(request, set())
    endpoints = await svc.webhooks.list_endpoints(merchant.merchant_id)
    return object_response(
        WebhookEndpointList(data=[WebhookEndpointObject.of(e) for e in endpoints], has_more=False)
    )


@merchant_endpoint()
async def delete_webhook_endpoint(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    endpoint = await svc.webhooks.delete_endpoint(merchant.merchant_id, request.match_info["id"])
    return object_response(WebhookEndpointObject.of(endpoint))


@merchant_endpoint()
async def list_webhook_deliveries(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    query = _query(request, {"status", "event_id", "limit", "starting_after"})
    status = query.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidRequest.field(
            "status", "Unknown status.", f"status must be one of {', '.join(DELIVERY_STATUSES)}."
        )
    try:
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        raise InvalidRequest.field("limit", "1 to 100.", "limit must be 1 to 100.") from None
    page = await svc.webhooks.list_deliveries(
        merchant.merchant_id,
        status=None if status is None else DeliveryStatus(status),
        event_id=query.get("event_id"),
        limit=limit,
        starting_after=query.get("starting_after"),
    )
    return object_response(
        WebhookDeliveryList(
            data=[WebhookDeliveryObject.of(d) for d in page.deliveries], has_more=page.has_more
        )
    )


@merchant_endpoint()
async def retry_webhook_delivery(
    svc: Services, merchant: AuthenticatedMerchant, request: web.Request, data: JsonBody
) -> web.Response:
    parse_model(EmptyRequest, data)
    queued = await svc.webhooks.retry_delivery(merchant.merchant_id, request.match_info["id"])
    return object_response(QueuedDeliveryObject.of(queued), 202)


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
