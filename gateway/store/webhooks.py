"""Webhook endpoints and the delivery log."""

from __future__ import annotations

import asyncpg

from gateway.store.db import Executor


async def insert_endpoint(
    db: Executor, endpoint_id: str, merchant_id: str, url: str, events: list[str]
) -> asyncpg.Record:
    row = await db.fetchrow(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, events) VALUES ($1, $2, $3, $4)"
        " RETURNING *",
        endpoint_id,
        merchant_id,
        url,
        events,
    )
    assert row is not None
    return row


async def list_endpoints(db: Executor, merchant_id: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT * FROM webhook_endpoints WHERE merchant_id = $1 AND status <> 'deleted'"
            " ORDER BY created_at, id",
            merchant_id,
        )
    )


async def count_endpoints(db: Executor, merchant_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1 AND status <> 'deleted'",
            merchant_id,
        )
    )


async def delete_endpoint(
    db: Executor, merchant_id: str, endpoint_id: str
) -> asyncpg.Record | None:
    return await db.fetchrow(
        "UPDATE webhook_endpoints SET status = 'deleted', updated_at = now()"
        " WHERE id = $1 AND merchant_id = $2 AND status <> 'deleted' RETURNING *",
        endpoint_id,
        merchant_id,
    )


async def list_deliveries(
    db: Executor,
    merchant_id: str,
    status: str | None,
    event_id: str | None,
    limit: int,
    starting_after: str | None,
) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            """
            SELECT d.*, e.type AS event_type,
                   COALESCE((SELECT json_agg(json_build_object(
                                'attempted_at', a.attempted_at, 'status_code', a.status_code,
                                'latency_ms', a.latency_ms, 'error', a.error,
                                'response_body', a.response_body) ORDER BY a.id)
                               FROM callback_attempts a WHERE a.delivery_id = d.id), '[]')
                   AS attempt_log
              FROM callback_deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.merchant_id = $1
               AND ($2::text IS NULL OR d.status = $2)
               AND ($3::text IS NULL OR d.event_id = $3)
               AND ($5::text IS NULL OR d.id < $5)
             ORDER BY d.id DESC
             LIMIT $4
            """,
            merchant_id,
            status,
            event_id,
            limit,
            starting_after,
        )
    )


async def retry_delivery(
    db: Executor, merchant_id: str, delivery_id: str
) -> tuple[str | None, asyncpg.Record | None]:
    """Queue a failed delivery for one more attempt now. Returns (previous status, row)."""
    row = await db.fetchrow(
        "SELECT status FROM callback_deliveries WHERE id = $1 AND merchant_id = $2",
        delivery_id,
        merchant_id,
    )
    if row is None:
        return None, None
    if row["status"] != "failed":
        return str(row["status"]), None
    updated = await db.fetchrow(
        "UPDATE callback_deliveries SET status = 'pending', next_attempt_at = now(),"
        " updated_at = now() WHERE id = $1 AND status = 'failed' RETURNING *",
        delivery_id,
    )
    if updated is not None:
        await db.execute("SELECT pg_notify('gateway_callbacks', '')")
    return "failed", updated
