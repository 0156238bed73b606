"""Refund rows, and the record of a payment the channel reports paid after we closed it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from gateway.store.db import Connection, Executor


async def insert_refund(conn: Connection, refund: Mapping[str, Any]) -> asyncpg.Record:
    row = await conn.fetchrow(
        """
        INSERT INTO refunds (id, payment_id, merchant_id, merchant_refund_id, amount, currency,
            reason, status, channel, channel_order_id, channel_refund_id, next_sync_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11)
        RETURNING *
        """,
        refund["id"],
        refund["payment_id"],
        refund["merchant_id"],
        refund["merchant_refund_id"],
        refund["amount"],
        refund["currency"],
        refund["reason"],
        refund["channel"],
        refund["channel_order_id"],
        refund["channel_refund_id"],
        refund["next_sync_at"],
    )
    assert row is not None
    return row


async def get_by_merchant_refund_id(
    db: Executor, payment_id: str, merchant_refund_id: str
) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM refunds WHERE payment_id = $1 AND merchant_refund_id = $2",
        payment_id,
        merchant_refund_id,
    )


async def get_by_channel_refund_id(
    db: Executor, channel: str, channel_refund_id: str
) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM refunds WHERE channel = $1 AND channel_refund_id = $2",
        channel,
        channel_refund_id,
    )


async def get_refund(db: Executor, merchant_id: str, refund_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM refunds WHERE id = $1 AND merchant_id = $2", refund_id, merchant_id
    )


async def succeeded_attempt(db: Executor, payment_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded'"
        " ORDER BY seq DESC LIMIT 1",
        payment_id,
    )


async def settle_refund(
    conn: Connection,
    refund_id: str,
    status: str,
    channel_refund_no: str | None,
    channel_code: str | None,
    failure: tuple[str, str] | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """
        UPDATE refunds SET status = $2, channel_refund_no = COALESCE($3, channel_refund_no),
               channel_code = $4, failure_code = $5, failure_message = $6,
               completed_at = now(), updated_at = now(), next_sync_at = NULL
         WHERE id = $1
        RETURNING *
        """,
        refund_id,
        status,
        channel_refund_no,
        channel_code,
        failure[0] if failure else None,
        failure[1] if failure else None,
    )
    assert row is not None
    return row


LATE_PAYMENT_EVENT = "payment.paid_after_close"
"""An internal event (never delivered to merchants): the channel reports an order paid after
the gateway closed or failed its payment."""


async def late_payment_recorded(conn: Connection, payment_id: str, channel_order_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events WHERE payment_id = $1 AND type = $2"
            " AND payload->>'channel_order_id' = $3)",
            payment_id,
            LATE_PAYMENT_EVENT,
            channel_order_id,
        )
    )


async def record_late_payment(
    conn: Connection,
    *,
    event_id: str,
    merchant_id: str,
    payment_id: str,
    refund_id: str | None,
    payload: dict[str, Any],
    created_at: datetime,
    request_id: str | None,
) -> None:
    """The audit row of a late payment: an event with no deliveries."""
    await conn.execute(
        "INSERT INTO events (id, merchant_id, type, payment_id, refund_id, payload, created_at,"
        " request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        event_id,
        merchant_id,
        LATE_PAYMENT_EVENT,
        payment_id,
        refund_id,
        payload,
        created_at,
        request_id,
    )
