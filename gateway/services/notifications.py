"""Channel notifications (`POST /notify/{channel}`) once their adapter has verified them: applied
by the payment or refund service, exactly once however often they come; the ones that could not
be applied (forged, an order we do not know) are kept for operators."""

from __future__ import annotations

import structlog

from adapters.base import Notification, NotificationKind
from gateway.domain.states import NotificationOutcome
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.store import payments as payment_store
from gateway.store.db import Pool

log = structlog.get_logger("notify")


class NotificationService:
    def __init__(self, pool: Pool, payments: PaymentService, refunds: RefundService) -> None:
        self.pool = pool
        self.payments = payments
        self.refunds = refunds

    async def apply(self, channel: str, notification: Notification) -> bool:
        """Apply a verified notification; False when it concerns an order (or refund) we do
        not know, which the channel will be asked to send again."""
        if notification.kind is NotificationKind.REFUND and notification.channel_refund_id:
            refund = await self.refunds.apply_result(
                channel, notification.channel_refund_id, notification.result
            )
            return refund is not None
        return await self.payments.apply_notification(channel, notification)

    async def record_unapplied(
        self,
        channel: str,
        channel_order_id: str | None,
        kind: NotificationKind | None,
        outcome: NotificationOutcome,
    ) -> None:
        """Keep a notification that was not applied; the applied ones are recorded by the state
        change they cause. Best effort: a failure here must not change the channel's answer."""
        try:
            await payment_store.record_notification(
                self.pool, channel, channel_order_id, kind, outcome, applied=False
            )
        except Exception as exc:
            log.warning("notification_audit_failed", error=repr(exc))
