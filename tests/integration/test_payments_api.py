"""The payments API (API.md §1.2-1.4): validation and error shapes, merchant_order_id and
Idempotency-Key semantics, and concurrency."""

from __future__ import annotations

import asyncio

import asyncpg
import orjson
import pytest

from gateway.services import idempotency
from gateway.store import idempotency as idempotency_store
from tests.fixtures import Gateway
from tests.support import MerchantClient, payment_payload


async def test_create_returns_the_payment_object(client: MerchantClient) -> None:
    reply = await client.create_payment(
        merchant_order_id="A1001", metadata={"cart": "c-77"}, payer={"ip": "203.0.113.9"}
    )
    assert reply.status == 201, reply.body
    p = reply.json
    assert p["id"].startswith("pay_")
    assert p["status"] == "pending"
    assert (p["amount"], p["currency"], p["method"]) == (1999, "CNY", "card")
    assert p["channel"] in ("bank_icbc", "bank_cmb")
    assert p["channel_order_id"] == f"{p['id']}_1"
    assert p["next_action"]["type"] == "redirect"
    assert p["next_action"]["url"].startswith("http://127.0.0.1:")
    assert p["refunded_amount"] == 0 and p["failure"] is None and p["paid_at"] is None
    assert p["metadata"] == {"cart": "c-77"}
    assert p["created_at"].endswith("Z") and p["expires_at"].endswith("Z")
    assert "X-Request-Id" in reply.headers


async def test_get_by_id_and_by_merchant_order_id(client: MerchantClient) -> None:
    created = (await client.create_payment(merchant_order_id="Q-1")).json
    by_id = await client.request("GET", f"/v1/payments/{created['id']}")
    assert by_id.status == 200 and by_id.json == created
    by_order = await client.request("GET", "/v1/payments?merchant_order_id=Q-1")
    assert by_order.status == 200 and by_order.json["id"] == created["id"]
    missing = await client.request("GET", "/v1/payments?merchant_order_id=nope")
    assert (missing.status, missing.json["code"]) == (404, "not_found")
    no_param = await client.request("GET", "/v1/payments")
    assert (no_param.status, no_param.json["code"]) == (400, "invalid_request")


async def test_repeat_merchant_order_id(client: MerchantClient, db: asyncpg.Pool) -> None:
    first = await client.create_payment(merchant_order_id="R-1", amount=500)
    again = await client.create_payment(merchant_order_id="R-1", amount=500)
    assert (first.status, again.status) == (201, 200)
    assert again.json["id"] == first.json["id"]
    different = await client.create_payment(merchant_order_id="R-1", amount=501)
    assert (different.status, different.json["code"]) == (409, "duplicate_merchant_order_id")
    other_method = await client.create_payment(merchant_order_id="R-1", amount=500,
                                               method="alipay_qr")  # fmt: skip
    assert other_method.status == 409
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"amount": 19.99}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "1999"}, "amount"),
        ({"amount": 0}, "amount"),
        ({"currency": "yuan"}, "currency"),
        ({"method": "bitcoin"}, "method"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"merchant_order_id": None, "description": None}, "merchant_order_id"),
    ],
)
async def test_field_errors(
    client: MerchantClient, db: asyncpg.Pool, patch: dict[str, object], field: str
) -> None:
    payload = payment_payload(**patch)
    reply = await client.request("POST", "/v1/payments", payload)
    assert reply.status == 400
    problem = reply.json
    assert problem["code"] == "invalid_request"
    assert any(e["field"] == field for e in problem["errors"]), problem
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_malformed_json(client: MerchantClient) -> None:
    reply = await client.request("POST", "/v1/payments", raw=b'{"amount": ')
    assert (reply.status, reply.json["code"]) == (400, "malformed_json")
    array = await client.request("POST", "/v1/payments", raw=b"[1, 2]")
    assert (array.status, array.json["code"]) == (400, "malformed_json")
    deep = await client.request("POST", "/v1/payments", raw=b"[" * 5000 + b"]" * 5000)
    assert deep.status == 400


async def test_unsupported_media_type(client: MerchantClient) -> None:
    reply = await client.request(
        "POST", "/v1/payments", raw=b"amount=1", content_type="application/x-www-form-urlencoded"
    )
    assert (reply.status, reply.json["code"]) == (415, "unsupported_media_type")


async def test_payload_too_large(client: MerchantClient, db: asyncpg.Pool) -> None:
    big = orjson.dumps(payment_payload(description="x" * (65 * 1024)))
    reply = await client.request("POST", "/v1/payments", raw=big)
    assert (reply.status, reply.json["code"]) == (413, "payload_too_large")
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_no_route(client: MerchantClient, db: asyncpg.Pool) -> None:
    reply = await client.create_payment(currency="XTS")
    assert (reply.status, reply.json["code"]) == (422, "no_route")
    assert await db.fetchval("SELECT count(*) FROM payments") == 0


async def test_unknown_path_is_problem_json(gateway: Gateway, client: MerchantClient) -> None:
    reply = await client.request("GET", "/v1/nothing-here")
    assert reply.status == 404
    assert reply.json["code"] == "not_found"


async def test_close_pending_then_closed_is_final(client: MerchantClient) -> None:
    created = (await client.create_payment()).json
    closed = await client.request("POST", f"/v1/payments/{created['id']}/close")
    assert closed.status == 200, closed.body
    assert closed.json["status"] == "closed" and closed.json["next_action"] is None
    again = await client.request("POST", f"/v1/payments/{created['id']}/close", {})
    assert again.status == 200 and again.json["status"] == "closed"
    bad_body = await client.request("POST", f"/v1/payments/{created['id']}/close", {"x": 1})
    assert bad_body.status == 400


async def test_idempotency_key_replay_and_reuse(client: MerchantClient, db: asyncpg.Pool) -> None:
    payload = payment_payload(merchant_order_id="IK-1")
    first = await client.request("POST", "/v1/payments", payload, idempotency_key="ik-1")
    replay = await client.request("POST", "/v1/payments", payload, idempotency_key="ik-1")
    assert first.status == 201 and replay.status == 201
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert replay.json == first.json
    reused = await client.request(
        "POST", "/v1/payments", payment_payload(merchant_order_id="IK-2"), idempotency_key="ik-1"
    )
    assert (reused.status, reused.json["code"]) == (422, "idempotency_key_reused")
    bad_key = await client.request("POST", "/v1/payments", payload, idempotency_key="é" * 3)
    assert bad_key.status == 400
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


async def test_idempotency_stores_4xx_answers(client: MerchantClient) -> None:
    payload = payment_payload(amount=0)
    first = await client.request("POST", "/v1/payments", payload, idempotency_key="bad-1")
    again = await client.request("POST", "/v1/payments", payload, idempotency_key="bad-1")
    assert first.status == again.status == 400
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json["code"] == "invalid_request"


async def test_idempotency_key_in_flight(gateway: Gateway, client: MerchantClient) -> None:
    async with gateway.http.put(
        f"{gateway.url}/sim/bank/control/faults", json={"latency_ms": 800}
    ) as r:
        assert r.status == 200
    payload = payment_payload(merchant_order_id="IF-1")
    slow = asyncio.create_task(
        client.request("POST", "/v1/payments", payload, idempotency_key="if-1")
    )
    await asyncio.sleep(0.3)
    second = await client.request("POST", "/v1/payments", payload, idempotency_key="if-1")
    assert (second.status, second.json["code"]) == (409, "idempotency_key_in_use")
    assert (await slow).status == 201


async def test_a_live_request_keeps_its_key_past_the_lease(
    gateway: Gateway, client: MerchantClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency_store, "LEASE_S", 1)
    monkeypatch.setattr(idempotency, "RENEW_EVERY_S", 0.2)
    async with gateway.http.put(
        f"{gateway.url}/sim/bank/control/faults", json={"latency_ms": 2500}
    ) as r:
        assert r.status == 200
    payload = payment_payload(merchant_order_id="LEASE-1")
    slow = asyncio.create_task(
        client.request("POST", "/v1/payments", payload, idempotency_key="lease-1")
    )
    await asyncio.sleep(1.6)  # past the 1 s lease: only its renewals keep the key
    second = await client.request("POST", "/v1/payments", payload, idempotency_key="lease-1")
    assert (second.status, second.json["code"]) == (409, "idempotency_key_in_use")
    first = await slow
    assert first.status == 201
    replay = await client.request("POST", "/v1/payments", payload, idempotency_key="lease-1")
    assert replay.status == 201 and replay.headers.get("Idempotent-Replayed") == "true"


async def test_the_key_of_a_request_that_died_is_taken_over_after_the_lease(
    gateway: Gateway, client: MerchantClient, monkeypatch: pytest.MonkeyPatch, db: asyncpg.Pool
) -> None:
    monkeypatch.setattr(idempotency_store, "LEASE_S", 1)
    raw = orjson.dumps(payment_payload(merchant_order_id="DIED-1"))
    merchant_id = await db.fetchval("SELECT merchant_id FROM merchant_keys WHERE id = $1",
                                    client.creds.key_id)  # fmt: skip
    # a process claimed the key and died before answering: nothing renews its lease
    keys = idempotency.IdempotencyKeys(db)
    assert await keys.begin(merchant_id, "died-1", "POST", "/v1/payments", raw) is None
    held = await client.request("POST", "/v1/payments", raw=raw, idempotency_key="died-1")
    assert (held.status, held.json["code"]) == (409, "idempotency_key_in_use")
    await asyncio.sleep(1.2)
    retried = await client.request("POST", "/v1/payments", raw=raw, idempotency_key="died-1")
    assert retried.status == 201, retried.json


async def test_200_concurrent_identical_creates_make_one_payment(
    client: MerchantClient, db: asyncpg.Pool
) -> None:
    payload = payment_payload(merchant_order_id="CONC-1")
    replies = await asyncio.gather(
        *(client.request("POST", "/v1/payments", payload) for _ in range(200))
    )
    statuses = [r.status for r in replies]
    assert statuses.count(201) == 1, statuses
    assert statuses.count(200) == 199
    assert len({r.json["id"] for r in replies}) == 1
    assert all(r.json["next_action"] is not None for r in replies)
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert await db.fetchval("SELECT count(*) FROM payment_attempts") == 1


async def test_200_concurrent_creates_with_one_idempotency_key(
    client: MerchantClient, db: asyncpg.Pool
) -> None:
    payload = payment_payload(merchant_order_id="CONC-2")
    replies = await asyncio.gather(
        *(
            client.request("POST", "/v1/payments", payload, idempotency_key="conc-2")
            for _ in range(200)
        )
    )
    statuses = sorted({r.status for r in replies})
    assert set(statuses) <= {201, 409}, statuses
    created = [r for r in replies if r.status == 201]
    assert len({r.json["id"] for r in created}) == 1
    assert sum(1 for r in created if "Idempotent-Replayed" not in r.headers) == 1
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
