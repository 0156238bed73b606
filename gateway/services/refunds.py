"""Refunds (API.md §1.5): reserved under the payment's row lock, so that the sum of refunds that
have not failed never exceeds the payment's amount, also under concurrent requests; then sent to
the payment's channel; settled by the channel's answer, its notification or a later query.

Also the late payment: a channel that reports an order paid after the gateway closed (or failed)
its payment. It is recorded, alerted on, and refunded automatically when the operator says so
(`GATEWAY_LATE_PAYMENT_AUTO_REFUND`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from adapters.base import ChannelAdapter, ChannelResult, CreateRefund, Outcome
from gateway import logs, metrics, timing
from gateway.domain.errors import (
    ChannelUnavailable,
    DuplicateMerchantRefundId,
    InvalidState,
    NotFound,
    RefundExceedsAmount,
)
from gateway.domain.ids import new_id
from gateway.domain.models import CreateRefundRequest, RefundObject, event_body
from gateway.domain.records import Attempt, AttemptOutcome, Event, NewRefund, Payment, Refund
from gateway.domain.states import EVENT_FOR_REFUND_STATUS, PaymentStatus, RefundStatus, refund_can
from gateway.services.channels import ChannelRegistry
from gateway.store import payments as payment_store
from gateway.store import refunds as store
from gateway.store.db import Connection, Pool

log = structlog.get_logger("refunds")


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    refund: Refund
    created: bool
    """False when the merchant_refund_id was used before: `refund` is the one it made."""


def next_sync_at(schedule: tuple[float, ...], sync_count: int) -> datetime:
    delay = schedule[min(sync_count, len(schedule) - 1)]
    return datetime.now(UTC) + timedelta(seconds=delay)


class RefundService:
    def __init__(
        self,
        pool: Pool,
        channels: ChannelRegistry,
        public_url: str,
        sync_schedule: tuple[float, ...],
    ) -> None:
        self.pool = pool
        self.channels = channels
        self.public_url = public_url
        self.sync_schedule = sync_schedule

    async def create(
        self, merchant_id: str, payment_id: str, req: CreateRefundRequest
    ) -> RefundOutcome:
        async with self.pool.acquire() as conn, conn.transaction():
            payment = await payment_store.lock_payment(conn, payment_id)
            if payment is None or payment.merchant_id != merchant_id:
                raise NotFound.of("payment")
            existing = await store.get_by_merchant_refund_id(
                conn, payment_id, req.merchant_refund_id
            )
            if existing is not None:
                if existing.amount != req.amount:
                    raise DuplicateMerchantRefundId(req.merchant_refund_id, existing.id)
                return RefundOutcome(existing, created=False)
            if payment.status is not PaymentStatus.SUCCEEDED:
                raise InvalidState(
                    f"Only a succeeded payment can be refunded; this one is {payment.status}."
                )
            if req.amount > payment.refundable:
                committed = payment.amount - payment.refundable
                raise RefundExceedsAmount(
                    committed + req.amount, payment.amount, payment.refundable
                )
            attempt = await store.succeeded_attempt(conn, payment_id)
            assert attempt is not None, "a succeeded payment has a succeeded attempt"
            adapter = self.channels.adapter(attempt.channel)
            if adapter is None:
                raise ChannelUnavailable(
                    f"The payment's channel {attempt.channel} is not configured.",
                    retry_after_s=60,
                )
            refund = await reserve_refund(
                conn,
                payment,
                attempt,
                adapter,
                merchant_refund_id=req.merchant_refund_id,
                amount=req.amount,
                reason=req.reason,
                # should this process stop before the channel answers, the sync finds out
                first_sync_at=next_sync_at(self.sync_schedule, 0),
            )
        updated = await self.send(refund, payment.amount)
        return RefundOutcome(updated, created=True)

    async def send(self, refund: Refund, total_amount: int) -> Refund:
        """Send a pending refund to its channel and apply the answer. Safe to repeat: every
        channel keeps one refund per `channel_refund_id` and answers a repeat with it."""
        adapter = self.channels.adapter(refund.channel)
        if adapter is None:
            log.warning("refund_channel_missing", refund_id=refund.id, channel=refund.channel)
            return refund
        started = asyncio.get_running_loop().time()
        try:
            result = await adapter.refund(
                CreateRefund(
                    channel_order_id=refund.channel_order_id,
                    channel_refund_id=refund.channel_refund_id,
                    amount=refund.amount,
                    total_amount=total_amount,
                    currency=refund.currency,
                    notify_url=f"{self.public_url}/notify/{refund.channel}",
                    reason=refund.reason,
                )
            )
        except Exception as exc:  # the reservation stands; the sync will ask the channel
            log.exception("adapter_refund_crashed", refund_id=refund.id)
            result = ChannelResult(
                outcome=Outcome.UNKNOWN, channel_code="ADAPTER_ERROR", channel_message=repr(exc)
            )
        timing.add_channel_time(asyncio.get_running_loop().time() - started)
        metrics.CHANNEL_CALLS.labels(
            channel=refund.channel, operation="refund", outcome=result.outcome.value
        ).inc()
        updated = await self.apply_result(refund.channel, refund.channel_refund_id, result)
        return updated if updated is not None else refund

    async def apply_result(
        self, channel: str, channel_refund_id: str, result: ChannelResult
    ) -> Refund | None:
        """Apply what the channel says about a refund (its answer, a notification or a query),
        once, under the payment's row lock. Returns the refund, or None for a refund we do not
        know."""
        target = {Outcome.SUCCEEDED: RefundStatus.SUCCEEDED, Outcome.FAILED: RefundStatus.FAILED}
        async with self.pool.acquire() as conn, conn.transaction():
            refund = await store.get_by_channel_refund_id(conn, channel, channel_refund_id)
            if refund is None:
                return None
            if result.outcome not in target or not refund_can(
                refund.status, target[result.outcome]
            ):
                return refund
            payment = await payment_store.lock_payment(conn, refund.payment_id)
            assert payment is not None
            # re-read under the payment's lock: a concurrent path may have settled it
            refund = await store.get_by_channel_refund_id(conn, channel, channel_refund_id)
            assert refund is not None
            return await self._settle(conn, payment, refund, target[result.outcome], result)

    async def _settle(
        self,
        conn: Connection,
        payment: Payment,
        refund: Refund,
        target: RefundStatus,
        result: ChannelResult,
    ) -> Refund:
        if not refund_can(refund.status, target):
            return refund
        now = datetime.now(UTC)
        failure = None
        if target is RefundStatus.FAILED:
            failure = (
                result.channel_code or "refund_declined",
                result.channel_message or "The channel refused the refund.",
            )
        updated = await store.settle_refund(
            conn, refund, target, result.channel_trade_no, result.channel_code, failure
        )
        event_type = EVENT_FOR_REFUND_STATUS[target]
        event_id = new_id("evt")
        await payment_store.insert_event(
            conn,
            Event(
                id=event_id,
                merchant_id=refund.merchant_id,
                type=event_type,
                payment_id=refund.payment_id,
                refund_id=refund.id,
                payload=event_body(event_id, event_type, now, RefundObject.of(updated)),
                created_at=now,
                request_id=logs.current_request_id(),
            ),
            notify_url=payment.notify_url,
        )
        log.info(
            "refund_settled",
            refund_id=refund.id,
            payment_id=refund.payment_id,
            status=target.value,
            channel_code=result.channel_code,
        )
        return updated

    async def get(self, merchant_id: str, refund_id: str) -> Refund:
        refund = await store.get_refund(self.pool, merchant_id, refund_id)
        if refund is None:
            raise NotFound.of("refund")
        return refund


async def reserve_refund(
    conn: Connection,
    payment: Payment,
    attempt: Attempt,
    adapter: ChannelAdapter,
    *,
    merchant_refund_id: str,
    amount: int,
    reason: str | None,
    first_sync_at: datetime,
) -> Refund:
    """Insert a pending refund of one attempt and reserve its amount on the payment. The
    caller holds the payment's row lock and has checked that the amount is available."""
    refund_id = new_id("re")
    return await store.insert_refund(
        conn,
        NewRefund(
            id=refund_id,
            payment_id=payment.id,
            merchant_id=payment.merchant_id,
            merchant_refund_id=merchant_refund_id,
            amount=amount,
            currency=payment.currency,
            reason=reason,
            channel=attempt.channel,
            channel_order_id=attempt.channel_order_id,
            channel_refund_id=adapter.channel_refund_id(refund_id),
            next_sync_at=first_sync_at,
        ),
    )


