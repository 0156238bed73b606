"""Shared fixtures over the real PostgreSQL and Redis (imported by the integration and e2e
conftest files): every test gets its own database (cloned from a
template migrated once per run) and its own Redis key prefix."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.auth.secretbox import SecretBox, generate_master_key
from gateway.auth.signature import KeyType
from gateway.services import merchants
from gateway.settings import Settings
from gateway.store.db import migrate
from tests.support import Creds, MerchantClient, Receiver, free_port

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = secrets.token_hex(3)
MASTER_KEY = generate_master_key()


def _db_url(name: str) -> str:
    base, _, _ = PG_ADMIN.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    name = f"gw_tpl_{RUN_ID}_{secrets.token_hex(2)}"  # one per conftest that imports this

    async def setup() -> None:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(_db_url(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def teardown() -> None:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(setup())
    yield name
    asyncio.run(teardown())


_counter = iter(range(1, 1_000_000))


@pytest.fixture
async def database_url(template_db: str) -> AsyncIterator[str]:
    name = f"gw_t_{RUN_ID}_{next(_counter)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield _db_url(name)
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{RUN_ID}:{secrets.token_hex(4)}:"


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test's database, for assertions."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


def make_settings(port: int, redis_prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "redis_prefix": redis_prefix,
        "master_key": MASTER_KEY,
        "routing_file": ROOT / "config" / "routing.yaml",
        "config_dir": ROOT / "config",
        "simulators": True,
        "sim_notify_time_scale": 0.001,
        "callback_allow_private": True,
        "webhook_retry_schedule": "0.2,0.4,0.8",
        "sync_schedule": "0.5,1,2",
        "dispatcher_poll_s": 0.2,
        "routing_poll_s": 0.2,
        "db_pool_max": 30,
        "log_json": True,
        "allow_dev_keys": True,  # the shipped routing file trusts the development keys
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Gateway:
    url: str
    app: web.Application
    server: TestServer
    settings: Settings
    http: aiohttp.ClientSession
    database_url: str

    def client(self, creds: Creds) -> MerchantClient:
        return MerchantClient(self.url, creds, self.http)


async def start_gateway(
    database_url: str, redis_prefix: str, **overrides: Any
) -> tuple[Gateway, TestServer]:
    from gateway.app import Endpoints, create_app  # imported late: unit tests stay light

    port = free_port()
    settings = make_settings(port, redis_prefix, **overrides)
    app = create_app(settings, Endpoints(database_url=database_url, redis_url=REDIS_URL))
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    http = aiohttp.ClientSession()
    return Gateway(f"http://127.0.0.1:{port}", app, server, settings, http, database_url), server


@pytest.fixture
async def gateway(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[Gateway]:
    gw, server = await start_gateway(database_url, redis_prefix)
    yield gw
    await gw.http.close()
    await server.close()


async def new_merchant(
    database_url: str, key_type: KeyType = KeyType.HMAC_SHA256, name: str = "Test shop"
) -> Creds:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    private_key: Any = None
    pem = None
    if key_type is KeyType.ED25519:
        private_key = ed25519.Ed25519PrivateKey.generate()
    elif key_type is KeyType.RSA_SHA256:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if private_key is not None:
        pem = (
            private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        issued, webhook_secret = await merchants.create_merchant(
            pool, SecretBox(MASTER_KEY), name, key_type, pem
        )
    finally:
        await pool.close()
    return Creds(
        merchant_id=issued.merchant_id,
        key_id=issued.key_id,
        key_type=key_type,
        secret=issued.secret,
        private_key=private_key,
        webhook_secret=webhook_secret,
    )


@pytest.fixture
async def merchant(database_url: str) -> Creds:
    return await new_merchant(database_url)


@pytest.fixture
async def client(gateway: Gateway, merchant: Creds) -> MerchantClient:
    return gateway.client(merchant)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", rec.handle)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    rec.url = str(server.make_url("/hooks/merchant"))
    yield rec
    await server.close()
