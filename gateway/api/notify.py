"""`POST /notify/{channel}`: channel notifications, verified by the channel's adapter, applied
once, and answered in the channel's own acknowledgement format."""

from __future__ import annotations

import structlog
from aiohttp import web

from adapters.base import Ack, IncomingRequest, NotificationRejected
from gateway import metrics
from gateway.api.context import services
from gateway.domain.states import NotificationOutcome

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
        await svc.notifications.record_unapplied(channel, None, None, NotificationOutcome.REJECTED)
        return _ack_response(adapter.ack(False))
    structlog.contextvars.bind_contextvars(
        channel=channel, channel_order_id=notification.channel_order_id
    )
    try:
        applied = await svc.notifications.apply(channel, notification)
    except Exception:
        # not applied: answer so that the channel sends it again
        log.exception("notification_apply_failed", channel=channel)
        metrics.NOTIFICATIONS.labels(channel=channel, result="error").inc()
        return _ack_response(adapter.ack(False))
    if not applied:
        log.warning("notification_for_unknown_order", channel=channel)
        metrics.NOTIFICATIONS.labels(channel=channel, result="unknown_order").inc()
        await svc.notifications.record_unapplied(
            channel,
            notification.channel_order_id,
            notification.kind,
            NotificationOutcome.UNKNOWN_ORDER,
        )
        return _ack_response(adapter.ack(False))
    metrics.NOTIFICATIONS.labels(channel=channel, result="applied").inc()
    return _ack_response(adapter.ack(True))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/notify/{channel}", channel_notification)
