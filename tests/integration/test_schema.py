"""The migrated schema against the code: every named statement of gateway/store/sql prepares
(PostgreSQL parses and plans it against the real tables), and every status column allows
exactly its enum's values (one CHECK constraint each)."""

from __future__ import annotations

import re

import asyncpg

from gateway.store.queries import QUERIES
from tests.unit.gateway.test_status_checks import STATUS_COLUMNS


async def test_every_named_statement_prepares(db: asyncpg.Pool) -> None:
    assert len(QUERIES) > 50
    async with db.acquire() as conn:
        for name, sql in QUERIES.items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                raise AssertionError(f"{name}: {exc}") from exc


async def test_each_status_column_allows_exactly_its_enum(db: asyncpg.Pool) -> None:
    columns = await db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name IN ('status', 'state', 'outcome')"
    )
    assert {(c["table_name"], c["column_name"]) for c in columns} == set(STATUS_COLUMNS)
    for (table, column), states in STATUS_COLUMNS.items():
        checks = await db.fetch(
            "SELECT c.conname, pg_get_constraintdef(c.oid) AS def FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
            " WHERE c.contype = 'c' AND c.conrelid = $1::regclass AND a.attname = $2",
            table,
            column,
        )
        assert [c["conname"] for c in checks] == [f"{table}_{column}_check"], checks
        allowed = set(re.findall(r"'([^']*)'::text", checks[0]["def"]))
        assert allowed == {s.value for s in states}, (table, column)


async def test_a_state_outside_the_enum_is_refused(db: asyncpg.Pool) -> None:
    """payment_attempts.status had no constraint before migration 0006."""
    try:
        await db.execute(
            "INSERT INTO payment_attempts (id, payment_id, seq, channel, adapter,"
            " channel_order_id, status) VALUES ('att_x', 'pay_x', 1, 'c', 'a', 'o', 'paid')"
        )
    except asyncpg.CheckViolationError as exc:
        assert exc.constraint_name == "payment_attempts_status_check"
    else:
        raise AssertionError("a status outside AttemptStatus was stored")
