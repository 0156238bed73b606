"""Request authentication (API.md §1.1): every failure code, all three algorithms, key
rotation, failing closed when Redis is down, the nonce cache's generations (a lost cache
refuses what was signed before the loss; a new one refuses nothing), and cheap refusals
(unknown key ids remembered, failed authentications budgeted per source address)."""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.auth.secretbox import SecretBox
from gateway.auth.signature import KeyType
from gateway.services import merchants as merchant_service
from tests.fixtures import MASTER_KEY, REDIS_URL, Gateway, new_merchant
from tests.redis_servers import gateway_on
from tests.support import Creds, MerchantClient


async def payment_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM payments"))


async def test_missing_header_is_malformed(client: MerchantClient, db: asyncpg.Pool) -> None:
    reply = await client.request("POST", "/v1/payments", {"x": 1}, auth="")
    assert reply.status == 401
    problem = reply.json
    assert problem["code"] == "malformed_authorization"
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert set(problem) >= {"type", "title", "status", "detail", "code", "request_id"}
    assert problem["request_id"] == reply.headers["X-Request-Id"]
    assert await payment_count(db) == 0


async def test_unknown_key(gateway: Gateway, merchant: Creds, db: asyncpg.Pool) -> None:
    ghost = Creds("mch_x", "key_doesnotexist", KeyType.HMAC_SHA256, secret="sk_nope")
    reply = await gateway.client(ghost).create_payment()
    assert (reply.status, reply.json["code"]) == (401, "unknown_key")
    assert await payment_count(db) == 0


async def test_algorithm_mismatch(client: MerchantClient) -> None:
    header = client.auth_header("GET", "/v1/payments/pay_x", b"").replace(
        "GW1-HMAC-SHA256", "GW1-ED25519"
    )
    reply = await client.request("GET", "/v1/payments/pay_x", auth=header)
    assert (reply.status, reply.json["code"]) == (401, "algorithm_mismatch")


async def test_invalid_signature_creates_nothing(
    gateway: Gateway, merchant: Creds, db: asyncpg.Pool
) -> None:
    forged = Creds(merchant.merchant_id, merchant.key_id, KeyType.HMAC_SHA256, secret="sk_wrong")
    reply = await gateway.client(forged).create_payment()
    assert (reply.status, reply.json["code"]) == (401, "invalid_signature")
    assert await payment_count(db) == 0


async def test_body_tampering_is_an_invalid_signature(client: MerchantClient) -> None:
    header = client.auth_header("POST", "/v1/payments", b'{"amount": 1}')
    reply = await client.request("POST", "/v1/payments", raw=b'{"amount": 2}', auth=header)
    assert (reply.status, reply.json["code"]) == (401, "invalid_signature")


@pytest.mark.parametrize("skew", [-301, 301, -10_000])
async def test_timestamp_out_of_window(client: MerchantClient, skew: int) -> None:
    header = client.auth_header("GET", "/v1/payments/pay_x", b"", timestamp=int(time.time()) + skew)
    reply = await client.request("GET", "/v1/payments/pay_x", auth=header)
    assert (reply.status, reply.json["code"]) == (401, "timestamp_out_of_window")


async def test_nonce_replayed(client: MerchantClient, db: asyncpg.Pool) -> None:
    body_req = {"merchant_order_id": "N1", "amount": 100, "currency": "CNY", "method": "card",
                "description": "x"}  # fmt: skip
    import orjson

    raw = orjson.dumps(body_req)
    header = client.auth_header("POST", "/v1/payments", raw, nonce="fixed-nonce-123456")
    first = await client.request("POST", "/v1/payments", raw=raw, auth=header)
    assert first.status == 201
    again = await client.request("POST", "/v1/payments", raw=raw, auth=header)
    assert (again.status, again.json["code"]) == (401, "nonce_replayed")
    assert await payment_count(db) == 1


def order(merchant_order_id: str) -> bytes:
    return orjson.dumps(
        {"merchant_order_id": merchant_order_id, "amount": 100, "currency": "CNY",
         "method": "card", "description": "x"}
    )  # fmt: skip


