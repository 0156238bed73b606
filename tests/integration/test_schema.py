"""The migrated schema against the code: every named statement of gateway/store/sql prepares
(PostgreSQL parses and plans it against the real tables)."""

from __future__ import annotations

import asyncpg

from gateway.store.queries import QUERIES


async def test_every_named_statement_prepares(db: asyncpg.Pool) -> None:
    assert len(QUERIES) > 50
    async with db.acquire() as conn:
        for name, sql in QUERIES.items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
