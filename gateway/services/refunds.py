"""Refunds (API.md §1.5): reserved under the payment's row lock, so that the sum of refunds that
have not failed never exceeds the payment's amount, also under concurrent requests; then sent to
the payment's channel; settled by the channel's answer, its notification or a later query."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from adapters.base import ChannelResult, CreateRefund, Outcome
from gateway import metrics, timing
from gateway.domain.ids import new_id
from gateway.domain.models import CreateRefundRequest, event_body, refund_view
from gateway.domain.states import PaymentStatus, RefundStatus, refund_can
from gateway.errors import ApiError, not_found
from gateway.services.channels import ChannelRegistry
from gateway.store import payments as payment_store
from gateway.store import refunds as store
from gateway.store.db import Connection, Pool

log = structlog.get_logger("refunds")


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    refund: dict[str, Any]
    created: bool


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

    def _next_sync_at(self, sync_count: int) -> datetime:
        delay = self.sync_schedule[min(sync_count, len(self.sync_schedule) - 1)]
        return datetime.now(UTC) + timedelta(seconds=delay)

    async def create(
        self, merchant_id: str, payment_id: str, req: CreateRefundRequest
    ) -> RefundOutcome:
        async with self.pool.acquire() as conn, conn.transaction():
            payment = await payment_store.lock_payment(conn, payment_id)
            if payment is None or payment["merchant_id"] != merchant_id:
                raise not_found("payment")
            existing = await store.get_by_merchant_refund_id(
                conn, payment_id, req.merchant_refund_id
            )
            if existing is not None:
                if existing["amount"] != req.amount:
                    raise ApiError(
                        409,
                        "duplicate_merchant_refund_id",
                        f"merchant_refund_id {req.merchant_refund_id!r} is already used by a "
                        "refund of a different amount.",
                        extra={"refund_id": existing["id"]},
                    )
                return RefundOutcome(refund_view(existing), created=False)
            if payment["status"] != PaymentStatus.SUCCEEDED:
                raise ApiError(
                    409,
                    "invalid_state",
                    f"Only a succeeded payment can be refunded; this one is {payment['status']}.",
                )
            committed = payment["refunded_amount"] + payment["refund_reserved"]
            if committed + req.amount > payment["amount"]:
                raise ApiError(
                    409,
                    "refund_exceeds_amount",
                    f"Refunds would total {committed + req.amount}, more than the payment's "
                    f"{payment['amount']} ({payment['amount'] - committed} left to refund).",
                )
            attempt = await store.succeeded_attempt(conn, payment_id)
            assert attempt is not None, "a succeeded payment has a succeeded attempt"
            adapter = self.channels.adapter(attempt["channel"])
            if adapter is None:
                raise ApiError(
                    503,
                    "channel_unavailable",
                    f"The payment's channel {attempt['channel']} is not configured.",
                    headers={"Retry-After": "60"},
                )
            refund_id = new_id("re")
            row = await store.insert_refund(
                conn,
                {
                    "id": refund_id,
                    "payment_id": payment_id,
                    "merchant_id": merchant_id,
                    "merchant_refund_id": req.merchant_refund_id,
                    "amount": req.amount,
                    "currency": payment["currency"],
                    "reason": req.reason,
                    "channel": attempt["channel"],
                    "channel_order_id": attempt["channel_order_id"],
                    "channel_refund_id": adapter.channel_refund_id(refund_id),
                    "next_sync_at": self._next_sync_at(0),
                },
            )
            await payment_store.update_payment(
                conn, payment_id, refund_reserved=payment["refund_reserved"] + req.amount
            )
        started = datetime.now(UTC)
        try:
            result = await adapter.refund(
                CreateRefund(
                    channel_order_id=row["channel_order_id"],
                    channel_refund_id=row["channel_refund_id"],
                    amount=row["amount"],
                    total_amount=payment["amount"],
                    currency=row["currency"],
                    notify_url=f"{self.public_url}/notify/{row['channel']}",
                    reason=row["reason"],
                )
            )
        except Exception as exc:  # the reservation stands; the sync will ask the channel
            log.exception("adapter_refund_crashed", refund_id=refund_id)
            result = ChannelResult(outcome=Outcome.UNKNOWN, channel_code="ADAPTER_ERROR",
                                   channel_message=repr(exc))  # fmt: skip
        timing.add_channel_time((datetime.now(UTC) - started).total_seconds())
        metrics.CHANNEL_CALLS.labels(
            channel=row["channel"], operation="refund", outcome=result.outcome.value
        ).inc()
        updated = await self.apply_result(row["channel"], row["channel_refund_id"], result)
        return RefundOutcome(refund_view(updated or row), created=True)

    async def apply_result(
        self, channel: str, channel_refund_id: str, result: ChannelResult
    ) -> Any | None:
        """Apply what the channel says about a refund, once, under the payment's row lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            refund = await store.get_by_channel_refund_id(conn, channel, channel_refund_id)
            if refund is None:
                return None
            await payment_store.lock_payment(conn, refund["payment_id"])
            refund = await store.get_by_channel_refund_id(conn, channel, channel_refund_id)
            assert refund is not None
            if result.outcome is Outcome.SUCCEEDED:
                return await self._settle(conn, refund, RefundStatus.SUCCEEDED, result)
            if result.outcome is Outcome.FAILED:
                return await self._settle(conn, refund, RefundStatus.FAILED, result)
            return refund

    async def _settle(
        self, conn: Connection, refund: Any, target: RefundStatus, result: ChannelResult
    ) -> Any:
        if not refund_can(refund["status"], target):
            return refund
        now = datetime.now(UTC)
        failure = None
        if target is RefundStatus.FAILED:
            failure = (
                result.channel_code or "refund_declined",
                result.channel_message or "The channel refused the refund.",
            )
        updated = await store.settle_refund(
            conn,
            refund["id"],
            target.value,
            result.channel_trade_no,
            result.channel_code,
            failure,
        )
        payment = await payment_store.lock_payment(conn, refund["payment_id"])
        assert payment is not None
        changes: dict[str, Any] = {"refund_reserved": payment["refund_reserved"] - refund["amount"]}
        if target is RefundStatus.SUCCEEDED:
            changes["refunded_amount"] = payment["refunded_amount"] + refund["amount"]
        payment = await payment_store.update_payment(conn, payment["id"], **changes)
        event_type = f"refund.{target.value}"
        event_id = new_id("evt")
        await payment_store.insert_event(
            conn,
            event_id=event_id,
            merchant_id=refund["merchant_id"],
            event_type=event_type,
            payment_id=refund["payment_id"],
            refund_id=refund["id"],
            payload=event_body(event_id, event_type, now, refund_view(updated)),
            created_at=now,
            notify_url=payment["notify_url"],
        )
        log.info("refund_settled", refund_id=refund["id"], status=target.value)
        return updated

    async def get(self, merchant_id: str, refund_id: str) -> dict[str, Any]:
        row = await store.get_refund(self.pool, merchant_id, refund_id)
        if row is None:
            raise not_found("refund")
        return refund_view(row)