async def generations(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM nonce_cache_generations ORDER BY opened_at"))


async def drop_keys(redis_client: aioredis.Redis, prefix: str) -> None:
    """Redis restarted empty or flushed, as far as this gateway can tell: its keys go."""
    keys = [key async for key in redis_client.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis_client.delete(*keys)


async def test_a_request_signed_before_the_nonce_cache_was_lost_is_refused(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    prefix = gateway.settings.redis_prefix
    raw = order("E1")
    captured = client.auth_header("POST", "/v1/payments", raw, nonce="captured-nonce-0001")
    first = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
    assert first.status == 201
    [opened] = await generations(db)  # opened when the gateway started; it holds a nonce now
    assert opened["nonces_recorded"] and opened["refuse_before"] is None
    # the nonce cache is lost (flushed; here: this gateway's keys go), the captured request's
    # nonce with it, and its timestamp is still inside the 300 s window
    await drop_keys(redis_client, prefix)
    replay = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
    assert (replay.status, replay.json["code"]) == (503, "service_unavailable")
    assert "sign the request again" in replay.json["detail"]
    assert not await redis_client.exists(f"{prefix}nonce:{client.creds.key_id}:captured-nonce-0001")
    [_, after_loss] = await generations(db)
    # refused: everything signed up to the second the loss was found, included
    assert after_loss["refuse_before"] > int(captured.split('timestamp="')[1].split('"')[0])
    assert not after_loss["nonces_recorded"]
    # lost again before it recorded anything: what the loss refused stays refused
    await drop_keys(redis_client, prefix)
    again = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
    assert (again.status, again.json["code"]) == (503, "service_unavailable")
    [*_, latest] = await generations(db)
    assert latest["refuse_before"] == after_loss["refuse_before"]
    # the merchant's own retry, signed now, is answered as usual (the existing payment)
    await asyncio.sleep(max(0.0, latest["refuse_before"] - time.time()))
    retried = await client.request("POST", "/v1/payments", raw=raw)
    assert retried.status == 200 and retried.json["id"] == first.json["id"]
    assert await payment_count(db) == 1


async def test_a_new_deployment_accepts_a_request_signed_minutes_ago(
    client: MerchantClient, db: asyncpg.Pool
) -> None:
    """Nothing can be replayed when no nonce was ever recorded (API.md §1.1): a request signed
    before the gateway (and its nonce cache) started is not refused for it."""
    raw = order("NEW1")
    signed_before = client.auth_header(
        "POST", "/v1/payments", raw, timestamp=int(time.time()) - 120
    )
    reply = await client.request("POST", "/v1/payments", raw=raw, auth=signed_before)
    assert reply.status == 201, reply.body
    [generation] = await generations(db)
    assert generation["refuse_before"] is None and generation["nonces_recorded"]


async def test_a_cache_lost_before_it_held_a_nonce_refuses_nothing(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    await drop_keys(redis_client, gateway.settings.redis_prefix)  # e.g. Redis restarted, empty
    raw = order("NEW2")
    signed_before = client.auth_header(
        "POST", "/v1/payments", raw, timestamp=int(time.time()) - 120
    )
    reply = await client.request("POST", "/v1/payments", raw=raw, auth=signed_before)
    assert reply.status == 201, reply.body
    assert [g["refuse_before"] for g in await generations(db)] == [None, None]


async def test_a_gateway_restart_refuses_nothing(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    async with gateway_on(database_url, redis_prefix, REDIS_URL) as first:
        warm = await first.client(merchant).create_payment()
        assert warm.status == 201
        raw = order("R1")
        signed_meanwhile = first.client(merchant).auth_header("POST", "/v1/payments", raw)
    async with gateway_on(database_url, redis_prefix, REDIS_URL) as second:
        reply = await second.client(merchant).request(
            "POST", "/v1/payments", raw=raw, auth=signed_meanwhile
        )
        assert reply.status == 201, reply.body


@pytest.mark.parametrize("key_type", [KeyType.ED25519, KeyType.RSA_SHA256])
async def test_asymmetric_merchants(gateway: Gateway, key_type: KeyType) -> None:
    creds = await new_merchant(gateway.database_url, key_type)
    client = gateway.client(creds)
    reply = await client.create_payment()
    assert reply.status == 201, reply.body
    got = await client.request("GET", f"/v1/payments/{reply.json['id']}")
    assert got.status == 200 and got.json["id"] == reply.json["id"]


async def test_rotation_two_active_keys_then_revoke(gateway: Gateway, merchant: Creds) -> None:
    pool = await asyncpg.create_pool(gateway.database_url, min_size=1, max_size=2)
    assert pool is not None
    box = SecretBox(MASTER_KEY)
    try:
        second = await merchant_service.rotate_key(
            pool, box, merchant.merchant_id, KeyType.HMAC_SHA256, None
        )
        with pytest.raises(merchant_service.MerchantError, match="2 active keys"):
            await merchant_service.rotate_key(
                pool, box, merchant.merchant_id, KeyType.HMAC_SHA256, None
            )
        new_creds = Creds(merchant.merchant_id, second.key_id, KeyType.HMAC_SHA256, second.secret)
        created = await gateway.client(new_creds).create_payment()
        assert created.status == 201
        # both keys work and see the same merchant's payments
        seen = await gateway.client(merchant).request("GET", f"/v1/payments/{created.json['id']}")
        assert seen.status == 200
        await merchant_service.revoke_key(pool, merchant.key_id)
    finally:
        await pool.close()
    await asyncio.sleep(gateway.settings.key_cache_ttl_s + 0.1)
    revoked = await gateway.client(merchant).create_payment()
    assert (revoked.status, revoked.json["code"]) == (401, "unknown_key")


async def test_redis_down_fails_closed(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool
) -> None:
    import aiohttp
    from aiohttp.test_utils import TestServer

    from gateway.app import Endpoints, create_app
    from tests.fixtures import make_settings
    from tests.support import free_port

    port = free_port()
    settings = make_settings(port, redis_prefix, background=False)
    app = create_app(
        settings, Endpoints(database_url=database_url, redis_url="redis://127.0.0.1:1/0")
    )
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            client = MerchantClient(f"http://127.0.0.1:{port}", merchant, http)
            reply = await client.create_payment()
            assert reply.status == 503
            assert reply.json["code"] == "service_unavailable"
    finally:
        await server.close()
    assert await payment_count(db) == 0


async def test_other_merchants_payment_is_404(gateway: Gateway, client: MerchantClient) -> None:
    created = await client.create_payment()
    other = gateway.client(await new_merchant(gateway.database_url, name="Other"))
    reply = await other.request("GET", f"/v1/payments/{created.json['id']}")
    assert (reply.status, reply.json["code"]) == (404, "not_found")
    by_order = await other.request(
        "GET", f"/v1/payments?merchant_order_id={created.json['merchant_order_id']}"
    )
    assert by_order.status == 404


# ---- cheap refusals ---------------------------------------------------------------------------


async def key_reads(database_url: str) -> int:
    """Reads of merchant_keys so far (every one a key lookup): PostgreSQL's statistics, as
    the backends that made them flushed them (they do at the latest when they exit: read this
    after the gateway is closed)."""
    conn = await asyncpg.connect(database_url)
    try:
        value = -1
        for _ in range(40):  # a closed backend's last figures come as it exits
            now = await conn.fetchval(
                "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
                " WHERE relname = 'merchant_keys'"
            )
            if now == value:
                return int(now)
            value = now
            await asyncio.sleep(0.1)
        return int(value)
    finally:
        await conn.close()


def ghost(key_id: str) -> Creds:
    return Creds("mch_x", key_id, KeyType.HMAC_SHA256, secret="sk_nope")


async def test_an_unknown_key_id_is_remembered(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    before = await key_reads(database_url)
    async with gateway_on(database_url, redis_prefix, REDIS_URL) as gw:
        client = gw.client(ghost("key_doesnotexist"))
        for _ in range(20):
            reply = await client.request("GET", "/v1/payments/pay_x")
            assert (reply.status, reply.json["code"]) == (401, "unknown_key")
    assert await key_reads(database_url) - before == 1


async def test_a_flood_of_random_key_ids_costs_at_most_the_failure_budget(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    before = await key_reads(database_url)
    async with gateway_on(
        database_url, redis_prefix, REDIS_URL, auth_failure_limit=10, auth_failure_window_s=60
    ) as gw:
        answers = []
        for _ in range(100):
            reply = await gw.client(ghost("key_" + secrets.token_hex(12))).create_payment()
            answers.append((reply.status, reply.json["code"]))
            if reply.status == 429:
                assert int(reply.headers["Retry-After"]) >= 1
    assert answers[:10] == [(401, "unknown_key")] * 10
    assert answers[10:] == [(429, "rate_limited")] * 90
    assert await key_reads(database_url) - before == 10


async def test_failed_authentications_are_counted_across_processes(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    forged = Creds(merchant.merchant_id, merchant.key_id, KeyType.HMAC_SHA256, secret="sk_wrong")
    limits = {"auth_failure_limit": 6, "auth_failure_window_s": 600}
    async with (
        gateway_on(database_url, redis_prefix, REDIS_URL, **limits) as a,
        gateway_on(database_url, redis_prefix, REDIS_URL, **limits) as b,
    ):
        for gw in (a, a, a, b, b, b, a):  # the 7th is one more than the address may make
            reply = await gw.client(forged).create_payment()
            assert (reply.status, reply.json["code"]) == (401, "invalid_signature")
        # a alone made 4: only the count both share says the address is over its budget
        refused = await a.client(merchant).create_payment()
        assert (refused.status, refused.json["code"]) == (429, "rate_limited")
        assert "RateLimit-Limit" not in refused.headers  # no merchant budget was involved


async def test_an_address_over_its_failure_budget_is_refused_until_retry_after(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
    db: asyncpg.Pool,
) -> None:
    async with gateway_on(
        database_url, redis_prefix, REDIS_URL, auth_failure_limit=3, auth_failure_window_s=3
    ) as gw:
        for _ in range(3):
            stale = gw.client(merchant).auth_header(
                "GET", "/v1/payments/pay_x", b"", timestamp=int(time.time()) - 3600
            )
            reply = await gw.client(merchant).request("GET", "/v1/payments/pay_x", auth=stale)
            assert reply.json["code"] == "timestamp_out_of_window"
        # even correctly signed, its requests are refused, unverified, until one more fits
        refused = await gw.client(merchant).create_payment()
        assert (refused.status, refused.json["code"]) == (429, "rate_limited")
        assert await payment_count(db) == 0
        await asyncio.sleep(int(refused.headers["Retry-After"]))
        assert (await gw.client(merchant).create_payment()).status == 201


async def test_behind_a_trusted_proxy_the_forwarded_address_is_counted(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    forged = Creds(merchant.merchant_id, merchant.key_id, KeyType.HMAC_SHA256, secret="sk_wrong")

    def via(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": f"{address}, 10.1.2.3"}  # the client, then an inner proxy

    async with gateway_on(
        database_url,
        redis_prefix,
        REDIS_URL,
        auth_failure_limit=2,
        trusted_proxies="127.0.0.0/8,10.0.0.0/8",
    ) as gw:
        for _ in range(2):
            reply = await gw.client(forged).request(
                "GET", "/v1/payments/pay_x", headers=via("203.0.113.5")
            )
            assert reply.status == 401
        blocked = await gw.client(merchant).request(
            "GET", "/v1/payments/pay_x", headers=via("203.0.113.5")
        )
        assert blocked.status == 429
        # another client behind the same proxies is not
        other = await gw.client(merchant).request(
            "GET", "/v1/payments/pay_x", headers=via("203.0.113.6")
        )
        assert (other.status, other.json["code"]) == (404, "not_found")


async def test_without_trusted_proxies_x_forwarded_for_changes_nothing(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, merchant: Creds
) -> None:
    forged = Creds(merchant.merchant_id, merchant.key_id, KeyType.HMAC_SHA256, secret="sk_wrong")
    async with gateway_on(database_url, redis_prefix, REDIS_URL, auth_failure_limit=2) as gw:
        for n in range(2):
            spoofed = {"X-Forwarded-For": f"198.51.100.{n}"}
            reply = await gw.client(forged).request("GET", "/v1/payments/x", headers=spoofed)
            assert reply.status == 401
        fresh = {"X-Forwarded-For": "198.51.100.99"}
        blocked = await gw.client(merchant).request("GET", "/v1/payments/x", headers=fresh)
        assert blocked.status == 429
