"""The nonce cache's generations (migration 0008; what they mean: `gateway.auth.admission`).
Statements: `sql/nonce_cache.sql`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from gateway.domain.records import NonceCacheGeneration
from gateway.store import rows
from gateway.store.db import Connection, Pool
from gateway.store.queries import query

_LOCK = query("lock_nonce_generations")
_LATEST = query("latest_nonce_generation")
_INSERT = query("insert_nonce_generation")
_MARK_RECORDED = query("mark_nonce_generation_recorded")
_LOCK_KEY = 0x6761_7465_7761_7902  # pg_advisory_xact_lock key (0x…01 is the migrations')


@contextlib.asynccontextmanager
async def opening(pool: Pool) -> AsyncIterator[Connection]:
    """A transaction holding the lock under which generations are opened, one at a time
    across every process."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK, _LOCK_KEY)
        yield conn


async def latest(conn: Connection) -> NonceCacheGeneration | None:
    row = await conn.fetchrow(_LATEST)
    return None if row is None else rows.nonce_generation(row)


async def insert(
    conn: Connection, generation_id: str, run_id: str, replid: str, refuse_before: int | None
) -> NonceCacheGeneration:
    row = await conn.fetchrow(_INSERT, generation_id, run_id, replid, refuse_before)
    assert row is not None
    return rows.nonce_generation(row)


async def mark_recorded(
    pool: Pool, generation_id: str, run_id: str, replid: str, refuse_before: int | None
) -> None:
    """The generation holds nonces (written again if the table lacks it)."""
    await pool.execute(_MARK_RECORDED, generation_id, run_id, replid, refuse_before)
