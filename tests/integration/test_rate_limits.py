"""Per-merchant request budgets (API.md §1.7): the RateLimit-* headers on every answer within
budget, 429 with Retry-After over it (nothing created, the nonce consumed), one budget per
class, shared by every gateway process (two apps on one Redis), overrides per merchant, 503
when Redis is away, and one Redis round trip for the nonce and the budget together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis

from gateway.domain.records import RateLimitOverrides
from gateway.services import merchants
from gateway.store.db import create_pool
from tests.fixtures import REDIS_URL, Gateway
from tests.redis_servers import gateway_on, redis_server
from tests.support import Creds, Reply, payment_payload

# 4 payment creates at once, then one every 2 s: slow enough that a loaded machine cannot
# refill the budget between a test's requests
PAYMENTS = {"rate_limit_payments_per_s": 0.5, "rate_limit_burst_s": 8}
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def standing(reply: Reply) -> tuple[int, int, int]:
    limit, remaining, reset = (int(reply.headers[name]) for name in HEADERS)
    return limit, remaining, reset


async def payment_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM payments"))


@contextlib.asynccontextmanager
async def budgeted(database_url: str, redis_prefix: str, **settings: Any) -> AsyncIterator[Gateway]:
    # the status and the budget overrides read at every request: no waiting on the key cache
    async with gateway_on(
        database_url, redis_prefix, REDIS_URL, key_cache_ttl_s=0, **{**PAYMENTS, **settings}
    ) as gw:
        yield gw


async def test_answers_within_budget_carry_the_ratelimit_headers(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    async with budgeted(database_url, redis_prefix, rate_limit_other_per_s=10) as gw:
        client = gw.client(merchant)
        created = await client.create_payment()
        assert created.status == 201
        assert standing(created) == (4, 3, 2)  # 4 at once; whole again 2 s after this one
        second = await client.create_payment()
        assert standing(second)[:2] == (4, 2)
        # other requests have a budget of their own (10/s, 8 s of it at once), errors included
        read = await client.request("GET", f"/v1/payments/{created.json['id']}")
        missing = await client.request("GET", "/v1/payments/pay_nope")
        invalid = await client.request("POST", "/v1/payments", {"amount": "x"})
        assert (read.status, missing.status, invalid.status) == (200, 404, 400)
        assert standing(read)[:2] == (80, 79) and standing(missing)[:2] == (80, 78)
        assert standing(invalid)[:2] == (4, 1)  # counted, though refused after


async def test_over_budget_is_429_creates_nothing_and_consumes_the_nonce(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
    db: asyncpg.Pool,
) -> None:
    async with budgeted(database_url, redis_prefix) as gw:
        client = gw.client(merchant)
        for _ in range(4):
            assert (await client.create_payment()).status == 201
        raw = orjson.dumps(payment_payload())
        signed = client.auth_header("POST", "/v1/payments", raw)
        over = await client.request("POST", "/v1/payments", raw=raw, auth=signed)
        assert (over.status, over.json["code"]) == (429, "rate_limited")
        assert over.headers["Content-Type"].startswith("application/problem+json")
        assert 1 <= int(over.headers["Retry-After"]) <= 2
        assert standing(over)[:2] == (4, 0)
        assert await payment_count(db) == 4
        # the refused request cannot be sent again as it is (a copy could otherwise run
        # after the merchant's own, re-signed retry): re-sign to retry
        again = await client.request("POST", "/v1/payments", raw=raw, auth=signed)
        assert (again.status, again.json["code"]) == (401, "nonce_replayed")
        await asyncio.sleep(int(over.headers["Retry-After"]))
        retried = await client.request("POST", "/v1/payments", raw=raw)
        assert retried.status == 201
        assert await payment_count(db) == 5


async def test_budgets_are_shared_by_every_process(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
    db: asyncpg.Pool,
) -> None:
    async with (
        budgeted(database_url, redis_prefix) as a,
        budgeted(database_url, redis_prefix) as b,
    ):
        for gw in (a, b, a, b):
            assert (await gw.client(merchant).create_payment()).status == 201
        for gw in (a, b):
            over = await gw.client(merchant).create_payment()
            assert (over.status, over.json["code"]) == (429, "rate_limited")
    assert await payment_count(db) == 4


async def test_each_class_and_each_merchant_has_a_budget_of_its_own(
    gateway: Gateway,
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
) -> None:
    from tests.fixtures import new_merchant

    other_merchant = await new_merchant(database_url, name="Other shop")
    async with budgeted(database_url, redis_prefix, rate_limit_refunds_per_s=0.5) as gw:
        client = gw.client(merchant)
        payment = (await client.create_payment()).json
        for _ in range(3):
            assert (await client.create_payment()).status == 201
        assert (await client.create_payment()).status == 429
        refund = await client.request(
            "POST",
            f"/v1/payments/{payment['id']}/refunds",
            {"merchant_refund_id": "R1", "amount": 1},
        )
        # refused for what it is (a pending payment), not for the payments' budget
        assert (refund.status, refund.json["code"]) == (409, "invalid_state")
        assert standing(refund)[:2] == (4, 3)
        assert (await client.request("GET", f"/v1/payments/{payment['id']}")).status == 200
        assert (await gw.client(other_merchant).create_payment()).status == 201


async def test_a_merchants_overrides_replace_the_defaults(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    async with budgeted(database_url, redis_prefix) as gw:
        client = gw.client(merchant)
        assert standing(await client.create_payment())[0] == 4
        pool = await create_pool(database_url, 1, 2)
        try:
            await merchants.set_rate_limits(
                pool, merchant.merchant_id, RateLimitOverrides(payments_per_s=1.5)
            )
            assert standing(await client.create_payment())[0] == 12  # 8 s worth of 1.5/s
            await merchants.set_rate_limits(pool, merchant.merchant_id, RateLimitOverrides())
        finally:
            await pool.close()
        assert standing(await client.create_payment())[0] == 4


async def test_a_replayed_request_spends_no_budget(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    async with budgeted(database_url, redis_prefix) as gw:
        client = gw.client(merchant)
        raw = orjson.dumps(payment_payload())
        captured = client.auth_header("POST", "/v1/payments", raw)
        first = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
        assert standing(first)[:2] == (4, 3)
        for _ in range(10):
            copy = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
            assert (copy.status, copy.json["code"]) == (401, "nonce_replayed")
        assert standing(await client.create_payment())[:2] == (4, 2)


async def test_without_budgets_there_are_no_ratelimit_headers(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    async with budgeted(database_url, redis_prefix, rate_limits_enabled=False) as gw:
        for _ in range(6):
            reply = await gw.client(merchant).create_payment()
            assert reply.status == 201
            assert not set(HEADERS) & set(reply.headers)


async def test_with_redis_away_budgeted_requests_fail_closed(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool, tmp_path: Path
) -> None:
    with redis_server(tmp_path / "redis") as server:
        async with gateway_on(database_url, redis_prefix, server.url, **PAYMENTS) as gw:
            client = gw.client(merchant)
            assert (await client.create_payment()).status == 201
            server.stop()
            reply = await client.create_payment()
            assert (reply.status, reply.json["code"]) == (503, "service_unavailable")
            assert "replay cache is unavailable" in reply.json["detail"]
            assert not set(HEADERS) & set(reply.headers)
            server.start()
    assert await payment_count(db) == 1


async def test_one_redis_round_trip_checks_the_nonce_and_charges_the_budget(
    gateway: Gateway, merchant: Creds
) -> None:
    """What the performance work counts on: admitting a request is one Redis call (a GET
    needs nothing else of Redis)."""
    client = gateway.client(merchant)
    assert (await client.request("GET", "/v1/payments/pay_warm")).status == 404
    prefix = gateway.settings.redis_prefix.encode()
    watcher = aioredis.from_url(REDIS_URL)
    commands: list[dict[str, Any]] = []
    try:
        async with watcher.monitor() as monitor:

            async def watch() -> None:
                async for command in monitor.listen():
                    commands.append(command)

            listening = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            reply = await client.request("GET", "/v1/payments/pay_x")
            assert reply.status == 404 and "RateLimit-Limit" in reply.headers
            await asyncio.sleep(0.3)
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
    finally:
        await watcher.aclose()
    ours = [c for c in commands if prefix in str(c["command"]).encode()]
    sent = [c for c in ours if c["client_type"] != "lua"]
    assert [c["command"].split()[0] for c in sent] == ["EVALSHA"]
    inside = {c["command"].split()[0] for c in ours if c["client_type"] == "lua"}
    assert inside >= {"HMGET", "SET", "GET"}  # the generation, the nonce, the budget
