"""Merchants, their signing keys and webhook secrets."""

from __future__ import annotations

import asyncpg

from gateway.store.db import Connection, Pool


async def insert_merchant(
    conn: Connection, merchant_id: str, name: str, webhook_secret_enc: bytes
) -> None:
    await conn.execute(
        "INSERT INTO merchants (id, name, webhook_secret_enc) VALUES ($1, $2, $3)",
        merchant_id,
        name,
        webhook_secret_enc,
    )


async def insert_key(
    conn: Connection,
    key_id: str,
    merchant_id: str,
    key_type: str,
    secret_enc: bytes | None,
    public_key_pem: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO merchant_keys (id, merchant_id, key_type, secret_enc, public_key_pem)"
        " VALUES ($1, $2, $3, $4, $5)",
        key_id,
        merchant_id,
        key_type,
        secret_enc,
        public_key_pem,
    )


async def lock_merchant(conn: Connection, merchant_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM merchants WHERE id = $1 FOR UPDATE", merchant_id)


async def count_active_keys(conn: Connection, merchant_id: str) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM merchant_keys WHERE merchant_id = $1 AND status = 'active'",
        merchant_id,
    )
    return int(count)


async def revoke_key(conn: Connection, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE merchant_keys SET status = 'revoked', revoked_at = now()"
        " WHERE id = $1 AND status = 'active'",
        key_id,
    )
    return status.endswith(" 1")


async def active_key(pool: Pool, key_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT k.id, k.merchant_id, k.key_type, k.secret_enc, k.public_key_pem"
        " FROM merchant_keys k WHERE k.id = $1 AND k.status = 'active'",
        key_id,
    )


async def webhook_secret(pool: Pool, merchant_id: str) -> bytes | None:
    value = await pool.fetchval(
        "SELECT webhook_secret_enc FROM merchants WHERE id = $1", merchant_id
    )
    return bytes(value) if value is not None else None
