"""Refunds (API.md §1.5): reserved under the payment's row lock, so that the sum of refunds that
have not failed never exceeds the payment's amount, also under concurrent requests; then sent to
the payment's channel; settled by the channel's answer, its notification or a later query (a
success only when it carries the refund's amount and currency).

Also what channels report that an operator must act on, each written once as an internal event
(`gateway.domain.verdicts.OperatorRecord`), alerted (a log with ``alert=True`` and a metric):
the late payment, a channel that reports an order paid after the gateway gave it up (or its
payment), refunded automatically when the operator says so (`GATEWAY_LATE_PAYMENT_AUTO_REFUND`);
a success whose money does not match ours; and a payment or refund the channel reports neither
succeeded nor failed though money may have moved."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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
from gateway.domain.states import (
    EVENT_FOR_REFUND_STATUS,
    PaymentStatus,
    RefundStatus,
    ResultVerdict,
    refund_can,
)
from gateway.domain.verdicts import (
    MoneyMismatch,
    OperatorRecord,
    late_refund_counts_on_payment,
    money_mismatch,
    refuses,
)
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


@dataclass(frozen=True, slots=True)
class RefundApplied:
    """A refund after a channel's result was offered to it, and what became of the result."""

    refund: Refund
    verdict: ResultVerdict


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
        return updated.refund if updated is not None else refund

    async def apply_result(
        self,
        channel: str,
        channel_refund_id: str,
        result: ChannelResult,
        *,
        notification_id: str | None = None,
    ) -> RefundApplied | None:
        """Apply what the channel says about a refund (its answer, a notification or a query),
        once, under the payment's row lock: a success only with the refund's amount and
        currency (else refused, recorded and alerted: `refuses`); a notification id only once
        (recorded with the change it causes); a refund the channel reports neither done nor
        failed, though money may have moved, recorded once for an operator and left pending.
        None for a refund we do not know."""
        async with self.pool.acquire() as conn, conn.transaction():
            refund = await store.get_by_channel_refund_id(conn, channel, channel_refund_id)
            if refund is None:
                return None
            payment = await payment_store.lock_payment(conn, refund.payment_id)
            assert payment is not None
            # re-read under the payment's lock: a concurrent path may have settled it
            refund = await store.get_by_channel_refund_id(conn, channel, channel_refund_id)
            assert refund is not None
            if result.outcome is Outcome.SUCCEEDED:
                mismatch = money_mismatch(
                    result.amount, result.currency, refund.amount, refund.currency
                )
                repeat = refund.status is RefundStatus.SUCCEEDED
                if mismatch is not None and refuses(mismatch, repeats_applied_success=repeat):
                    await refuse_success(
                        conn, payment, refund.channel, refund.channel_order_id, result, mismatch,
                        refund=refund,
                    )  # fmt: skip
                    return RefundApplied(refund, ResultVerdict.REFUSED)
            if notification_id is not None and not await payment_store.claim_notification_id(
                conn, channel, notification_id
            ):
                return RefundApplied(refund, ResultVerdict.REPEATED)
            target = {
                Outcome.SUCCEEDED: RefundStatus.SUCCEEDED,
                Outcome.FAILED: RefundStatus.FAILED,
            }.get(result.outcome)
            if target is not None and refund_can(refund.status, target):
                refund = await self._settle(conn, payment, refund, target, result)
            elif (
                result.outcome is Outcome.WAITING
                and result.needs_operator
                and refund.status is RefundStatus.PENDING
            ):
                await record_needs_operator(
                    conn, payment, refund.channel, refund.channel_order_id, result, refund=refund
                )
            return RefundApplied(refund, ResultVerdict.APPLIED)

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
        event = Event(
            id=event_id,
            merchant_id=refund.merchant_id,
            type=event_type,
            payment_id=refund.payment_id,
            refund_id=refund.id,
            payload=event_body(event_id, event_type, now, RefundObject.of(updated)),
            created_at=now,
            request_id=logs.current_request_id(),
        )
        if refund.counts_on_payment:
            await payment_store.insert_event(conn, event, notify_url=payment.notify_url)
        else:  # none of the merchant's refunds: kept, not delivered
            await payment_store.insert_event_only(conn, event)
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
    counts_on_payment: bool = True,
) -> Refund:
    """Insert a pending refund of one attempt and, when it counts on the payment, reserve its
    amount there. The caller holds the payment's row lock and has checked that the amount is
    available."""
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
            counts_on_payment=counts_on_payment,
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
    """The channel reports `attempt` paid (with the payment's amount and currency, checked by
    the caller) although the gateway gave it up: its payment is closed or failed, or succeeded
    through another attempt, or the attempt was failed over while its order may have existed.
    In the caller's transaction, under the payment's row lock: record it once (an operators'
    event, the channel's trade number on the attempt), alert the operators (log and metric),
    and, when `auto_refund`, reserve a refund of what was paid, which the status sync sends to
    the channel right after commit (durably: a crash before the channel answered is picked up
    the same way). That refund counts on the payment only when the payment took no money of its
    own (`late_refund_counts_on_payment`)."""
    channel_order_id = attempt.channel_order_id
    record = OperatorRecord.LATE_PAYMENT
    if await payment_store.payment_record_exists(conn, payment.id, record, channel_order_id):
        return  # a repeated notification or query: recorded and alerted already
    paid = result.amount if result.amount is not None else payment.amount
    counts = late_refund_counts_on_payment(payment.status)
    refund = None
    if (
        auto_refund
        and adapter is not None
        and paid > 0
        and (not counts or paid <= payment.refundable)
    ):
        refund = await reserve_refund(
            conn,
            payment,
            attempt,
            adapter,
            merchant_refund_id=f"late_{channel_order_id}"[:64],
            amount=paid,
            reason=LATE_REFUND_REASON,
            first_sync_at=datetime.now(UTC),
            counts_on_payment=counts,
        )
    await payment_store.note_late_payment_on_attempt(
        conn,
        attempt.id,
        AttemptOutcome(
            channel_trade_no=result.channel_trade_no or attempt.channel_trade_no,
            channel_code=result.channel_code,
            channel_message=(
                f"paid at the channel after the gateway gave this attempt up ({attempt.status},"
                f" payment {payment.status})"
            ),
        ),
    )
    refund_id = refund.id if refund is not None else None
    await _write_record(
        conn,
        payment,
        record,
        {
            "payment_id": payment.id,
            "payment_status": payment.status.value,
            "attempt_status": attempt.status.value,
            "channel": attempt.channel,
            "channel_order_id": channel_order_id,
            "channel_trade_no": result.channel_trade_no,
            "amount": paid,
            "currency": payment.currency,
            "paid_at": result.paid_at.isoformat() if result.paid_at else None,
            "auto_refund_id": refund_id,
        },
        refund_id=refund_id,
    )
    metrics.LATE_PAYMENTS.labels(channel=attempt.channel).inc()
    log.error(
        "late_payment_after_final_state",
        alert=True,
        payment_id=payment.id,
        merchant_id=payment.merchant_id,
        status=payment.status.value,
        attempt_status=attempt.status.value,
        channel=attempt.channel,
        channel_order_id=channel_order_id,
        channel_trade_no=result.channel_trade_no,
        amount=paid,
        auto_refund_id=refund_id,
        action="refunding automatically" if refund is not None else "refund it by hand",
    )


