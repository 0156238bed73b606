"""Delivery capacity shared fairly (issue 13): at most `GATEWAY_CALLBACK_MAX_PER_MERCHANT`
attempts in flight per merchant and `GATEWAY_CALLBACK_MAX_PER_HOST` per destination host, across
every gateway process (leases in Redis), so that one merchant's many slow endpoints cannot hold
the slots another merchant's callbacks need; a delivery that finds no slot is put back for a
moment, not counted as an attempt; with Redis away each process keeps the caps by itself."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.api.context import SERVICES
from gateway.auth.secretbox import SecretBox
from gateway.services.callbacks import CallbackDispatcher
from tests.fixtures import MASTER_KEY, make_settings, new_merchant, start_gateway
from tests.integration.callback_support import paid_event, queue_deliveries, serving
from tests.support import free_port, wait_until


@dataclass
class SlowEndpoints:
    """Merchants' endpoints on one server: `/slow/...` answers after `delay_s`, anything else at
    once. Counts what is in flight, per merchant (the path's first segment after /slow/ or
    /fast/) and in all."""

    delay_s: float = 2.0
    base: str = ""
    in_flight: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    arrived: dict[str, float] = field(default_factory=dict)
    """Path -> when it arrived (monotonic)."""

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return self.base.replace("127.0.0.1", host) + path

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        owner = request.path.split("/")[2]
        self.arrived[request.path] = time.monotonic()
        for key in (owner, "all"):
            self.in_flight[key] += 1
            self.peak[key] = max(self.peak[key], self.in_flight[key])
        try:
            if request.path.startswith("/slow/"):
                await asyncio.sleep(self.delay_s)
        finally:
            for key in (owner, "all"):
                self.in_flight[key] -= 1
        return web.Response(text="ok")


@pytest.fixture
async def endpoints() -> AsyncIterator[SlowEndpoints]:
    rec = SlowEndpoints()
    async with serving(rec.handle) as rec.base:
        yield rec


async def all_succeeded(db: asyncpg.Pool, count: int, within: float = 30.0) -> list[asyncpg.Record]:
    async def done() -> list[asyncpg.Record] | None:
        rows = await db.fetch("SELECT * FROM callback_deliveries")
        ok = [r for r in rows if r["status"] == "succeeded"]
        return rows if len(ok) == count else None

    rows: list[asyncpg.Record] = await wait_until(done, within=within)
    return rows


async def assert_each_attempted_once(db: asyncpg.Pool, rows: list[asyncpg.Record]) -> None:
    """A delivery put back for want of a slot was not attempted: one attempt each, no error."""
    assert {r["attempts"] for r in rows} == {1}
    attempts = await db.fetch("SELECT delivery_id, status_code, error FROM callback_attempts")
    assert sorted(a["delivery_id"] for a in attempts) == sorted(r["id"] for r in rows)
    assert {(a["status_code"], a["error"]) for a in attempts} == {(200, None)}


async def test_a_merchant_with_many_slow_endpoints_cannot_delay_another(
    database_url: str, redis_prefix: str, endpoints: SlowEndpoints, db: asyncpg.Pool
) -> None:
    gw, server = await start_gateway(
        database_url,
        redis_prefix,
        dispatcher_concurrency=6,
        callback_max_per_merchant=2,
        callback_max_per_host=100,
    )
    try:
        greedy, other = await new_merchant(database_url), await new_merchant(database_url)
        greedy_event = await paid_event(gw, greedy, db)
        other_event = await paid_event(gw, other, db)
        endpoints.delay_s = 3.0
        await queue_deliveries(db, greedy_event, greedy.merchant_id,
                    [endpoints.url(f"/slow/greedy/{n}") for n in range(6)])  # fmt: skip

        async def greedy_busy() -> bool:
            return endpoints.in_flight["greedy"] > 0

        async def other_arrived() -> bool:
            return "/fast/other/1" in endpoints.arrived

        await wait_until(greedy_busy)
        queued_at = time.monotonic()
        await queue_deliveries(db, other_event, other.merchant_id, [endpoints.url("/fast/other/1")])
        await wait_until(other_arrived, within=5)
        waited = endpoints.arrived["/fast/other/1"] - queued_at
        rows = await all_succeeded(db, 7, within=40)
    finally:
        await gw.http.close()
        await server.close()
    assert waited < 1.5, waited  # not after the greedy merchant's 3 s answers
    assert endpoints.peak["greedy"] == 2
    await assert_each_attempted_once(db, rows)


async def test_two_gateways_share_the_merchant_cap(
    database_url: str, redis_prefix: str, endpoints: SlowEndpoints, db: asyncpg.Pool
) -> None:
    """Two gateway processes (two apps here) on one database and one Redis: each may run 2 of a
    merchant's attempts by its own count, and both together still run 2; what the shared cap
    refused went back and was delivered later, one attempt each."""
    caps = {"callback_max_per_merchant": 2, "callback_max_per_host": 100}
    first, first_server = await start_gateway(database_url, redis_prefix, **caps)
    second, second_server = await start_gateway(database_url, redis_prefix, **caps)
    try:
        a, b = await new_merchant(database_url), await new_merchant(database_url)
        endpoints.delay_s = 1.0
        # 10 slow deliveries each, to distinct URLs (a's on 127.0.0.1, b's on localhost)
        await queue_deliveries(db, await paid_event(first, a, db), a.merchant_id,
                    [endpoints.url(f"/slow/a/{n}") for n in range(10)])  # fmt: skip
        await queue_deliveries(db, await paid_event(second, b, db), b.merchant_id,
                    [endpoints.url(f"/slow/b/{n}", host="localhost") for n in range(10)])  # fmt: skip
        rows = await all_succeeded(db, 20, within=60)
        dispatchers = [gw.app[SERVICES].dispatcher for gw in (first, second)]
    finally:
        for gw, server in ((first, first_server), (second, second_server)):
            await gw.http.close()
            await server.close()
    assert endpoints.peak["a"] == 2 and endpoints.peak["b"] == 2, endpoints.peak
    assert sum(d.put_backs for d in dispatchers) > 0  # the shared cap refused what one allowed
    await assert_each_attempted_once(db, rows)


async def test_the_host_cap_holds_across_merchants_and_gateways(
    database_url: str, redis_prefix: str, endpoints: SlowEndpoints, db: asyncpg.Pool
) -> None:
    caps = {"callback_max_per_merchant": 10, "callback_max_per_host": 3}
    first, first_server = await start_gateway(database_url, redis_prefix, **caps)
    second, second_server = await start_gateway(database_url, redis_prefix, **caps)
    try:
        merchants = [await new_merchant(database_url) for _ in range(3)]
        endpoints.delay_s = 0.5
        for n, creds in enumerate(merchants):
            gw = (first, second)[n % 2]
            await queue_deliveries(db, await paid_event(gw, creds, db), creds.merchant_id,
                        [endpoints.url(f"/slow/m{n}/{i}") for i in range(4)])  # fmt: skip
        rows = await all_succeeded(db, 12, within=40)
    finally:
        for gw, server in ((first, first_server), (second, second_server)):
            await gw.http.close()
            await server.close()
    assert endpoints.peak["all"] == 3, endpoints.peak
    await assert_each_attempted_once(db, rows)


async def test_with_redis_away_each_process_keeps_the_caps_itself(
    database_url: str, redis_prefix: str, endpoints: SlowEndpoints, db: asyncpg.Pool
) -> None:
    """Deliveries are not money: with Redis unreachable they go on, each process holding the
    caps by itself (so N processes may together reach N times a cap)."""
    gw, server = await start_gateway(database_url, redis_prefix, background=False)
    away = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    settings = make_settings(0, redis_prefix, callback_max_per_merchant=2, dispatcher_poll_s=0.1)
    dispatcher = CallbackDispatcher.from_settings(
        settings, gw.app[SERVICES].pool, SecretBox(MASTER_KEY), away
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(dispatcher.run(stop))
    try:
        creds = await new_merchant(database_url)
        endpoints.delay_s = 0.4
        await queue_deliveries(db, await paid_event(gw, creds, db), creds.merchant_id,
                    [endpoints.url(f"/slow/m/{n}") for n in range(6)])  # fmt: skip
        rows = await all_succeeded(db, 6)
    finally:
        stop.set()
        await runner
        await away.aclose()
        await gw.http.close()
        await server.close()
    assert endpoints.peak["m"] == 2
    await assert_each_attempted_once(db, rows)


async def test_a_slot_whose_process_died_is_free_again_when_its_lease_ends(
    redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    from gateway.services.callback_slots import SlotLeases

    slots = SlotLeases(redis_client, redis_prefix, per_merchant=1, per_host=5)
    taken = await slots.acquire("mch_1", "shop.example", lease_s=0.3)
    assert taken.granted
    refused = await slots.acquire("mch_1", "other.example", lease_s=0.3)
    assert (refused.granted, refused.full) == (False, "merchant")
    # the holder dies: nothing releases its slot, the lease runs out
    await asyncio.sleep(0.4)
    again = await slots.acquire("mch_1", "other.example", lease_s=0.3)
    assert again.granted
    await slots.release(again)
    assert (await slots.acquire("mch_1", "shop.example", lease_s=1)).granted
