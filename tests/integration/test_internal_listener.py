"""The internal listener (API.md §4, gateway/app.py): with GATEWAY_INTERNAL_PORT set, /admin/…
and /metrics are served on GATEWAY_INTERNAL_HOST:GATEWAY_INTERNAL_PORT only — 404 on the main
listener, which keeps the merchant API, notifications, health and the simulators — and the
internal listener serves nothing else; without it, the main listener serves them all. The
listener opens and closes with the gateway."""

from __future__ import annotations

import socket

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.fixtures import start_gateway
from tests.support import Creds, free_port

TOKEN = "admin-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def status(http: aiohttp.ClientSession, url: str, auth: bool = True) -> int:
    async with http.get(url, headers=BEARER if auth else {}) as reply:
        return reply.status


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_the_operators_surface_moves_to_the_internal_listener(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    internal_port = free_port()
    gw, server = await start_gateway(
        database_url, redis_prefix, admin_token=TOKEN, internal_port=internal_port
    )
    internal = f"http://127.0.0.1:{internal_port}"
    try:
        for path in ("/admin/routing", "/admin/channels", "/metrics"):
            assert await status(gw.http, gw.url + path) == 404, path
            assert await status(gw.http, internal + path) == 200, path
        async with gw.http.post(internal + "/admin/routing/reload", headers=BEARER) as reply:
            assert reply.status == 200
        assert await status(gw.http, internal + "/admin/routing", auth=False) == 401
        # the main listener keeps everything else; the internal one serves nothing else
        for path in ("/healthz", "/readyz", "/openapi.json", "/sim/bank/control/faults"):
            assert await status(gw.http, gw.url + path) == 200, path
            assert await status(gw.http, internal + path) == 404, path
        created = await gw.client(merchant).create_payment()
        assert created.status == 201, created.body
        async with gw.http.get(internal + "/metrics") as reply:
            assert 'route="/v1/payments"' in await reply.text()  # one process, one registry
    finally:
        await gw.http.close()
        await server.close()
    assert not listening(internal_port)


async def test_without_an_internal_port_the_main_listener_serves_the_operators_surface(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    gw, server = await start_gateway(database_url, redis_prefix, admin_token=TOKEN)
    try:
        for path in ("/admin/routing", "/admin/channels", "/metrics", "/healthz"):
            assert await status(gw.http, gw.url + path) == 200, path
    finally:
        await gw.http.close()
        await server.close()


def test_the_internal_port_must_differ_from_the_main_one() -> None:
    from gateway.settings import Settings

    with pytest.raises(ValueError, match="GATEWAY_INTERNAL_PORT must differ from GATEWAY_PORT"):
        Settings(_env_file=None, port=8080, internal_port=8080)  # type: ignore[call-arg]
    assert Settings(_env_file=None, internal_port=9091).internal_host == "127.0.0.1"  # type: ignore[call-arg]
