"""Merchants, their signing keys and their webhook secrets. Statements: `sql/merchants.sql`."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.records import KeyType, Merchant, MerchantKey
from gateway.store import rows
from gateway.store.db import Connection, Pool
from gateway.store.queries import query

_INSERT_MERCHANT = query("insert_merchant")
_LOCK_MERCHANT = query("lock_merchant")
_INSERT_KEY = query("insert_key")
_COUNT_ACTIVE_KEYS = query("count_active_keys")
_REVOKE_KEY = query("revoke_key")
_ACTIVE_KEY = query("active_key")
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


async def active_key(pool: Pool, key_id: str) -> MerchantKey | None:
    row = await pool.fetchrow(_ACTIVE_KEY, key_id)
    return None if row is None else rows.merchant_key(row)


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