async def _record_once(
    conn: Connection,
    payment: Payment,
    record: OperatorRecord,
    channel: str,
    channel_order_id: str,
    details: dict[str, Any],
    refund: Refund | None,
) -> bool:
    """Write the operators' record `record` of a channel order (or of `refund`) unless it was
    written before: False then."""
    if refund is None:
        if await payment_store.payment_record_exists(conn, payment.id, record, channel_order_id):
            return False
    elif await store.refund_record_exists(conn, refund, record):
        return False
    payload: dict[str, Any] = {
        "payment_id": payment.id,
        "channel": channel,
        "channel_order_id": channel_order_id,
    }
    if refund is not None:
        payload |= {"refund_id": refund.id, "channel_refund_id": refund.channel_refund_id}
    await _write_record(
        conn,
        payment,
        record,
        payload | details,
        refund_id=refund.id if refund is not None else None,
    )
    return True


async def _write_record(
    conn: Connection,
    payment: Payment,
    record: OperatorRecord,
    payload: dict[str, Any],
    *,
    refund_id: str | None,
) -> None:
    """An operators' record: an event of the payment, never delivered to the merchant."""
    await payment_store.insert_event_only(
        conn,
        Event(
            id=new_id("evt"),
            merchant_id=payment.merchant_id,
            type=record,
            payment_id=payment.id,
            refund_id=refund_id,
            payload=payload,
            created_at=datetime.now(UTC),
            request_id=logs.current_request_id(),
        ),
    )


