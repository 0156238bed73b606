"""The operators' API (`/admin/…`, bearer `GATEWAY_ADMIN_TOKEN`): the routing rules in force,
their version and last reload error, and a reload; each channel's health, and closing a
channel's circuit by hand; the day's settlement."""

from __future__ import annotations

import hmac
import time
from datetime import date

from aiohttp import web

from gateway.api.context import Services, services
from gateway.api.merchant import json_response
from gateway.domain.errors import InvalidRequest, NotFound, Unauthorized
from gateway.domain.models import rfc3339
from gateway.reconcile.service import settlement_summary
from routing.health import effective_state


def _authorize(request: web.Request) -> Services:
    svc = services(request)
    token = svc.settings.admin_token
    if token is None:
        raise Unauthorized("The admin API is off: set GATEWAY_ADMIN_TOKEN.")
    header = request.headers.get("Authorization", "")
    presented = header.removeprefix("Bearer ").encode()
    if not header.startswith("Bearer ") or not hmac.compare_digest(
        presented, token.get_secret_value().encode()
    ):
        raise Unauthorized("A valid operator token is required.", challenge="Bearer")
    return svc


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


async def routing_view(request: web.Request) -> web.Response:
    svc = _authorize(request)
    holder = svc.channels.holder
    loaded = holder.current
    return json_response(
        {
            "version": loaded.version,
            "path": str(loaded.path),
            "rules": [r.name for r in loaded.config.rules] + ["default"],
            "channels": sorted(loaded.config.channels),
            "max_attempts": loaded.config.settings.max_attempts,
            "stale": holder.stale,
            "last_reload_error": holder.last_error,
            "last_reload_error_at": (
                rfc3339(holder.last_error_at) if holder.last_error_at else None
            ),
            "reload_failures": holder.reload_failures,
            "health": await _channel_health(svc),
        }
    )


async def channel_health(request: web.Request) -> web.Response:
    svc = _authorize(request)
    return json_response({"data": await _channel_health(svc), "has_more": False})


async def reload_routing(request: web.Request) -> web.Response:
    svc = _authorize(request)
    changed = svc.channels.reload()
    holder = svc.channels.holder
    return json_response(
        {
            "changed": changed,
            "version": holder.current.version,
            "stale": holder.stale,
            "last_reload_error": holder.last_error,
        }
    )


async def reset_channel(request: web.Request) -> web.Response:
    """Close a channel's circuit by hand (an operator who knows it has recovered)."""
    svc = _authorize(request)
    name = request.match_info["channel"]
    if name not in svc.channels.routing.config.channels:
        raise NotFound(f"No channel {name!r} in the rules in force.")
    await svc.channels.health.reset(name)
    return json_response({"channel": name, "circuit": "closed"})


async def settlement(request: web.Request) -> web.Response:
    """The day's settlement per merchant and channel (`?date=YYYY-MM-DD`, China date)."""
    svc = _authorize(request)
    raw = request.query.get("date", "")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest.field(
            "date", "A date as YYYY-MM-DD is required.", "date must be YYYY-MM-DD."
        ) from None
    return json_response(await settlement_summary(svc.pool, day, svc.channels.routing))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/routing", routing_view)
    app.router.add_post("/admin/routing/reload", reload_routing)
    app.router.add_get("/admin/channels", channel_health)
    app.router.add_post("/admin/channels/{channel}/reset", reset_channel)
    app.router.add_get("/admin/settlement", settlement)
