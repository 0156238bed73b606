"""Webhook endpoints, the delivery log, the dispatcher's claim and finish statements, and the
merchants' webhook secrets (rotation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway.store.db import Connection, Executor
from gateway.store.payments import CALLBACK_CHANNEL


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
    """The merchant's deliveries, newest first, each with its attempts. `pending` includes the
    ones being attempted right now; `starting_after` is the last delivery id of the previous
    page."""
    return list(
        await db.fetch(
            """
            SELECT d.*, e.type AS event_type,
                   COALESCE((SELECT jsonb_agg(jsonb_build_object(
                                'attempted_at', to_char(a.attempted_at AT TIME ZONE 'UTC',
                                                        'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                                'status_code', a.status_code, 'latency_ms', a.latency_ms,
                                'error', a.error, 'response_body', a.response_body) ORDER BY a.id)
                               FROM callback_attempts a WHERE a.delivery_id = d.id), '[]'::jsonb)
                   AS attempt_log
              FROM callback_deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.merchant_id = $1
               AND ($2::text IS NULL OR d.status = $2
                    OR ($2 = 'pending' AND d.status = 'delivering'))
               AND ($3::text IS NULL OR d.event_id = $3)
               AND ($5::text IS NULL OR (d.created_at, d.id) < (
                        SELECT c.created_at, c.id FROM callback_deliveries c
                         WHERE c.id = $5 AND c.merchant_id = $1))
             ORDER BY d.created_at DESC, d.id DESC
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
        await db.execute("SELECT pg_notify($1, '')", CALLBACK_CHANNEL)
    return "failed", updated


ABANDONED = (
    "abandoned: the dispatcher making this attempt stopped before recording its result"
    " (lease expired)"
)

_CLAIM = """
WITH expired AS (
    SELECT id, url, next_attempt_at, locked_until FROM callback_deliveries
     WHERE status = 'delivering' AND locked_until < now() AND url <> ALL ($2::text[])
     ORDER BY locked_until
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id, url, next_attempt_at, NULL::timestamptz AS locked_until FROM callback_deliveries
     WHERE status = 'pending' AND next_attempt_at <= now() AND url <> ALL ($2::text[])
     ORDER BY next_attempt_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), candidates AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.url ORDER BY c.next_attempt_at, c.id) AS rank
      FROM (SELECT * FROM expired UNION ALL SELECT * FROM due) c
), picked AS (
    SELECT c.id, c.locked_until AS lost_lease
      FROM candidates c
      LEFT JOIN unnest($3::text[], $4::int[]) AS busy(url, n) ON busy.url = c.url
     WHERE c.rank <= $5 - COALESCE(busy.n, 0)
     ORDER BY c.next_attempt_at
     LIMIT $1
), lost AS (
    INSERT INTO callback_attempts (delivery_id, attempted_at, error)
    SELECT id, lost_lease - make_interval(secs => $6), $7 FROM picked
     WHERE lost_lease IS NOT NULL
), claimed AS (
    UPDATE callback_deliveries d
       SET status = 'delivering', locked_until = now() + make_interval(secs => $6),
           attempts = d.attempts + 1, updated_at = now()
      FROM picked
     WHERE d.id = picked.id
    RETURNING d.id, d.event_id, d.merchant_id, d.endpoint_id, d.url, d.attempts
)
SELECT c.*, e.payload::text AS body, e.request_id, w.status AS endpoint_status,
       m.webhook_secret_enc AS secret_enc,
       CASE WHEN m.webhook_secret_prev_expires_at > now() THEN m.webhook_secret_prev_enc END
           AS previous_secret_enc
  FROM claimed c
  JOIN events e ON e.id = c.event_id
  JOIN merchants m ON m.id = c.merchant_id
  LEFT JOIN webhook_endpoints w ON w.id = c.endpoint_id
"""


async def claim_due(
    db: Executor,
    limit: int,
    busy: dict[str, int],
    per_url: int,
    lease_s: float,
) -> list[asyncpg.Record]:
    """Lease up to `limit` due deliveries (pending ones whose time has come, and attempts whose
    lease ran out: their process died) with `FOR UPDATE SKIP LOCKED`, so concurrent dispatchers
    never take the same row. `busy` is what this dispatcher holds per URL already: no URL ends
    up with more than `per_url`, and URLs already at `per_url` are not even looked at. An
    abandoned attempt found here is recorded as such. Each row comes with its event's body and
    request id, and the merchant's sealed webhook secrets (the previous one only while its grace
    lasts)."""
    saturated = [url for url, n in busy.items() if n >= per_url]
    urls = list(busy)
    return list(
        await db.fetch(
            _CLAIM,
            limit,
            saturated,
            urls,
            [busy[u] for u in urls],
            per_url,
            lease_s,
            ABANDONED,
        )
    )


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt's result, and what it makes of its delivery."""

    delivery_id: str
    attempt_no: int
    """The delivery's `attempts` when it was claimed: the lease's fence."""
    status: str
    """The delivery's new status: succeeded, pending (retry at `next_attempt_at`), failed."""
    next_attempt_at: datetime | None
    status_code: int | None
    error: str | None
    attempted_at: datetime
    latency_ms: int | None
    response_body: str | None


_FINISH = """
WITH f AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::int[],
                         $6::text[], $7::timestamptz[], $8::int[], $9::text[])
        AS f(id, attempt_no, status, next_at, status_code, error, attempted_at, latency_ms, body)
), finished AS (
    UPDATE callback_deliveries d
       SET status = f.status, next_attempt_at = COALESCE(f.next_at, d.next_attempt_at),
           locked_until = NULL, last_status_code = f.status_code, last_error = f.error,
           updated_at = now(),
           delivered_at = CASE WHEN f.status = 'succeeded' THEN now() ELSE d.delivered_at END
      FROM f
     WHERE d.id = f.id AND d.status = 'delivering' AND d.attempts = f.attempt_no
    RETURNING d.id
), recorded AS (
    INSERT INTO callback_attempts
        (delivery_id, attempted_at, status_code, latency_ms, response_body, error)
    SELECT id, attempted_at, status_code, latency_ms, body, error FROM f
)
SELECT id FROM finished
"""


async def finish_attempts(db: Executor, results: Sequence[AttemptResult]) -> set[str]:
    """Record attempts and move their deliveries on, in one statement. A delivery changes only
    if its dispatcher still holds the lease (a later claim raised `attempts` past the fence);
    the attempt is recorded either way. Returns the ids of the deliveries that changed."""
    rows = await db.fetch(
        _FINISH,
        [r.delivery_id for r in results],
        [r.attempt_no for r in results],
        [r.status for r in results],
        [r.next_attempt_at for r in results],
        [r.status_code for r in results],
        [r.error for r in results],
        [r.attempted_at for r in results],
        [r.latency_ms for r in results],
        [r.response_body for r in results],
    )
    return {str(r["id"]) for r in rows}


async def disable_endpoint(db: Executor, endpoint_id: str, reason: str) -> int:
    """Disable an endpoint (it answered 410 Gone) and fail its pending deliveries; returns how
    many were failed. Idempotent."""
    count = await db.fetchval(
        """
        WITH disabled AS (
            UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2,
                   updated_at = now()
             WHERE id = $1 AND status = 'active'
        ), dropped AS (
            UPDATE callback_deliveries SET status = 'failed', last_error = $3, updated_at = now()
             WHERE endpoint_id = $1 AND status = 'pending'
            RETURNING 1
        )
        SELECT count(*) FROM dropped
        """,
        endpoint_id,
        reason,
        f"endpoint disabled ({reason}): not sent",
    )
    return int(count)


async def due_stats(db: Executor) -> tuple[int, float]:
    """(deliveries due now, age in seconds of the oldest of them), leases run out included."""
    row = await db.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM now() - min(next_attempt_at))::float8 AS age"
        "  FROM callback_deliveries"
        " WHERE (status = 'pending' AND next_attempt_at <= now())"
        "    OR (status = 'delivering' AND locked_until < now())"
    )
    assert row is not None
    return int(row["n"]), float(row["age"] or 0.0)


async def rotate_webhook_secret(
    conn: Connection, merchant_id: str, sealed: bytes, grace_s: float
) -> tuple[bool, datetime | None]:
    """Install a new (sealed) webhook secret; the current one stays valid as the previous secret
    for `grace_s` seconds (none when 0). Returns (merchant found, previous secret's expiry)."""
    row = await conn.fetchrow(
        """
        UPDATE merchants
           SET webhook_secret_prev_enc = CASE WHEN $3 > 0 THEN webhook_secret_enc END,
               webhook_secret_prev_expires_at =
                   CASE WHEN $3 > 0 THEN now() + make_interval(secs => $3) END,
               webhook_secret_enc = $2
         WHERE id = $1
        RETURNING webhook_secret_prev_expires_at
        """,
        merchant_id,
        sealed,
        grace_s,
    )
    if row is None:
        return False, None
    return True, row["webhook_secret_prev_expires_at"]
