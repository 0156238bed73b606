"""Idempotency-Key records (API.md §1.3): claimed before a POST runs, completed with its
answer, deleted when the answer is not to be stored (5xx). Statements: `sql/idempotency.sql`."""

from __future__ import annotations

from gateway.domain.records import IdempotencyRecord
from gateway.store import rows
from gateway.store.db import Pool
from gateway.store.queries import query

TTL_S = 24 * 3600
"""A key is kept 24 hours."""
LEASE_S = 10
"""An in-flight record whose lease has run out belongs to a request that died (a live request
renews its lease while it runs: `gateway.services.idempotency.held`); a retry may take it."""

_CLAIM = query("claim_idempotency_key")
_GET = query("get_idempotency_record")
_COMPLETE = query("complete_idempotency_key")
_RENEW = query("renew_idempotency_lease")
_RELEASE = query("release_idempotency_key")
_PURGE_EXPIRED = query("purge_expired_idempotency_keys")


async def claim(
    pool: Pool, merchant_id: str, key: str, method: str, path: str, request_hash: bytes
) -> IdempotencyRecord | None:
    """Claim the key. Returns None when claimed; otherwise the existing record (None too when
    that record was released between the two statements)."""
    claimed = await pool.fetchval(
        _CLAIM, merchant_id, key, method, path, request_hash, LEASE_S, TTL_S
    )
    if claimed:
        return None
    row = await pool.fetchrow(_GET, merchant_id, key)
    return None if row is None else rows.idempotency_record(row)


async def complete(pool: Pool, merchant_id: str, key: str, status: int, body: bytes) -> None:
    await pool.execute(_COMPLETE, merchant_id, key, status, body)


async def renew(pool: Pool, merchant_id: str, key: str) -> bool:
    """Push an in-flight record's lease LEASE_S further. False if it is no longer in flight."""
    status = await pool.execute(_RENEW, merchant_id, key, LEASE_S)
    return status.endswith(" 1")


async def release(pool: Pool, merchant_id: str, key: str) -> None:
    await pool.execute(_RELEASE, merchant_id, key)


async def purge_expired(pool: Pool, limit: int = 1000) -> int:
    status = await pool.execute(_PURGE_EXPIRED, limit)
    return int(status.split()[-1])
