"""What the callback tests share: a merchant's HTTP endpoint on the loopback interface, an
event to hang deliveries on, and delivery rows written directly (as the outbox writes them, or
as the store held them before a rule existed)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.store.payments import CALLBACK_CHANNEL
from tests.fixtures import Gateway
from tests.support import Creds, free_port, wait_until


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 answering every method and path with `handler`; yields its
    base URL (`http://127.0.0.1:<port>`)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def paid_event(gw: Gateway, creds: Creds, db: asyncpg.Pool) -> str:
    """A card payment of the merchant, paid on the simulator, without destinations: its
    event."""
    created = await gw.client(creds).create_payment()
    assert created.status == 201, created.body
    async with gw.http.post(created.json["next_action"]["url"], json={"action": "pay"}) as r:
        assert r.status == 200

    async def find() -> str | None:
        value = await db.fetchval("SELECT id FROM events WHERE payment_id = $1", created.json["id"])
        return None if value is None else str(value)

    return str(await wait_until(find))


async def queue_deliveries(
    db: asyncpg.Pool, event_id: str, merchant_id: str, urls: list[str]
) -> list[str]:
    """Deliveries of the event to `urls`, due now, the dispatchers woken; returns their ids."""
    ids = [f"dlv_{merchant_id[-6:]}_{n}" for n in range(len(urls))]
    await db.executemany(
        "INSERT INTO callback_deliveries (id, event_id, merchant_id, url) VALUES ($1, $2, $3, $4)",
        [(i, event_id, merchant_id, u) for i, u in zip(ids, urls, strict=True)],
    )
    await db.execute("SELECT pg_notify($1, '')", CALLBACK_CHANNEL)
    return ids
