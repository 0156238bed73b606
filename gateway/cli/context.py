"""What the commands share: settings, the database and Redis endpoints (embedded ones started
when no URL is set), the secret box, and running a job with a database pool."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.app import Endpoints
    from gateway.auth.secretbox import SecretBox
    from gateway.store.db import Pool

T = TypeVar("T")


def load_settings(**overrides: Any) -> Settings:
    """The settings (GATEWAY_* and gateway.env), or exit with pydantic's message, which
    names the variable."""
    try:
        return Settings(**overrides)
    except Exception as exc:
        raise SystemExit(f"gateway: bad settings: {exc}") from None


def resolve_endpoints(settings: Settings) -> Endpoints:
    """The database and Redis URLs, starting the embedded servers for the ones not set (or
    exit naming what to install or set)."""
    from gateway.app import Endpoints

    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url is None or redis_url is None:
        from gateway.embedded import EmbeddedError, start_embedded

        try:
            embedded = start_embedded(
                settings.var_dir, postgres=database_url is None, redis=redis_url is None
            )
        except EmbeddedError as exc:  # its message names the remedy
            raise SystemExit(f"gateway: {exc}") from None
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
        print(f"gateway: embedded services under {settings.var_dir}/", file=sys.stderr)
    assert database_url is not None and redis_url is not None
    return Endpoints(database_url=database_url, redis_url=redis_url)


def secret_box(settings: Settings) -> SecretBox:
    """The box that seals merchants' secrets (and opens those sealed under
    GATEWAY_MASTER_KEY_PREVIOUS too), or exit naming the setting that is wrong."""
    from gateway.app import master_key_box

    try:
        box = master_key_box(settings)
    except ValueError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    if box is None:
        raise SystemExit("gateway: GATEWAY_MASTER_KEY is not set (32 bytes, URL-safe base64)")
    return box


async def with_pool(settings: Settings, job: Callable[[Pool], Awaitable[T]]) -> T:
    """Run `job` with a small pool on the gateway's database, migrated first when it lacks a
    migration (a one-shot command brings the schema up to date as it always has; `gateway
    serve` does not). A database already up to date is not touched, so the commands also run
    as the gateway's own role (`gateway_app`), which may not migrate."""
    from gateway import logs
    from gateway.store.db import create_pool, migrate, pending_migrations

    logs.bind_job()  # a command is one job (run by asyncio.run: a context of its own)
    endpoints = resolve_endpoints(settings)
    pool = await create_pool(endpoints.database_url, 1, 2)
    try:
        async with pool.acquire() as conn:
            if await pending_migrations(conn):
                await migrate(conn)
        return await job(pool)
    finally:
        await pool.close()


def print_record(data: dict[str, Any], as_json: bool) -> None:
    """A command's answer on stdout: indented JSON, or one `key: value` line per member."""
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")
