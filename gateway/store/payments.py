"""Payments, their attempts, events and the callback outbox rows they cause."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from gateway.store.db import Connection, Executor, Pool

CALLBACK_CHANNEL = "gateway_callbacks"
"""LISTEN/NOTIFY channel that wakes the callback dispatchers when deliveries are due."""

_PAYMENT_COLUMNS = frozenset(
    {
        "status", "channel", "channel_order_id", "channel_trade_no", "next_action",
        "refunded_amount", "refund_reserved", "failure_code", "failure_message",
        "attempt_count", "paid_at", "closed_at",
    }
)  # fmt: skip
_ATTEMPT_COLUMNS = frozenset(
    {"status", "channel_code", "channel_message", "decision", "channel_trade_no",
     "next_sync_at", "sync_count"}
)  # fmt: skip


async def insert_payment_with_attempt(
    conn: Executor, payment: Mapping[str, Any], attempt: Mapping[str, Any]
) -> asyncpg.Record | None:
    """Insert a payment and its first attempt in one statement (one round trip, one commit).
    Returns the payment row, or None when the merchant_order_id already exists."""
    return await conn.fetchrow(
        """
        WITH p AS (
            INSERT INTO payments (id, merchant_id, merchant_order_id, status, amount, currency,
                method, description, notify_url, metadata, payer, channel, channel_order_id,
                attempt_count, expires_at)
            VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13)
            ON CONFLICT (merchant_id, merchant_order_id) DO NOTHING
            RETURNING *
        ), a AS (
            INSERT INTO payment_attempts (id, payment_id, seq, channel, adapter,
                channel_order_id, status, routing_rule, routing_version, next_sync_at)
            SELECT $14, p.id, 1, $11, $15, $12, 'creating', $16, $17,
                   now() + interval '60 seconds' FROM p
        )
        SELECT * FROM p
        """,
        payment["id"],
        payment["merchant_id"],
        payment["merchant_order_id"],
        payment["amount"],
        payment["currency"],
        payment["method"],
        payment["description"],
        payment["notify_url"],
        payment["metadata"],
        payment["payer"],
        attempt["channel"],
        attempt["channel_order_id"],
        payment["expires_at"],
        attempt["id"],
        attempt["adapter"],
        attempt["routing_rule"],
        attempt["routing_version"],
    )


async def insert_attempt(conn: Connection, attempt: Mapping[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO payment_attempts (id, payment_id, seq, channel, adapter, channel_order_id,"
        " status, routing_rule, routing_version, next_sync_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'creating', $7, $8, now() + interval '60 seconds')",
        attempt["id"],
        attempt["payment_id"],
        attempt["seq"],
        attempt["channel"],
        attempt["adapter"],
        attempt["channel_order_id"],
        attempt["routing_rule"],
        attempt["routing_version"],
    )


async def mark_attempt_waiting(
    pool: Pool,
    attempt_id: str,
    payment_id: str,
    next_action: dict[str, str] | None,
    channel_trade_no: str | None,
    channel_code: str | None,
    next_sync_at: datetime,
) -> asyncpg.Record | None:
    """creating -> waiting for the attempt, and the payer's next action on the payment, in one
    statement. Guarded by both states, so a notification that got there first wins."""
    return await pool.fetchrow(
        """
        WITH a AS (
            UPDATE payment_attempts SET status = 'waiting', channel_code = $5,
                   channel_trade_no = COALESCE($4, channel_trade_no), next_sync_at = $6,
                   updated_at = now()
             WHERE id = $1 AND status = 'creating'
            RETURNING id
        )
        UPDATE payments p SET next_action = $3,
               channel_trade_no = COALESCE($4, p.channel_trade_no), updated_at = now()
          FROM a
         WHERE p.id = $2 AND p.status = 'pending'
        RETURNING p.*
        """,
        attempt_id,
        payment_id,
        next_action,
        channel_trade_no,
        channel_code,
        next_sync_at,
    )


async def update_attempt(conn: Connection, attempt_id: str, **changes: Any) -> None:
    unknown = set(changes) - _ATTEMPT_COLUMNS
    if unknown:
        raise ValueError(f"not attempt columns: {unknown}")
    sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
    await conn.execute(
        f"UPDATE payment_attempts SET {sets}, updated_at = now() WHERE id = $1",  # noqa: S608
        attempt_id,
        *changes.values(),
    )


async def update_payment(conn: Connection, payment_id: str, **changes: Any) -> asyncpg.Record:
    unknown = set(changes) - _PAYMENT_COLUMNS
    if unknown:
        raise ValueError(f"not payment columns: {unknown}")
    sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, start=2))
    row = await conn.fetchrow(
        f"UPDATE payments SET {sets}, updated_at = now() WHERE id = $1 RETURNING *",  # noqa: S608
        payment_id,
        *changes.values(),
    )
    assert row is not None
    return row


async def get_payment(pool: Executor, merchant_id: str, payment_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT * FROM payments WHERE id = $1 AND merchant_id = $2", payment_id, merchant_id
    )


async def get_payment_by_order(
    pool: Executor, merchant_id: str, merchant_order_id: str
) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT * FROM payments WHERE merchant_id = $1 AND merchant_order_id = $2",
        merchant_id,
        merchant_order_id,
    )


async def lock_payment(conn: Connection, payment_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM payments WHERE id = $1 FOR UPDATE", payment_id)


async def current_attempt(conn: Executor, payment_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM payment_attempts WHERE payment_id = $1 ORDER BY seq DESC LIMIT 1",
        payment_id,
    )


async def attempt_by_channel_order(
    conn: Executor, channel: str, channel_order_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM payment_attempts WHERE channel = $1 AND channel_order_id = $2",
        channel,
        channel_order_id,
    )


async def attempts(pool: Executor, payment_id: str) -> list[asyncpg.Record]:
    return list(
        await pool.fetch(
            "SELECT * FROM payment_attempts WHERE payment_id = $1 ORDER BY seq", payment_id
        )
    )


async def insert_event(
    conn: Connection,
    *,
    event_id: str,
    merchant_id: str,
    event_type: str,
    payment_id: str | None,
    refund_id: str | None,
    payload: dict[str, Any],
    created_at: datetime,
    notify_url: str | None,
    request_id: str | None,
) -> int:
    """Write an event and its deliveries (the payment's notify_url and every active endpoint
    of the merchant subscribed to the type) in the caller's transaction; wake the dispatchers
    on commit. `request_id` is that of the request or job causing it (its callbacks carry it).
    Returns the number of deliveries."""
    await conn.execute(
        "INSERT INTO events (id, merchant_id, type, payment_id, refund_id, payload, created_at,"
        " request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        event_id,
        merchant_id,
        event_type,
        payment_id,
        refund_id,
        payload,
        created_at,
        request_id,
    )
    count = await conn.fetchval(
        """
        WITH d AS (
            INSERT INTO callback_deliveries (id, event_id, merchant_id, endpoint_id, url)
            SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), $1, $2, NULL, $3
             WHERE $3::text IS NOT NULL
            UNION ALL
            SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), $1, $2, e.id, e.url
              FROM webhook_endpoints e
             WHERE e.merchant_id = $2 AND e.status = 'active' AND $4 = ANY (e.events)
            RETURNING 1
        )
        SELECT count(*) FROM d
        """,
        event_id,
        merchant_id,
        notify_url,
        event_type,
    )
    if count:
        await conn.execute("SELECT pg_notify($1, '')", CALLBACK_CHANNEL)
    return int(count)


async def record_notification(
    conn: Executor,
    channel: str,
    channel_order_id: str | None,
    kind: str | None,
    outcome: str | None,
    applied: bool,
) -> None:
    await conn.execute(
        "INSERT INTO channel_notifications (channel, channel_order_id, kind, outcome, applied)"
        " VALUES ($1, $2, $3, $4, $5)",
        channel,
        channel_order_id,
        kind,
        outcome,
        applied,
    )
