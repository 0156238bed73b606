"""Merchants (their status and budget overrides), their signing keys and their webhook secrets.
Statements: `sql/merchants.sql`."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.records import (
    KeyType,
    Merchant,
    MerchantAccess,
    MerchantKey,
    RateLimitOverrides,
)
from gateway.domain.states import MerchantStatus
from gateway.store import rows
from gateway.store.db import Connection, Executor, Pool
from gateway.store.queries import query

_INSERT_MERCHANT = query("insert_merchant")
_LOCK_MERCHANT = query("lock_merchant")
_INSERT_KEY = query("insert_key")
_COUNT_ACTIVE_KEYS = query("count_active_keys")
_REVOKE_KEY = query("revoke_key")
_KEY_ACCESS = query("key_access")
_MERCHANT_ACCESS = query("merchant_access")
_SET_STATUS = query("set_merchant_status")
_SET_RATE_LIMITS = query("set_rate_limits")
_ROTATE_WEBHOOK_SECRET = query("rotate_webhook_secret")


async def insert_merchant(
    conn: Connection, merchant_id: str, name: str, webhook_secret_enc: bytes
) -> None:
    await conn.execute(_INSERT_MERCHANT, merchant_id, name, webhook_secret_enc)


async def lock_merchant(conn: Connection, merchant_id: str) -> Merchant | None:
    """The merchant, locked until the caller's transaction ends."""
    row = await conn.fetchrow(_LOCK_MERCHANT, merchant_id)
    return None if row is None else rows.merchant(row)


async def insert_key(
    conn: Connection,
    key_id: str,
    merchant_id: str,
    key_type: KeyType,
    secret_enc: bytes | None,
    public_key_pem: str | None,
) -> None:
    await conn.execute(_INSERT_KEY, key_id, merchant_id, key_type.value, secret_enc, public_key_pem)


async def count_active_keys(conn: Connection, merchant_id: str) -> int:
    return int(await conn.fetchval(_COUNT_ACTIVE_KEYS, merchant_id))


async def revoke_key(conn: Connection, key_id: str) -> bool:
    """False when there is no such active key."""
    status = await conn.execute(_REVOKE_KEY, key_id)
    return status.endswith(" 1")


async def key_access(pool: Pool, key_id: str) -> tuple[MerchantKey, MerchantAccess] | None:
    """An active key and what its merchant's requests are admitted with (None: no such
    active key)."""
    row = await pool.fetchrow(_KEY_ACCESS, key_id)
    return None if row is None else (rows.merchant_key(row), rows.merchant_access(row))


async def merchant_access(pool: Pool, merchant_id: str) -> MerchantAccess | None:
    row = await pool.fetchrow(_MERCHANT_ACCESS, merchant_id)
    return None if row is None else rows.merchant_access(row)


async def set_status(
    db: Executor, merchant_id: str, status: MerchantStatus
) -> MerchantStatus | None:
    """Set the merchant's status; returns the one it had (None: no such merchant)."""
    before = await db.fetchval(_SET_STATUS, merchant_id, status.value)
    return None if before is None else MerchantStatus(before)


async def set_rate_limits(
    db: Executor, merchant_id: str, limits: RateLimitOverrides
) -> RateLimitOverrides | None:
    """Replace the merchant's budget overrides; returns them as stored (None: no such
    merchant)."""
    stored = await db.fetchval(_SET_RATE_LIMITS, merchant_id, rows.rate_limits_json(limits))
    return None if stored is None else rows.rate_limits(stored)


async def rotate_webhook_secret(
    conn: Connection, merchant_id: str, sealed: bytes, grace_s: float
) -> tuple[bool, datetime | None]:
    """Install a new (sealed) webhook secret; the current one stays valid as the previous secret
    for `grace_s` seconds (none when 0). Returns (merchant found, previous secret's expiry)."""
    row = await conn.fetchrow(_ROTATE_WEBHOOK_SECRET, merchant_id, sealed, grace_s)
    if row is None:
        return False, None
    expires: datetime | None = row["webhook_secret_prev_expires_at"]
    return True, expires
