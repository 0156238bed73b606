"""Merchant status (API.md §1.4): a merchant that is not active reads but changes nothing; a
status change takes effect within 5 s in every process; the column, its CHECK and the
service functions (`set_merchant_status`, `set_rate_limits`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.domain.records import RateLimitOverrides
from gateway.domain.states import MerchantStatus
from gateway.services import merchants
from gateway.store.db import Pool, create_pool
from tests.fixtures import REDIS_URL, Gateway
from tests.redis_servers import gateway_on
from tests.support import Creds, MerchantClient


async def count(db: asyncpg.Pool, table: str) -> int:
    return int(await db.fetchval(f"SELECT count(*) FROM {table}"))


def refused(reply_status: int, code: str) -> bool:
    return (reply_status, code) == (403, "merchant_not_active")


@pytest.mark.parametrize(
    "status", [MerchantStatus.SUSPENDED, MerchantStatus.PENDING_REVIEW, MerchantStatus.REJECTED]
)
async def test_a_merchant_not_active_reads_but_changes_nothing(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
    db: asyncpg.Pool,
    status: MerchantStatus,
) -> None:
    # no key cache: the status is read at every request (the 5 s bound is tested below)
    async with gateway_on(database_url, redis_prefix, REDIS_URL, key_cache_ttl_s=0) as gw:
        client = gw.client(merchant)
        payment = (await client.create_payment()).json
        endpoint = (
            await client.request("POST", "/v1/webhook-endpoints", {"url": "https://shop.example/h", "events": ["payment.succeeded"]})
        ).json  # fmt: skip
        before = {t: await count(db, t) for t in ("payments", "refunds", "webhook_endpoints")}
        assert await merchants.set_merchant_status(db, merchant.merchant_id, status) is (
            MerchantStatus.ACTIVE
        )
        attempts = [
            await client.create_payment(),
            await client.request(
                "POST", "/v1/payments", {"merchant_order_id": "K1", "amount": 1, "currency": "CNY",
                                         "method": "card", "description": "x"},
                idempotency_key="idem-while-suspended",
            ),
            await client.request(
                "POST", f"/v1/payments/{payment['id']}/refunds",
                {"merchant_refund_id": "R1", "amount": 1},
            ),
            await client.request("POST", f"/v1/payments/{payment['id']}/close"),
            await client.request(
                "POST", "/v1/webhook-endpoints",
                {"url": "https://shop.example/h2", "events": ["payment.failed"]},
            ),
            await client.request("DELETE", f"/v1/webhook-endpoints/{endpoint['id']}"),
        ]  # fmt: skip
        for reply in attempts:
            assert refused(reply.status, reply.json["code"]), reply.body
        assert status.value.replace("_", " ") in attempts[0].json["detail"]
        assert {t: await count(db, t) for t in before} == before
        assert await count(db, "idempotency_keys") == 0  # a refusal is not stored
        # its reads keep working
        read = await client.request("GET", f"/v1/payments/{payment['id']}")
        assert (read.status, read.json["status"]) == (200, "pending")
        assert (await client.request("GET", "/v1/webhook-endpoints")).status == 200
        # active again: it may change things again
        await merchants.set_merchant_status(db, merchant.merchant_id, MerchantStatus.ACTIVE)
        assert (await client.create_payment()).status == 201


async def test_a_status_change_takes_effect_within_5_s_in_every_process(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
    db: asyncpg.Pool,
) -> None:
    # keys cached for a minute: the status is read again after 5 s all the same
    async with (
        gateway_on(database_url, redis_prefix, REDIS_URL, key_cache_ttl_s=60) as a,
        gateway_on(database_url, redis_prefix, REDIS_URL, key_cache_ttl_s=60) as b,
    ):
        clients = [a.client(merchant), b.client(merchant)]
        for client in clients:
            assert (await client.create_payment()).status == 201  # key and status cached

        async def seen(client: MerchantClient, changed: float, suspended: bool) -> None:
            """Until the change shows: no request that started more than 5 s after it (a
            little more for the clock reads) may be answered as before."""
            while True:
                started = time.monotonic()
                reply = await client.create_payment()
                if refused(reply.status, reply.json.get("code", "")) == suspended:
                    return
                assert reply.status == (201 if suspended else 403), reply.body
                assert started - changed <= 5.05, "the status change took more than 5 s"
                await asyncio.sleep(0.1)

        for status in (MerchantStatus.SUSPENDED, MerchantStatus.ACTIVE):
            await merchants.set_merchant_status(db, merchant.merchant_id, status)
            changed = time.monotonic()
            suspended = status is MerchantStatus.SUSPENDED
            await asyncio.gather(*(seen(client, changed, suspended) for client in clients))


async def test_a_new_merchant_is_active_and_a_status_outside_the_enum_is_refused(
    gateway: Gateway, merchant: Creds, db: asyncpg.Pool
) -> None:
    assert await db.fetchval(
        "SELECT status FROM merchants WHERE id = $1", merchant.merchant_id
    ) == ("active")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute(
            "UPDATE merchants SET status = 'closed' WHERE id = $1", merchant.merchant_id
        )
    assert caught.value.constraint_name == "merchants_status_check"
    with pytest.raises(merchants.MerchantError, match="no merchant mch_nobody"):
        await merchants.set_merchant_status(db, "mch_nobody", MerchantStatus.SUSPENDED)
    # inside the caller's transaction (a lifecycle step writes its audit entry beside it)
    async with db.acquire() as conn, conn.transaction():
        before = await merchants.set_merchant_status(
            conn, merchant.merchant_id, MerchantStatus.SUSPENDED
        )
        assert before is MerchantStatus.ACTIVE
        assert await merchants.set_merchant_status(
            conn, merchant.merchant_id, MerchantStatus.ACTIVE
        ) is (MerchantStatus.SUSPENDED)


@pytest.fixture
async def store_pool(database_url: str) -> AsyncIterator[Pool]:
    """A pool as the gateway makes them (jsonb as Python objects)."""
    pool = await create_pool(database_url, 1, 2)
    yield pool
    await pool.close()


async def test_rate_limit_overrides_are_stored_checked_and_replaced(
    store_pool: Pool, merchant: Creds, db: asyncpg.Pool
) -> None:
    stored = await merchants.set_rate_limits(
        store_pool, merchant.merchant_id, RateLimitOverrides(payments_per_s=5, other_per_s=0.5)
    )
    assert stored == RateLimitOverrides(payments_per_s=5, other_per_s=0.5)
    assert await db.fetchval(
        "SELECT rate_limits FROM merchants WHERE id = $1", merchant.merchant_id
    ) == ('{"other_per_s": 0.5, "payments_per_s": 5}')
    replaced = await merchants.set_rate_limits(
        store_pool, merchant.merchant_id, RateLimitOverrides(refunds_per_s=2)
    )
    assert replaced == RateLimitOverrides(refunds_per_s=2)  # the others back to the defaults
    for wrong in (0, -1, 2_000_000, float("nan")):
        with pytest.raises(merchants.MerchantError, match="payments_per_s must be above 0"):
            await merchants.set_rate_limits(
                store_pool, merchant.merchant_id, RateLimitOverrides(payments_per_s=wrong)
            )
    with pytest.raises(merchants.MerchantError, match="no merchant mch_nobody"):
        await merchants.set_rate_limits(store_pool, "mch_nobody", RateLimitOverrides())
    for raw in ('{"payments_per_s": 0}', '{"burst": 5}', '{"other_per_s": "7"}', "[]"):
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await db.execute(
                "UPDATE merchants SET rate_limits = $2::jsonb WHERE id = $1",
                merchant.merchant_id,
                raw,
            )
        assert caught.value.constraint_name == "merchants_rate_limits_check"
