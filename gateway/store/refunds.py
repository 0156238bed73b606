"""Refunds, the amounts they reserve on their payment, their status sync, and whether an
operators' record of one was written. Statements: `sql/refunds.sql`."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.records import Attempt, DueRefund, NewRefund, Refund
from gateway.domain.states import RefundStatus
from gateway.store import rows
from gateway.store.db import Connection, Executor, Pool
from gateway.store.queries import query

_INSERT_REFUND = query("insert_refund")
_RESERVE_REFUND_AMOUNT = query("reserve_refund_amount")
_SETTLE_REFUND_AMOUNT = query("settle_refund_amount")
_GET_REFUND = query("get_refund")
_GET_BY_MERCHANT_REFUND_ID = query("get_refund_by_merchant_refund_id")
_GET_BY_CHANNEL_REFUND_ID = query("get_refund_by_channel_refund_id")
_SUCCEEDED_ATTEMPT = query("succeeded_attempt")
_SETTLE_REFUND = query("settle_refund")
_CLAIM_DUE_REFUNDS = query("claim_due_refunds")
_RESCHEDULE_REFUND_SYNC = query("reschedule_refund_sync")
_REFUND_RECORD_EXISTS = query("refund_record_exists")


async def insert_refund(conn: Connection, refund: NewRefund) -> Refund:
    """Insert a pending refund and, when it counts on its payment, reserve its amount there. The
    caller holds the payment's row lock and has checked that the amount is available."""
    row = await conn.fetchrow(
        _INSERT_REFUND,
        refund.id,
        refund.payment_id,
        refund.merchant_id,
        refund.merchant_refund_id,
        refund.amount,
        refund.currency,
        refund.reason,
        refund.channel,
        refund.channel_order_id,
        refund.channel_refund_id,
        refund.next_sync_at,
        refund.counts_on_payment,
    )
    assert row is not None
    if refund.counts_on_payment:
        await conn.execute(_RESERVE_REFUND_AMOUNT, refund.payment_id, refund.amount)
    return rows.refund(row)


async def get_refund(db: Executor, merchant_id: str, refund_id: str) -> Refund | None:
    row = await db.fetchrow(_GET_REFUND, refund_id, merchant_id)
    return None if row is None else rows.refund(row)


async def get_by_merchant_refund_id(
    db: Executor, payment_id: str, merchant_refund_id: str
) -> Refund | None:
    row = await db.fetchrow(_GET_BY_MERCHANT_REFUND_ID, payment_id, merchant_refund_id)
    return None if row is None else rows.refund(row)


async def get_by_channel_refund_id(
    db: Executor, channel: str, channel_refund_id: str
) -> Refund | None:
    row = await db.fetchrow(_GET_BY_CHANNEL_REFUND_ID, channel, channel_refund_id)
    return None if row is None else rows.refund(row)


async def succeeded_attempt(db: Executor, payment_id: str) -> Attempt | None:
    """The attempt a succeeded payment was paid through."""
    row = await db.fetchrow(_SUCCEEDED_ATTEMPT, payment_id)
    return None if row is None else rows.attempt(row)


async def settle_refund(
    conn: Connection,
    refund: Refund,
    status: RefundStatus,
    channel_refund_no: str | None,
    channel_code: str | None,
    failure: tuple[str, str] | None,
) -> Refund:
    """pending -> `status`, and (when it counts on its payment) the refund's amount no longer
    reserved there, refunded when it succeeded. The caller holds the payment's row lock and
    checked the state machine."""
    row = await conn.fetchrow(
        _SETTLE_REFUND,
        refund.id,
        status.value,
        channel_refund_no,
        channel_code,
        failure[0] if failure else None,
        failure[1] if failure else None,
    )
    assert row is not None
    if refund.counts_on_payment:
        await conn.execute(
            _SETTLE_REFUND_AMOUNT,
            refund.payment_id,
            refund.amount,
            status is RefundStatus.SUCCEEDED,
        )
    return rows.refund(row)


async def claim_due_refunds(pool: Pool, limit: int, lease_s: float) -> list[DueRefund]:
    """Lease up to `limit` pending refunds whose sync is due (as `claim_due_attempts`)."""
    return [rows.due_refund(r) for r in await pool.fetch(_CLAIM_DUE_REFUNDS, limit, lease_s)]


async def reschedule_refund_sync(pool: Pool, refund_id: str, at: datetime) -> None:
    """The next sync of a refund still pending."""
    await pool.execute(_RESCHEDULE_REFUND_SYNC, refund_id, at)


async def refund_record_exists(conn: Connection, refund: Refund, record_type: str) -> bool:
    """Whether the operators' record `record_type` of `refund` was written already."""
    return bool(
        await conn.fetchval(_REFUND_RECORD_EXISTS, refund.payment_id, refund.id, record_type)
    )
