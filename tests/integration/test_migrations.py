"""The migration runner against the real PostgreSQL: checksums recorded (and filled in for
databases that recorded versions without them), a changed applied file refused by name,
`-- migrate: no-transaction` files for `CREATE INDEX CONCURRENTLY`, one migrator at a time,
and a gateway that refuses to start on a schema that is behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.store.db import (
    NO_TRANSACTION,
    Migration,
    MigrationError,
    SchemaBehind,
    migrate,
    migration_files,
    pending_migrations,
    split_statements,
)
from tests.fixtures import PG_ADMIN, REDIS_URL, ROOT, start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture
async def empty_url() -> AsyncIterator[str]:
    """A database with nothing in it."""
    name = f"gw_mig_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"{PG_ADMIN.rpartition('/')[0]}/{name}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def conn(empty_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_url)
    yield connection
    await connection.close()


def files(folder: Path, **migrations: str) -> list[Migration]:
    """Write each `version=sql` into `folder` and read them back as the runner does."""
    folder.mkdir(exist_ok=True)
    for version, sql in migrations.items():
        (folder / f"{version}.sql").write_text(sql)
    return migration_files(folder)  # type: ignore[arg-type]


async def recorded(conn: asyncpg.Connection) -> dict[str, str | None]:
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    return {r["version"]: r["checksum"] for r in rows}


async def test_the_shipped_migrations_apply_once_with_their_checksums(
    conn: asyncpg.Connection,
) -> None:
    shipped = migration_files()
    assert await pending_migrations(conn) == [m.version for m in shipped]
    assert await migrate(conn) == [m.version for m in shipped]
    folder = ROOT / "gateway" / "store" / "migrations"
    assert await recorded(conn) == {
        m.version: hashlib.sha256((folder / f"{m.version}.sql").read_bytes()).hexdigest()
        for m in shipped
    }
    assert await migrate(conn) == [] and await pending_migrations(conn) == []


async def test_versions_recorded_without_checksums_get_them(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    # what a database migrated before checksums were kept looks like
    await conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
    assert await pending_migrations(conn) == []  # the gateway starts on it as it is
    assert await migrate(conn) == []
    assert await recorded(conn) == {m.version: m.checksum for m in migration_files()}


async def test_a_changed_applied_file_is_refused_by_name(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    first = files(tmp_path, **{"0001_a": "CREATE TABLE a (id int);\n"})
    assert await migrate(conn, first) == ["0001_a"]
    edited = files(
        tmp_path,
        **{"0001_a": "CREATE TABLE a (id bigint);\n", "0002_b": "CREATE TABLE b (id int);\n"},
    )
    with pytest.raises(MigrationError, match=r"0001_a\.sql changed after it was applied"):
        await migrate(conn, edited)
    # nothing ran: not even the new file after it
    assert await conn.fetchval("SELECT to_regclass('b')") is None
    assert list(await recorded(conn)) == ["0001_a"]


async def test_a_failing_migration_is_rolled_back_and_not_recorded(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    broken = files(tmp_path, **{"0001_a": "CREATE TABLE a (id int);\nSELECT 1/0;\n"})
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(conn, broken)
    assert await conn.fetchval("SELECT to_regclass('a')") is None
    assert await recorded(conn) == {}


NO_TX_INDEXES = f"""{NO_TRANSACTION}
-- indexes built without locking out writes; repeatable if a statement fails
CREATE INDEX CONCURRENTLY IF NOT EXISTS big_a ON big (a);
CREATE INDEX CONCURRENTLY IF NOT EXISTS big_b ON big (b) WHERE note <> 'a;b';
"""


async def test_a_no_transaction_file_runs_create_index_concurrently(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    table = "CREATE TABLE big (a int, b int, note text);\n"
    table += "INSERT INTO big SELECT g, g % 7, 'x' FROM generate_series(1, 5000) g;\n"
    batch = files(tmp_path, **{"0001_big": table, "0002_indexes": NO_TX_INDEXES})
    assert [m.transactional for m in batch] == [True, False]
    assert await migrate(conn, batch) == ["0001_big", "0002_indexes"]
    valid = await conn.fetch(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname LIKE 'big_%' ORDER BY 1"
    )
    assert [(r["relname"], r["indisvalid"]) for r in valid] == [("big_a", True), ("big_b", True)]
    assert (await recorded(conn))["0002_indexes"] == batch[1].checksum


async def test_without_the_marker_concurrently_fails_in_the_files_transaction(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    batch = files(
        tmp_path,
        **{
            "0001_big": "CREATE TABLE big (a int, b int, note text);\n",
            "0002_indexes": NO_TX_INDEXES.replace(NO_TRANSACTION, "-- no marker"),
        },
    )
    with pytest.raises(asyncpg.ActiveSQLTransactionError):
        await migrate(conn, batch)
    assert list(await recorded(conn)) == ["0001_big"]


async def test_two_migrators_at_once_apply_each_file_once(empty_url: str, tmp_path: Path) -> None:
    slow = "CREATE TABLE a (id int);\nSELECT pg_sleep(0.5);\n"
    index = f"{NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY a_id ON a (id);\n"
    batch = files(tmp_path, **{"0001_a": slow, "0002_index": index})
    conns = [await asyncpg.connect(empty_url) for _ in range(2)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(migrate(c, batch) for c in conns)), timeout=20
        )
    finally:
        for c in conns:
            await c.close()
    assert sorted(results, key=len) == [[], ["0001_a", "0002_index"]]


def test_statements_split_outside_quotes_bodies_and_comments() -> None:
    sql = """-- a comment; not a statement
CREATE TABLE t (note text DEFAULT 'a;b', "odd;name" int);
/* block; comment */ INSERT INTO t VALUES ('it''s; fine', 1);
CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
DO $$ BEGIN PERFORM 1; END $$;
;
"""
    assert split_statements(sql) == [
        """-- a comment; not a statement
CREATE TABLE t (note text DEFAULT 'a;b', "odd;name" int)""",
        "/* block; comment */ INSERT INTO t VALUES ('it''s; fine', 1)",
        "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
        "DO $$ BEGIN PERFORM 1; END $$",
    ]


# ---- the gateway and the schema -------------------------------------------------------------


async def test_the_gateway_refuses_a_schema_that_is_behind_unless_told_to_migrate(
    empty_url: str, redis_prefix: str
) -> None:
    with pytest.raises(SchemaBehind, match="gateway migrate"):
        await start_gateway(empty_url, redis_prefix)
    gw, server = await start_gateway(empty_url, redis_prefix, migrate_on_start=True)
    try:
        async with gw.http.get(gw.url + "/readyz") as resp:
            assert resp.status == 200
    finally:
        await gw.http.close()
        await server.close()
    conn = await asyncpg.connect(empty_url)
    try:
        assert await pending_migrations(conn) == []
    finally:
        await conn.close()


def test_gateway_serve_on_a_schema_behind_exits_naming_the_remedy(empty_url: str) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATABASE_URL": empty_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_PORT": "0",
        "GATEWAY_ROUTING_FILE": str(ROOT / "config" / "routing.yaml"),
        "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
        "GATEWAY_ALLOW_DEV_KEYS": "true",  # the shipped routing file's development keys
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "gateway: the database schema is behind this gateway" in done.stderr
    assert "Run `gateway migrate`" in done.stderr
    migrated = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "migrate"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied: 0001_core, ")
