"""The PostgreSQL pool (JSON codec, no session reset on release), its readiness check, and
migrations."""

from __future__ import annotations

import importlib.resources
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


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration shipped with the package, in order."""
    folder = importlib.resources.files("gateway.store").joinpath("migrations")
    found = sorted(
        (entry.name, entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return [(name.removesuffix(".sql"), sql) for name, sql in found]


async def migrate(conn: Connection) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; returns them."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
            log.info("migration_applied", version=version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied
