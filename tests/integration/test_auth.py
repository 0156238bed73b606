"""Request authentication (API.md §1.1): every failure code, all three algorithms, key
rotation, and failing closed when Redis is down."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.auth.secretbox import SecretBox
from gateway.auth.signature import KeyType
from gateway.services import merchants as merchant_service
from tests.fixtures import MASTER_KEY, Gateway, new_merchant
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


async def test_a_request_signed_before_the_nonce_cache_was_lost_is_refused(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    prefix = gateway.settings.redis_prefix
    epoch_key = f"{prefix}nonce-epoch"
    started_at = int(await redis_client.get(epoch_key) or 0)
    assert abs(started_at - time.time()) < 60  # set when the gateway started
    raw = orjson.dumps(
        {"merchant_order_id": "E1", "amount": 100, "currency": "CNY", "method": "card",
         "description": "x"}
    )  # fmt: skip
    captured = client.auth_header("POST", "/v1/payments", raw, nonce="captured-nonce-0001")
    first = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
    assert first.status == 201
    await asyncio.sleep(1.05 - time.time() % 1)  # the epoch has a second's resolution
    # Redis restarts empty (here: this gateway's keys go): the captured request's nonce is
    # forgotten, and its timestamp is still inside the 300 s window
    await redis_client.delete(*[key async for key in redis_client.scan_iter(match=f"{prefix}*")])
    replay = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
    assert (replay.status, replay.json["code"]) == (503, "service_unavailable")
    assert "sign the request again" in replay.json["detail"]
    assert not await redis_client.exists(f"{prefix}nonce:{client.creds.key_id}:captured-nonce-0001")
    assert int(await redis_client.get(epoch_key)) > started_at
    # the merchant's own retry, signed now, is answered as usual (the existing payment)
    again = await client.request("POST", "/v1/payments", raw=raw)
    assert again.status == 200 and again.json["id"] == first.json["id"]
    assert await payment_count(db) == 1


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