async def refuse_success(
    conn: Connection,
    payment: Payment,
    channel: str,
    channel_order_id: str,
    result: ChannelResult,
    mismatch: MoneyMismatch,
    *,
    refund: Refund | None = None,
) -> None:
    """A success whose amount or currency is missing or not ours (the payment's, or `refund`'s):
    not applied; alerted every time (log and metric), recorded once for an operator, in the
    caller's transaction under the payment's row lock."""
    kind = "payment" if refund is None else "refund"
    expected = (payment.amount, payment.currency) if refund is None else (
        refund.amount, refund.currency
    )  # fmt: skip
    details = {
        "reason": mismatch.value,
        "expected_amount": expected[0],
        "expected_currency": expected[1],
        "reported_amount": result.amount,
        "reported_currency": result.currency,
        "channel_code": result.channel_code,
        "channel_trade_no": result.channel_trade_no,
    }
    record = (
        OperatorRecord.PAYMENT_AMOUNT_MISMATCH
        if refund is None
        else OperatorRecord.REFUND_AMOUNT_MISMATCH
    )
    await _record_once(conn, payment, record, channel, channel_order_id, details, refund)
    metrics.AMOUNT_MISMATCHES.labels(channel=channel, kind=kind, reason=mismatch.value).inc()
    _alert(
        "channel_amount_mismatch",
        payment,
        refund,
        channel,
        channel_order_id,
        "not applied: check the channel's record of it",
        details,
    )


async def record_needs_operator(
    conn: Connection,
    payment: Payment,
    channel: str,
    channel_order_id: str,
    result: ChannelResult,
    *,
    refund: Refund | None = None,
) -> None:
    """The channel says money may have moved for the payment (or `refund`) but reports neither
    success nor failure: recorded once for an operator, alerted once (log and metric). The
    payment or refund stays open; the status sync keeps asking, on the slow end of its
    schedule."""
    kind = "payment" if refund is None else "refund"
    record = (
        OperatorRecord.PAYMENT_NEEDS_OPERATOR
        if refund is None
        else OperatorRecord.REFUND_NEEDS_OPERATOR
    )
    details = {"channel_code": result.channel_code, "channel_message": result.channel_message}
    if not await _record_once(conn, payment, record, channel, channel_order_id, details, refund):
        return
    metrics.NEEDS_OPERATOR.labels(channel=channel, kind=kind).inc()
    _alert(
        "channel_needs_operator",
        payment,
        refund,
        channel,
        channel_order_id,
        "ask the channel what became of it; the gateway keeps it open",
        details,
    )


def _alert(
    event: str,
    payment: Payment,
    refund: Refund | None,
    channel: str,
    channel_order_id: str,
    action: str,
    details: dict[str, Any],
) -> None:
    """The log an operator is alerted by (``alert=True``), for a payment or one of its refunds."""
    log.error(
        event,
        alert=True,
        kind="payment" if refund is None else "refund",
        payment_id=payment.id,
        refund_id=refund.id if refund is not None else None,
        merchant_id=payment.merchant_id,
        channel=channel,
        channel_order_id=channel_order_id,
        action=action,
        **details,
    )