LATE_REFUND_REASON = "Paid after the payment was closed"


async def record_late_payment(
    conn: Connection,
    payment: Payment,
    attempt: Attempt,
    result: ChannelResult,
    adapter: ChannelAdapter | None,
    *,
    auto_refund: bool,
) -> None:
    """The channel reports `attempt` paid although its payment is closed or failed (the payer
    paid as we closed it, or after). In the caller's transaction, under the payment's row lock:
    record it once (an audit event, the channel's trade number on the attempt), alert the
    operators (log and metric), and, when `auto_refund`, reserve a refund of what was paid,
    which the status sync sends to the channel right after commit (durably: a crash before the
    channel answered is picked up the same way)."""
    channel_order_id = attempt.channel_order_id
    if await store.late_payment_recorded(conn, payment.id, channel_order_id):
        return  # a repeated notification: recorded and alerted already
    paid = result.amount if result.amount is not None else payment.amount
    refund = None
    if auto_refund and adapter is not None and 0 < paid <= payment.refundable:
        refund = await reserve_refund(
            conn,
            payment,
            attempt,
            adapter,
            merchant_refund_id=f"late_{channel_order_id}"[:64],
            amount=paid,
            reason=LATE_REFUND_REASON,
            first_sync_at=datetime.now(UTC),
        )
    await payment_store.note_late_payment_on_attempt(
        conn,
        attempt.id,
        AttemptOutcome(
            channel_trade_no=result.channel_trade_no or attempt.channel_trade_no,
            channel_code=result.channel_code,
            channel_message="paid at the channel after the payment was " + payment.status,
        ),
    )
    refund_id = refund.id if refund is not None else None
    await payment_store.insert_event_only(
        conn,
        Event(
            id=new_id("evt"),
            merchant_id=payment.merchant_id,
            type=store.LATE_PAYMENT_EVENT,
            payment_id=payment.id,
            refund_id=refund_id,
            payload={
                "payment_id": payment.id,
                "payment_status": payment.status.value,
                "channel": attempt.channel,
                "channel_order_id": channel_order_id,
                "channel_trade_no": result.channel_trade_no,
                "amount": paid,
                "paid_at": result.paid_at.isoformat() if result.paid_at else None,
                "auto_refund_id": refund_id,
            },
            created_at=datetime.now(UTC),
            request_id=logs.current_request_id(),
        ),
    )
    metrics.LATE_PAYMENTS.labels(channel=attempt.channel).inc()
    log.error(
        "late_payment_after_final_state",
        alert=True,
        payment_id=payment.id,
        merchant_id=payment.merchant_id,
        status=payment.status.value,
        channel=attempt.channel,
        channel_order_id=channel_order_id,
        channel_trade_no=result.channel_trade_no,
        amount=paid,
        auto_refund_id=refund_id,
        action="refunding automatically" if refund is not None else "refund it by hand",
    )
