"""The operators' API (`/admin/…`, JSON): payments, refunds, merchants, deliveries,
reconciliation runs, channels, routing, settlement and the audit log (API.md §4.1).

Every endpoint is one row of `ROUTES` and names its permission (`gateway.domain.permissions`,
the one table of who may do what). Each request is authenticated first — `Authorization:
Bearer <token>` (an operator token, or GATEWAY_ADMIN_TOKEN) or a console session — and 401
`unauthenticated` without a live identity; then 403 `forbidden` for a role below the
permission's, or for a change made with a session but without its CSRF token
(`X-CSRF-Token`). Changes are audited as the identity, with its source address and the
request id. Lists are `{"data": [...], "has_more": bool}`, newest first, paged by `limit` (1 to
100, default 50) and `starting_after` (the last id of the previous page)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel

from gateway.api.context import Services, services
from gateway.api.merchant import _decode_json, _query, _read_body, json_response, parse_model
from gateway.api.middleware import (
    CSRF_HEADER,
    REQUEST_ID,
    OperatorRequest,
    operator_identity,
    source_ip,
)
from gateway.domain import admin_views
from gateway.domain.admin_views import ReasonRequest, RotateKeyRequest
from gateway.domain.audit import AuditEntry
from gateway.domain.errors import Forbidden, InvalidRequest, Unauthenticated
from gateway.domain.models import EmptyRequest, rfc3339
from gateway.domain.permissions import Permission, least_role
from gateway.domain.records import KeyType
from gateway.domain.states import DeliveryStatus, PaymentStatus, RefundStatus, RunStatus
from gateway.reconcile.service import settlement_summary
from gateway.services import audit
from gateway.services.admin import Page
from gateway.services.audit import Actor
from gateway.services.operators import OperatorService
from routing.health import effective_state

log = structlog.get_logger("admin")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
PAGING = frozenset({"limit", "starting_after"})
E = TypeVar("E", bound=StrEnum)
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """What a handler gets: the request, the services, and who is asking."""

    request: web.Request
    svc: Services
    who: OperatorRequest

    @property
    def actor(self) -> Actor:
        """The identity as the audit log names it."""
        return Actor.of(self.who.identity, source_ip(self.request), self.request[REQUEST_ID])

    def query(self, allowed: frozenset[str] = frozenset()) -> dict[str, str]:
        """The query parameters; 400 for one not in `allowed`."""
        return _query(self.request, set(allowed))

    async def body(self, model: type[M]) -> M:
        return parse_model(model, _decode_json(self.request, await _read_body(self.request)))

    def match(self, name: str) -> str:
        return self.request.match_info[name]


AdminHandler = Callable[[AdminRequest], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True)
class AdminRoute:
    method: str
    path: str
    permission: Permission
    handler: AdminHandler


def _guard(route: AdminRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        who = await operator_identity(request)
        if who is None:
            raise Unauthenticated(
                "An operator token (Authorization: Bearer …) or a console session is required.",
                challenge="Bearer",
            )
        structlog.contextvars.bind_contextvars(operator=who.identity.actor)
        if (
            who.session is not None
            and request.method not in SAFE_METHODS
            and not OperatorService.csrf_matches(who.session, request.headers.get(CSRF_HEADER))
        ):
            raise Forbidden(f"A change made with a console session needs its {CSRF_HEADER}.")
        if not who.identity.may(route.permission):
            raise Forbidden(
                f"This needs the {least_role(route.permission).value} role"
                f" ({route.permission.value}); {who.identity.actor} is"
                f" {who.identity.role.value}."
            )
        return await route.handler(AdminRequest(request, services(request), who))

    return handle


# ---- query parameters -----------------------------------------------------------------------


def _limit(query: dict[str, str]) -> int:
    try:
        limit = int(query.get("limit", str(DEFAULT_LIMIT)))
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        raise InvalidRequest.field(
            "limit", f"1 to {MAX_LIMIT}.", f"limit must be 1 to {MAX_LIMIT}."
        ) from None
    return limit


def _enum(query: dict[str, str], name: str, kind: type[E]) -> E | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        known = ", ".join(k.value for k in kind)
        raise InvalidRequest.field(
            name, f"One of {known}.", f"{name} must be one of {known}."
        ) from None


def _moment(query: dict[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
        if moment.tzinfo is None:
            raise ValueError
    except ValueError:
        raise InvalidRequest.field(
            name,
            "An RFC 3339 time with its offset (2025-03-01T08:00:00Z).",
            f"{name} must be an RFC 3339 time with its offset.",
        ) from None
    return moment


def _day(query: dict[str, str], name: str, required: bool = False) -> date | None:
    raw = query.get(name)
    if raw is None and not required:
        return None
    try:
        return date.fromisoformat(raw or "")
    except ValueError:
        raise InvalidRequest.field(
            name, "A date as YYYY-MM-DD is required.", f"{name} must be YYYY-MM-DD."
        ) from None


def _int(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest.field(name, "An integer.", f"{name} must be an integer.") from None


def _list(page: Page[Any], render: Callable[[Any], dict[str, Any]]) -> web.Response:
    return json_response({"data": [render(item) for item in page.items], "has_more": page.has_more})


# ---- payments -------------------------------------------------------------------------------


async def list_payments(r: AdminRequest) -> web.Response:
    query = r.query(PAGING | {"merchant_id", "status", "channel", "created_from", "created_to"})
    page = await r.svc.admin.list_payments(
        merchant_id=query.get("merchant_id"),
        status=_enum(query, "status", PaymentStatus),
        channel=query.get("channel"),
        created_from=_moment(query, "created_from"),
        created_to=_moment(query, "created_to"),
        limit=_limit(query),
        starting_after=query.get("starting_after"),
    )
    return _list(page, admin_views.payment_view)


async def get_payment(r: AdminRequest) -> web.Response:
    r.query()
    return json_response(await r.svc.admin.payment_detail(r.match("id")))


async def list_refunds(r: AdminRequest) -> web.Response:
    query = r.query(PAGING | {"status", "merchant_id", "payment_id"})
    page = await r.svc.admin.list_refunds(
        status=_enum(query, "status", RefundStatus),
        merchant_id=query.get("merchant_id"),
        payment_id=query.get("payment_id"),
        limit=_limit(query),
        starting_after=query.get("starting_after"),
    )
    return _list(page, admin_views.refund_view)


# ---- deliveries -----------------------------------------------------------------------------


async def list_deliveries(r: AdminRequest) -> web.Response:
    query = r.query(PAGING | {"status", "merchant_id", "event_id"})
    page = await r.svc.admin.list_deliveries(
        status=_enum(query, "status", DeliveryStatus),
        merchant_id=query.get("merchant_id"),
        event_id=query.get("event_id"),
        limit=_limit(query),
        starting_after=query.get("starting_after"),
    )
    return _list(page, admin_views.delivery_view)


async def retry_delivery(r: AdminRequest) -> web.Response:
    await r.body(EmptyRequest)
    queued = await r.svc.admin.retry_delivery(r.match("id"), r.actor)
    return json_response({"id": queued.id, "event_id": queued.event_id, "status": "pending"}, 202)


# ---- merchants ------------------------------------------------------------------------------


async def list_merchants(r: AdminRequest) -> web.Response:
    query = r.query(PAGING)
    page = await r.svc.admin.list_merchants(_limit(query), query.get("starting_after"))
    return _list(page, admin_views.merchant_view)


async def get_merchant(r: AdminRequest) -> web.Response:
    r.query()
    return json_response(await r.svc.admin.merchant_detail(r.match("id")))


async def rotate_merchant_key(r: AdminRequest) -> web.Response:
    """A second active key; the answer holds its secret (hmac-sha256), shown only here."""
    body = await r.body(RotateKeyRequest)
    issued = await r.svc.admin.rotate_merchant_key(
        r.match("id"), KeyType(body.key_type), body.public_key, r.actor
    )
    return json_response(issued.as_dict(), 201)


async def revoke_merchant_key(r: AdminRequest) -> web.Response:
    body = await r.body(ReasonRequest)
    merchant_id, key_id = r.match("id"), r.match("key_id")
    await r.svc.admin.revoke_merchant_key(merchant_id, key_id, r.actor, body.reason)
    return json_response({"merchant_id": merchant_id, "key_id": key_id, "status": "revoked"})


# ---- reconciliation -------------------------------------------------------------------------


async def list_runs(r: AdminRequest) -> web.Response:
    query = r.query(PAGING | {"channel", "date", "status"})
    page = await r.svc.admin.list_runs(
        channel=query.get("channel"),
        day=_day(query, "date"),
        status=_enum(query, "status", RunStatus),
        limit=_limit(query),
        starting_after=query.get("starting_after"),
    )
    return _list(page, admin_views.run_view)


async def get_run(r: AdminRequest) -> web.Response:
    """A run with a page of its discrepancies (`limit`, and `starting_after`: a line's seq)."""
    query = r.query(PAGING)
    detail = await r.svc.admin.run_detail(
        r.match("id"), _limit(query), _int(query, "starting_after")
    )
    lines = detail.discrepancies
    return json_response(
        {
            **admin_views.run_view(detail.run),
            "discrepancies": {
                "data": [admin_views.line_view(line) for line in lines.items],
                "has_more": lines.has_more,
            },
        }
    )


# ---- channels, routing, settlement ----------------------------------------------------------


async def _channel_health(svc: Services) -> dict[str, dict[str, object]]:
    loaded = svc.channels.routing
    names = list(loaded.config.channels)
    health, stats = await svc.channels.health.snapshot(names)
    now = time.time()
    breaker = loaded.config.settings.breaker
    out: dict[str, dict[str, object]] = {}
    for name in names:
        h = health.get(name)
        st = stats.get(name)
        calls, failures = h.totals(now) if h else (0, 0)
        out[name] = {
            "adapter": loaded.config.channels[name].adapter,
            "enabled": loaded.config.channels[name].enabled,
            "built": svc.channels.adapter(name) is not None,
            "circuit": effective_state(h, now, breaker).value if h else "closed",
            "consecutive_failures": h.consecutive_failures if h else 0,
            "window_calls": calls,
            "window_failures": failures,
            "success_rate_window": {
                "successes": st.successes if st else 0,
                "failures": st.failures if st else 0,
            },
        }
    return out


async def routing_view(r: AdminRequest) -> web.Response:
    r.query()
    holder = r.svc.channels.holder
    loaded = holder.current
    return json_response(
        {
            "version": loaded.version,
            "path": str(loaded.path),
            "rules": [rule.name for rule in loaded.config.rules] + ["default"],
            "channels": sorted(loaded.config.channels),
            "max_attempts": loaded.config.settings.max_attempts,
            "stale": holder.stale,
            "last_reload_error": holder.last_error,
            "last_reload_error_at": (
                rfc3339(holder.last_error_at) if holder.last_error_at else None
            ),
            "reload_failures": holder.reload_failures,
            "health": await _channel_health(r.svc),
        }
    )


async def channel_health(r: AdminRequest) -> web.Response:
    r.query()
    return json_response({"data": await _channel_health(r.svc), "has_more": False})


async def reload_routing(r: AdminRequest) -> web.Response:
    await r.body(EmptyRequest)
    changed = await r.svc.admin.reload_routing(r.actor)
    holder = r.svc.channels.holder
    return json_response(
        {
            "changed": changed,
            "version": holder.current.version,
            "stale": holder.stale,
            "last_reload_error": holder.last_error,
        }
    )


async def reset_channel(r: AdminRequest) -> web.Response:
    """Close a channel's circuit by hand (an operator who knows it has recovered)."""
    await r.body(EmptyRequest)
    name = r.match("channel")
    await r.svc.admin.reset_channel(name, r.actor)
    return json_response({"channel": name, "circuit": "closed"})


async def settlement(r: AdminRequest) -> web.Response:
    """The day's settlement per merchant and channel (`?date=YYYY-MM-DD`, China date)."""
    query = r.query(frozenset({"date"}))
    day = _day(query, "date", required=True)
    assert day is not None
    return json_response(await settlement_summary(r.svc.pool, day, r.svc.channels.routing))


# ---- the audit log --------------------------------------------------------------------------


async def list_audit(r: AdminRequest) -> web.Response:
    """Entries newest first: `actor`, `action` (a name, or a prefix ending in `.`), `target`,
    `from` and `to` (RFC 3339: `from` <= at < `to`)."""
    query = r.query(PAGING | {"actor", "action", "target", "from", "to"})
    page = await audit.list_entries(
        r.svc.pool,
        actor=query.get("actor"),
        action=query.get("action"),
        target=query.get("target"),
        at_from=_moment(query, "from"),
        at_to=_moment(query, "to"),
        limit=_limit(query),
        starting_after=_int(query, "starting_after"),
    )
    return _list(Page(page.entries, page.has_more), AuditEntry.as_dict)


# ---- the table ------------------------------------------------------------------------------

P = Permission
ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute("GET", "/admin/payments", P.PAYMENTS_READ, list_payments),
    AdminRoute("GET", "/admin/payments/{id}", P.PAYMENTS_READ, get_payment),
    AdminRoute("GET", "/admin/refunds", P.REFUNDS_READ, list_refunds),
    AdminRoute("GET", "/admin/deliveries", P.DELIVERIES_READ, list_deliveries),
    AdminRoute("POST", "/admin/deliveries/{id}/retry", P.DELIVERIES_RETRY, retry_delivery),
    AdminRoute("GET", "/admin/merchants", P.MERCHANTS_READ, list_merchants),
    AdminRoute("GET", "/admin/merchants/{id}", P.MERCHANTS_READ, get_merchant),
    AdminRoute("POST", "/admin/merchants/{id}/keys", P.MERCHANT_KEYS_MANAGE, rotate_merchant_key),
    AdminRoute(
        "POST",
        "/admin/merchants/{id}/keys/{key_id}/revoke",
        P.MERCHANT_KEYS_MANAGE,
        revoke_merchant_key,
    ),
    AdminRoute("GET", "/admin/reconciliation/runs", P.RECONCILIATION_READ, list_runs),
    AdminRoute("GET", "/admin/reconciliation/runs/{id}", P.RECONCILIATION_READ, get_run),
    AdminRoute("GET", "/admin/channels", P.CHANNELS_READ, channel_health),
    AdminRoute("POST", "/admin/channels/{channel}/reset", P.CHANNELS_RESET, reset_channel),
    AdminRoute("GET", "/admin/routing", P.ROUTING_READ, routing_view),
    AdminRoute("POST", "/admin/routing/reload", P.ROUTING_RELOAD, reload_routing),
    AdminRoute("GET", "/admin/settlement", P.SETTLEMENT_READ, settlement),
    AdminRoute("GET", "/admin/audit", P.AUDIT_READ, list_audit),
)
"""Every `/admin/…` endpoint and its permission (tests/integration/test_admin_permissions.py
checks each against every role, and that the application serves no other)."""


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _guard(route))
