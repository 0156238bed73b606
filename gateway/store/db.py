"""The PostgreSQL pool (JSON codec, no session reset on release) and its readiness check, and
the migration runner: `migrations/*.sql` applied in the order of their names, each one's
SHA-256 recorded in `schema_migrations`, `-- migrate: no-transaction` files run outside a
transaction (see `migrate`)."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import TypeAlias

import asyncpg
import orjson
import structlog
from asyncpg.pool import PoolConnectionProxy

from gateway.store.queries import query

log = structlog.get_logger("store")

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
Executor: TypeAlias = "Pool | Connection"
"""Anything that runs a query: the pool (autocommit) or a connection (maybe in a transaction)."""

_PING = query("ping")
_MIGRATION_LOCK = 0x6761_7465_7761_7901  # pg_advisory_lock key: migrations run one at a time


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset on release. asyncpg's default runs `RESET ALL; UNLISTEN *; …` — one
    more round trip (and transaction) per query. The gateway sets no session state, takes no
    session advisory locks outside `migrate` (which releases its own), and asyncpg still rolls
    back any open transaction and drops listeners before calling this."""


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 20) -> Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def ping(pool: Pool) -> None:
    """One round trip: raises when the database cannot answer."""
    await pool.fetchval(_PING)


NO_TRANSACTION = "-- migrate: no-transaction"
"""A migration file whose first line is this runs statement by statement outside a
transaction (for `CREATE INDEX CONCURRENTLY`); every other file runs in one transaction."""
_LOCK_POLL_S = 0.5


class MigrationError(Exception):
    """The migrations cannot be applied (a file changed after it was applied), or the schema
    is not the one this gateway needs."""


class SchemaBehind(MigrationError):
    """The database lacks migrations this gateway ships."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    """The file name without `.sql` (`0003_webhooks`): files apply in the order of names."""
    sql: str
    checksum: str
    """SHA-256 (hex) of the file's bytes, recorded when it is applied."""

    @property
    def transactional(self) -> bool:
        return self.sql.lstrip("\ufeff").split("\n", 1)[0].strip() != NO_TRANSACTION


def migration_files(folder: Traversable | None = None) -> list[Migration]:
    """Every migration in `folder` (default: the ones shipped with the package), in order."""
    if folder is None:
        folder = importlib.resources.files("gateway.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            raw = entry.read_bytes()
            found.append(
                Migration(
                    entry.name.removesuffix(".sql"),
                    raw.decode("utf-8"),
                    hashlib.sha256(raw).hexdigest(),
                )
            )
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: Connection, files: list[Migration] | None = None) -> list[str]:
    """Apply the migrations not yet applied (default: the package's), one at a time across
    every process (an advisory lock); returns the versions applied.

    Each applied migration's SHA-256 is recorded; versions recorded without one (before
    checksums were kept) get the file's now. A file that changed after it was applied is
    refused (MigrationError naming it) before anything runs. A transactional file runs in one
    transaction with its record. A `-- migrate: no-transaction` file runs statement by
    statement, each in its own implicit transaction, and is recorded after the last: if one
    fails, the statements before it stay done and the whole file runs again next time, so
    write every statement to be repeatable (`CREATE INDEX CONCURRENTLY IF NOT EXISTS`, and
    `DROP INDEX CONCURRENTLY IF EXISTS` first when a failed build may have left an invalid
    index behind).
    """
    files = migration_files() if files is None else files
    applied: list[str] = []
    await _lock(conn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text")
        done = await _recorded(conn)
        _refuse_changed(files, done)
        for migration in files:
            if migration.version not in done:
                continue
            if done[migration.version] is None:
                await conn.execute(
                    "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                    migration.version,
                    migration.checksum,
                )
        for migration in files:
            if migration.version in done:
                continue
            await _apply(conn, migration)
            applied.append(migration.version)
            log.info(
                "migration_applied",
                version=migration.version,
                transactional=migration.transactional,
            )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def pending_migrations(conn: Connection, files: list[Migration] | None = None) -> list[str]:
    """The versions of `files` (default: the package's) the database has not applied."""
    files = migration_files() if files is None else files
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = await _recorded(conn) if exists else {}
    return [m.version for m in files if m.version not in done]


async def require_current_schema(conn: Connection) -> None:
    """Raise SchemaBehind, naming the migrations missing, unless every one is applied."""
    missing = await pending_migrations(conn)
    if missing:
        raise SchemaBehind(
            f"the database schema is behind this gateway: {len(missing)} migration"
            f"{'s' if len(missing) != 1 else ''} not applied ({', '.join(missing)}). Run "
            "`gateway migrate`, or start with `gateway serve --migrate` "
            "(GATEWAY_MIGRATE_ON_START=true)."
        )


async def _lock(conn: Connection) -> None:
    """Take the migration lock, polling rather than waiting in one statement: a session
    blocked in pg_advisory_lock holds a snapshot, which a `CREATE INDEX CONCURRENTLY` run by
    the holder would wait for (a deadlock)."""
    waiting = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK):
        if not waiting:
            log.info("migration_lock_wait", hint="another process is migrating")
            waiting = True
        await asyncio.sleep(_LOCK_POLL_S)


async def _recorded(conn: Connection) -> dict[str, str | None]:
    columns = await conn.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'schema_migrations' AND table_schema = current_schema()"
    )
    if "checksum" not in {row["column_name"] for row in columns}:
        rows = await conn.fetch("SELECT version, NULL AS checksum FROM schema_migrations")
    else:
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {row["version"]: row["checksum"] for row in rows}


def _refuse_changed(files: list[Migration], done: dict[str, str | None]) -> None:
    changed = [m for m in files if done.get(m.version) not in (None, m.checksum)]
    if changed:
        names = ", ".join(f"{m.version}.sql" for m in changed)
        raise MigrationError(
            f"migration file{'s' if len(changed) != 1 else ''} {names} changed after "
            f"{'they were' if len(changed) != 1 else 'it was'} applied (the SHA-256 recorded in "
            "schema_migrations differs): restore the applied version and put the change in a "
            "new migration"
        )


async def _apply(conn: Connection, migration: Migration) -> None:
    record = "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"
    if migration.transactional:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(record, migration.version, migration.checksum)
        return
    for statement in split_statements(migration.sql):
        await conn.execute(statement)
    await conn.execute(record, migration.version, migration.checksum)


def split_statements(sql: str) -> list[str]:
    """The statements of a SQL script, split at the semicolons that end them (not those in
    quotes, quoted identifiers, dollar-quoted bodies or comments); empty ones dropped."""
    statements: list[str] = []
    start = i = 0
    while i < len(sql):
        char = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = len(sql) if end < 0 else end + 2
        elif char in "'\"":
            end = i + 1
            while end < len(sql):
                if sql[end] == char:
                    if sql.startswith(char * 2, end):  # '' or "" inside: an escaped quote
                        end += 2
                        continue
                    break
                end += 1
            i = end + 1
        elif char == "$" and (tag := _DOLLAR_TAG.match(sql, i)) is not None:
            end = sql.find(tag.group(0), tag.end())
            i = len(sql) if end < 0 else end + len(tag.group(0))
        elif char == ";":
            statements.append(sql[start:i])
            start = i = i + 1
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _has_code(s)]


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _has_code(statement: str) -> bool:
    for line in statement.splitlines():
        code = line.split("--", 1)[0].strip()
        if code:
            return True
    return False
