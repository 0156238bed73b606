"""`POST /notify/{channel}`: channel notifications, verified by the channel's adapter, applied
once, and answered in the channel's own acknowledgement format: accepted when applied (or a
repeat of one applied before), refused — so that the channel sends it again — when it did not
verify, concerns an order we do not know, or reports a success whose amount or currency is not
ours (API.md §3). The refused ones are counted for operators."""

from __future__ import annotations

import structlog
from aiohttp import web

from adapters.base import Ack, IncomingRequest, NotificationRejected
from gateway import metrics
from gateway.api.context import SERVICES, services
from gateway.domain.states import NotificationOutcome, ResultVerdict

log = structlog.get_logger("notify")


def _ack_response(ack: Ack) -> web.Response:
    return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)


async def channel_notification(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    channel = request.match_info["channel"]
    adapter = svc.channels.adapter(channel)
    if adapter is None:
        raise web.HTTPNotFound()
    body = await request.read()
    incoming = IncomingRequest(
        method=request.method,
        path=request.raw_path,
        headers={k: v for k, v in request.headers.items()},
        body=body,
        content_type=request.content_type,
    )
    try:
        notification = adapter.parse_notification(incoming)
    except NotificationRejected as exc:
        log.warning("notification_rejected", channel=channel, reason=str(exc))
        metrics.NOTIFICATIONS.labels(channel=channel, result="rejected").inc()
        svc.notifications.record_unapplied(channel, None, NotificationOutcome.REJECTED)
        return _ack_response(adapter.ack(False))
    structlog.contextvars.bind_contextvars(
        channel=channel, channel_order_id=notification.channel_order_id
    )
    try:
        verdict = await svc.notifications.apply(channel, notification)
    except Exception:
        # not applied: answer so that the channel sends it again
        log.exception("notification_apply_failed", channel=channel)
        metrics.NOTIFICATIONS.labels(channel=channel, result="error").inc()
        return _ack_response(adapter.ack(False))
    if verdict is None:
        log.warning("notification_for_unknown_order", channel=channel)
        metrics.NOTIFICATIONS.labels(channel=channel, result="unknown_order").inc()
        svc.notifications.record_unapplied(
            channel, notification.channel_order_id, NotificationOutcome.UNKNOWN_ORDER
        )
        return _ack_response(adapter.ack(False))
    if verdict is ResultVerdict.REFUSED:  # logged and alerted by the service that refused it
        metrics.NOTIFICATIONS.labels(channel=channel, result="amount_mismatch").inc()
        svc.notifications.record_unapplied(
            channel, notification.channel_order_id, NotificationOutcome.AMOUNT_MISMATCH
        )
        return _ack_response(adapter.ack(False))
    if verdict is ResultVerdict.REPEATED:
        log.info(
            "notification_repeated", channel=channel, notification_id=notification.notification_id
        )
    metrics.NOTIFICATIONS.labels(channel=channel, result=verdict.value).inc()
    return _ack_response(adapter.ack(True))


async def _write_notification_counts(app: web.Application) -> None:
    """On shutdown, before the database pool closes: the counts still in memory."""
    svc = app.get(SERVICES)
    if svc is not None:
        await svc.notifications.audit.aclose()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/notify/{channel}", channel_notification)
    app.on_shutdown.append(_write_notification_counts)
