"""Refund rows."""

from __future__ import annotations

from collections.abc import Mapping
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
