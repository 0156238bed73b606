"""Channel notifications (`POST /notify/{channel}`) once their adapter has verified them: applied
by the payment or refund service, exactly once however often they come (each notification id
once); the ones that could not be applied (forged, stale, an order we do not know, a success
whose money is not ours) are counted for operators.

Those counts cost no database write per notification, so that a flood of forged ones is cheap:
they are kept in memory per channel, outcome and minute (with the first and last moment seen and
one order id they named), and added to `channel_notification_counts` in one statement a few
seconds after the first of a batch arrived, and when the gateway stops. Counts a process could
not write yet (the database is away) are kept for its next write; those of a process that is
killed are lost: a count of refusals, not of money."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from datetime import UTC, datetime

import structlog

from adapters.base import Notification, NotificationKind
from gateway.domain.records import NotificationCount
from gateway.domain.states import NotificationOutcome, ResultVerdict
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.store import payments as payment_store
from gateway.store.db import Pool

log = structlog.get_logger("notify")

AUDIT_FLUSH_S = 5.0
"""How long the counts of refused notifications gather in memory before they are written."""

_Bucket = tuple[str, NotificationOutcome, datetime]


class NotificationAudit:
    """The counts of one process's refused notifications, written in batches."""

    def __init__(self, pool: Pool, flush_after_s: float = AUDIT_FLUSH_S) -> None:
        self.pool = pool
        self.flush_after_s = flush_after_s
        self._counts: dict[_Bucket, NotificationCount] = {}
        self._flusher: asyncio.Task[None] | None = None

    def add(
        self,
        channel: str,
        outcome: NotificationOutcome,
        channel_order_id: str | None,
        at: datetime | None = None,
    ) -> None:
        """Count one notification (no I/O); a write follows within `flush_after_s`."""
        seen = at or datetime.now(UTC)
        minute = seen.replace(second=0, microsecond=0)
        key = (channel, outcome, minute)
        found = self._counts.get(key)
        if found is None:
            self._counts[key] = NotificationCount(
                channel, outcome, minute, 1, seen, seen, channel_order_id
            )
        else:
            self._counts[key] = replace(
                found,
                count=found.count + 1,
                first_seen=min(found.first_seen, seen),
                last_seen=max(found.last_seen, seen),
                sample_channel_order_id=found.sample_channel_order_id or channel_order_id,
            )
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later(), name="notification-audit")

    async def _flush_later(self) -> None:
        try:
            while self._counts:
                await asyncio.sleep(self.flush_after_s)
                await self.flush()
        finally:
            self._flusher = None

    async def flush(self) -> None:
        """Write what is counted, in one statement. On failure the counts are kept for the
        next write."""
        counts = list(self._counts.values())
        self._counts = {}
        if not counts:
            return
        try:
            await payment_store.add_notification_counts(self.pool, counts)
        except BaseException as exc:
            for count in counts:
                self._merge(count)
            if not isinstance(exc, Exception):
                raise
            log.warning("notification_audit_failed", error=repr(exc), buckets=len(counts))

    def _merge(self, count: NotificationCount) -> None:
        key = (count.channel, count.outcome, count.minute)
        found = self._counts.get(key)
        self._counts[key] = count if found is None else replace(
            count,
            count=count.count + found.count,
            first_seen=min(count.first_seen, found.first_seen),
            last_seen=max(count.last_seen, found.last_seen),
            sample_channel_order_id=count.sample_channel_order_id or found.sample_channel_order_id,
        )  # fmt: skip

    async def aclose(self) -> None:
        """Write what is counted now (the gateway is stopping)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()


class NotificationService:
    def __init__(self, pool: Pool, payments: PaymentService, refunds: RefundService) -> None:
        self.pool = pool
        self.payments = payments
        self.refunds = refunds
        self.audit = NotificationAudit(pool)

    async def apply(self, channel: str, notification: Notification) -> ResultVerdict | None:
        """Apply a verified notification: what became of it, or None when it concerns an order
        (or refund) we do not know, which the channel will be asked to send again."""
        if notification.kind is NotificationKind.REFUND and notification.channel_refund_id:
            applied = await self.refunds.apply_result(
                channel,
                notification.channel_refund_id,
                notification.result,
                notification_id=notification.notification_id,
            )
            return None if applied is None else applied.verdict
        return await self.payments.apply_notification(channel, notification)

    def record_unapplied(
        self, channel: str, channel_order_id: str | None, outcome: NotificationOutcome
    ) -> None:
        """Count a notification that was not applied, for operators (the applied ones are
        recorded by the state change they cause)."""
        self.audit.add(channel, outcome, channel_order_id)
