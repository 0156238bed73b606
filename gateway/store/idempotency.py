"""Idempotency-Key records (API.md §1.3): claimed before a POST runs, completed with its
answer, deleted when the answer is not to be stored (5xx)."""

from __future__ import annotations

import asyncpg

from gateway.store.db import Pool

TTL = "24 hours"
LEASE_S = 10
"""An in-flight record whose lease has run out belongs to a request that died (a live request
renews its lease while it runs: `gateway.services.idempotency.held`); a retry may take it."""


async def claim(
    pool: Pool, merchant_id: str, key: str, method: str, path: str, request_hash: bytes
) -> asyncpg.Record | None:
    """Claim the key. Returns None when claimed; otherwise the existing record."""
    claimed = await pool.fetchval(
        f"""
        INSERT INTO idempotency_keys
            (merchant_id, key, method, path, request_hash, state, expires_at, locked_until)
        VALUES ($1, $2, $3, $4, $5, 'in_flight', now() + interval '{TTL}',
                now() + interval '{LEASE_S} seconds')
        ON CONFLICT (merchant_id, key) DO UPDATE
           SET method = EXCLUDED.method, path = EXCLUDED.path,
               request_hash = EXCLUDED.request_hash, state = 'in_flight',
               response_status = NULL, response_body = NULL, created_at = now(),
               expires_at = EXCLUDED.expires_at, locked_until = EXCLUDED.locked_until
         WHERE idempotency_keys.expires_at < now()
            OR (idempotency_keys.state = 'in_flight'
                AND idempotency_keys.locked_until < now()
                AND idempotency_keys.request_hash = EXCLUDED.request_hash)
        RETURNING true
        """,  # noqa: S608 - constants only
        merchant_id,
        key,
        method,
        path,
        request_hash,
    )
    if claimed:
        return None
    return await pool.fetchrow(
        "SELECT method, path, request_hash, state, response_status, response_body"
        " FROM idempotency_keys WHERE merchant_id = $1 AND key = $2",
        merchant_id,
        key,
    )


async def complete(pool: Pool, merchant_id: str, key: str, status: int, body: bytes) -> None:
    await pool.execute(
        "UPDATE idempotency_keys SET state = 'done', response_status = $3, response_body = $4,"
        " locked_until = NULL WHERE merchant_id = $1 AND key = $2",
        merchant_id,
        key,
        status,
        body,
    )


async def renew(pool: Pool, merchant_id: str, key: str) -> bool:
    """Push an in-flight record's lease LEASE_S further. False if it is no longer in flight."""
    status = await pool.execute(
        "UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => $3)"
        " WHERE merchant_id = $1 AND key = $2 AND state = 'in_flight'",
        merchant_id,
        key,
        LEASE_S,
    )
    return status.endswith(" 1")


async def release(pool: Pool, merchant_id: str, key: str) -> None:
    await pool.execute(
        "DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 AND state = 'in_flight'",
        merchant_id,
        key,
    )


async def purge_expired(pool: Pool, limit: int = 1000) -> int:
    status = await pool.execute(
        "DELETE FROM idempotency_keys WHERE ctid IN ("
        " SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT $1)",
        limit,
    )
    return int(status.split()[-1])
