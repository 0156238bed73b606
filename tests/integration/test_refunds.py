"""Refunds (API.md §1.5): every error, merchant_refund_id idempotency, 100 concurrent requests
on one payment, a refund the channel refuses, refunds the channel answers as processing or
unknown, settled later by the status sync, a success without the refund's money (not applied)
and a refund the channel reports neither done nor failed (an operator's matter)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import random
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from adapters import simkit
from adapters.base import ChannelResult, Outcome
from gateway.api.context import SERVICES
from tests.fixtures import ROOT, Gateway, new_merchant, start_gateway
from tests.support import MerchantClient, Receiver, wait_until

# ---- helpers (shared with test_sync.py) ---------------------------------------------------


def simulator(gateway: Gateway, adapter: str) -> Any:
    """The simulator mounted in the gateway under /sim/<adapter>."""
    key = importlib.import_module(f"adapters.{adapter}.simulator").SIMULATOR
    for sub in gateway.app._subapps:
        if key in sub:
            return sub[key]
    raise AssertionError(f"{adapter} simulator not mounted")


async def set_faults(gateway: Gateway, adapter: str, **faults: Any) -> None:
    async with gateway.http.put(f"{gateway.url}/sim/{adapter}/control/faults", json=faults) as r:
        assert r.status == 200, await r.text()


async def channel_order(gateway: Gateway, adapter: str, channel_order_id: str) -> dict[str, Any]:
    async with gateway.http.get(
        f"{gateway.url}/sim/{adapter}/control/orders/{channel_order_id}"
    ) as r:
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


async def payer_acts(gateway: Gateway, url: str, action: str = "pay") -> int:
    async with gateway.http.post(url, json={"action": action}) as resp:
        await resp.read()
        return resp.status


async def get_payment(client: MerchantClient, payment_id: str) -> dict[str, Any]:
    reply = await client.request("GET", f"/v1/payments/{payment_id}")
    assert reply.status == 200, reply.body
    data: dict[str, Any] = reply.json
    return data


async def wait_payment(
    client: MerchantClient, payment_id: str, until: Any, within: float = 10.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        payment = await get_payment(client, payment_id)
        return payment if until(payment) else None

    found: dict[str, Any] = await wait_until(check, within=within)
    return found


async def paid_payment(
    gateway: Gateway, client: MerchantClient, method: str = "card", **overrides: Any
) -> dict[str, Any]:
    """A payment created, paid on the channel's page, and succeeded."""
    created = await client.create_payment(method=method, **overrides)
    assert created.status == 201, created.body
    assert await payer_acts(gateway, created.json["next_action"]["url"]) == 200
    return await wait_payment(client, created.json["id"], lambda p: p["status"] == "succeeded")


def short_timeouts_routing(tmp_path: Path, timeout_ms: int) -> Path:
    """The shipped routing file with every adapter's call budget cut to `timeout_ms`."""
    text = (ROOT / "config" / "routing.yaml").read_text()
    path = tmp_path / "routing.yaml"
    path.write_text(re.sub(r"(?m)^(\s+)timeout_ms: \d+", rf"\g<1>timeout_ms: {timeout_ms}", text))
    return path


def hang_for(gateway: Gateway, adapter: str, seconds: float) -> None:
    """How long the simulator's timeout fault hangs before acting on the request anyway."""
    core = simulator(gateway, adapter).core
    core.settings = dataclasses.replace(core.settings, timeout_sleep_s=seconds)


def refunds_path(payment: dict[str, Any]) -> str:
    return f"/v1/payments/{payment['id']}/refunds"


async def wait_refund(client: MerchantClient, refund_id: str, within: float = 10.0) -> Any:
    async def settled() -> dict[str, Any] | None:
        reply = await client.request("GET", f"/v1/refunds/{refund_id}")
        assert reply.status == 200, reply.body
        return reply.json if reply.json["status"] != "pending" else None

    return await wait_until(settled, within=within)


# ---- errors ---------------------------------------------------------------------------------


async def test_refund_errors(
    gateway: Gateway, client: MerchantClient, database_url: str, db: asyncpg.Pool
) -> None:
    pending = (await client.create_payment(amount=1000)).json
    reply = await client.request(
        "POST", refunds_path(pending), {"merchant_refund_id": "r", "amount": 1}
    )
    assert (reply.status, reply.json["code"]) == (409, "invalid_state")

    missing = await client.request(
        "POST", "/v1/payments/pay_doesnotexist/refunds", {"merchant_refund_id": "r", "amount": 1}
    )
    assert (missing.status, missing.json["code"]) == (404, "not_found")

    payment = await paid_payment(gateway, client, amount=1000)
    other = gateway.client(await new_merchant(database_url, name="Another shop"))
    foreign = await other.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "r", "amount": 1}
    )
    assert (foreign.status, foreign.json["code"]) == (404, "not_found")

    over = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "r-over", "amount": 1001}
    )
    assert (over.status, over.json["code"]) == (409, "refund_exceeds_amount")
    assert await db.fetchval("SELECT count(*) FROM refunds") == 0

    first = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "r-1", "amount": 400}
    )
    assert first.status == 201, first.body
    refund = first.json
    assert (refund["status"], refund["amount"], refund["merchant_refund_id"]) == (
        "succeeded",
        400,
        "r-1",
    )
    same = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "r-1", "amount": 400}
    )
    assert same.status == 200 and same.json == refund
    different = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "r-1", "amount": 401}
    )
    assert (different.status, different.json["code"]) == (409, "duplicate_merchant_refund_id")
    # 600 left: 601 is refused, 600 is taken
    assert (
        await client.request(
            "POST", refunds_path(payment), {"merchant_refund_id": "r-2", "amount": 601}
        )
    ).json["code"] == "refund_exceeds_amount"
    rest = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "r-2", "amount": 600}
    )
    assert rest.status == 201 and rest.json["status"] == "succeeded"
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 1000
    assert (
        await client.request(
            "POST", refunds_path(payment), {"merchant_refund_id": "r-3", "amount": 1}
        )
    ).json["code"] == "refund_exceeds_amount"

    got = await client.request("GET", f"/v1/refunds/{refund['id']}")
    assert got.status == 200 and got.json == refund
    assert (await other.request("GET", f"/v1/refunds/{refund['id']}")).status == 404
    assert (await client.request("GET", "/v1/refunds/re_nope")).status == 404
    assert await db.fetchval("SELECT count(*) FROM refunds") == 2


INVALID_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"merchant_refund_id": "r", "amount": 0}, "amount"),
    ({"merchant_refund_id": "r", "amount": -5}, "amount"),
    ({"merchant_refund_id": "r", "amount": 10.5}, "amount"),
    ({"merchant_refund_id": "r", "amount": "100"}, "amount"),
    ({"merchant_refund_id": "r", "amount": True}, "amount"),
    ({"merchant_refund_id": "r", "amount": 10**11 + 1}, "amount"),
    ({"merchant_refund_id": "r"}, "amount"),
    ({"amount": 100}, "merchant_refund_id"),
    ({"merchant_refund_id": "", "amount": 100}, "merchant_refund_id"),
    ({"merchant_refund_id": "has space", "amount": 100}, "merchant_refund_id"),
    ({"merchant_refund_id": "x" * 65, "amount": 100}, "merchant_refund_id"),
    ({"merchant_refund_id": 7, "amount": 100}, "merchant_refund_id"),
    ({"merchant_refund_id": "r", "amount": 100, "reason": ""}, "reason"),
    ({"merchant_refund_id": "r", "amount": 100, "reason": "x" * 257}, "reason"),
    ({"merchant_refund_id": "r", "amount": 100, "currency": "CNY"}, "currency"),
]


async def test_refund_validation(client: MerchantClient, db: asyncpg.Pool) -> None:
    payment = (await client.create_payment()).json
    for body, field in INVALID_BODIES:
        reply = await client.request("POST", refunds_path(payment), body)
        assert reply.status == 400, (body, reply.body)
        assert reply.json["code"] == "invalid_request"
        assert field in [e["field"] for e in reply.json["errors"]], (body, reply.json)
    path = refunds_path(payment)
    for raw in (b'{"amount": 1', b"[1]"):
        reply = await client.request("POST", path, raw=raw)
        assert (reply.status, reply.json["code"]) == (400, "malformed_json")
    wrong_type = await client.request(
        "POST", path, raw=b"merchant_refund_id=r&amount=1", content_type="text/plain"
    )
    assert (wrong_type.status, wrong_type.json["code"]) == (415, "unsupported_media_type")
    empty = await client.request("POST", path, raw=b"{}")
    assert (empty.status, empty.json["code"]) == (400, "invalid_request")
    assert await db.fetchval("SELECT count(*) FROM refunds") == 0


async def test_idempotency_key_replays_a_refund(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    payment = await paid_payment(gateway, client)
    body = {"merchant_refund_id": "idem-1", "amount": 100}
    first = await client.request("POST", refunds_path(payment), body, idempotency_key="k-1")
    again = await client.request("POST", refunds_path(payment), body, idempotency_key="k-1")
    assert (first.status, again.status) == (201, 201)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json == first.json
    assert await db.fetchval("SELECT count(*) FROM refunds") == 1


# ---- concurrency ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["card", "wechat_qr"])
async def test_100_concurrent_refunds_never_exceed_the_amount(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, method: str
) -> None:
    """80 distinct merchant_refund_ids of 150 and 20 repeats of some of them, all at once, on
    a payment of 10000: at most 66 refunds fit (9900)."""
    payment = await paid_payment(gateway, client, method=method, amount=10000)
    ids = [f"c-{i}" for i in range(80)]
    requests = ids + [ids[i] for i in range(0, 80, 4)]
    random.Random(7).shuffle(requests)
    assert len(requests) == 100
    replies = await asyncio.gather(
        *(
            client.request(
                "POST", refunds_path(payment), {"merchant_refund_id": mrid, "amount": 150}
            )
            for mrid in requests
        )
    )

    by_id: dict[str, list[Any]] = defaultdict(list)
    for mrid, reply in zip(requests, replies, strict=True):
        by_id[mrid].append(reply)
    created: dict[str, str] = {}
    for mrid, answers in by_id.items():
        statuses = sorted(r.status for r in answers)
        if 409 in statuses:
            # refused: every request with this id was refused, for the amount and only that
            assert statuses == [409] * len(answers), (mrid, statuses)
            assert {r.json["code"] for r in answers} == {"refund_exceeds_amount"}
            continue
        # accepted: exactly one 201, the repeats 200, all the same refund
        assert statuses == [200] * (len(answers) - 1) + [201], (mrid, statuses)
        refund_ids = {r.json["id"] for r in answers}
        assert len(refund_ids) == 1
        assert all(r.json["merchant_refund_id"] == mrid for r in answers)
        created[mrid] = refund_ids.pop()

    assert len(created) == 66  # 66 * 150 = 9900 <= 10000 < 67 * 150
    rows = await db.fetch(
        "SELECT id, amount, status FROM refunds WHERE payment_id = $1", payment["id"]
    )
    assert {r["id"] for r in rows} == set(created.values())
    assert sum(r["amount"] for r in rows if r["status"] != "failed") <= 10000

    async def all_settled() -> bool:
        return not await db.fetchval("SELECT count(*) FROM refunds WHERE status = 'pending'")

    await wait_until(all_settled, within=20)
    succeeded = await db.fetchval(
        "SELECT sum(amount) FROM refunds WHERE payment_id = $1 AND status = 'succeeded'",
        payment["id"],
    )
    assert succeeded == 9900
    row = await db.fetchrow(
        "SELECT refunded_amount, refund_reserved FROM payments WHERE id = $1", payment["id"]
    )
    assert (row["refunded_amount"], row["refund_reserved"]) == (9900, 0)
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 9900
    adapter = "bank" if method == "card" else "wechat"
    order = await channel_order(gateway, adapter, payment["channel_order_id"])
    assert sum(r["amount"] for r in order["refunds"].values()) == 9900
    assert len(order["refunds"]) == 66
    events = await db.fetchval("SELECT count(*) FROM events WHERE type = 'refund.succeeded'")
    assert events == 66


# ---- the channel refuses --------------------------------------------------------------------


async def test_refund_the_channel_refuses_fails_and_releases_its_reservation(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    payment = await paid_payment(gateway, client, amount=2500, notify_url=receiver.url)
    await receiver.wait_for(1)
    # the whole amount was refunded at the bank behind the gateway's back (its merchant
    # portal): the bank refuses any further refund of this order
    order = simulator(gateway, "bank").core.orders[payment["channel_order_id"]]
    now = simkit.now()
    order.refunds["portal-1"] = simkit.SimRefund(
        channel_refund_id="portal-1",
        refund_no="Rportal1",
        amount=2500,
        status="SUCCESS",
        created_at=now,
        completed_at=now,
    )
    reply = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "refused", "amount": 1000}
    )
    assert reply.status == 201, reply.body
    refused = reply.json
    assert refused["status"] == "failed"
    assert refused["failure"]["code"] and refused["completed_at"] is not None

    await receiver.wait_for(2)
    assert client.creds.webhook_secret is not None
    callback = receiver.received[1]
    event = Webhook(client.creds.webhook_secret).verify(callback["body"], callback["headers"])
    assert event["type"] == "refund.failed"
    assert event["data"]["object"]["id"] == refused["id"]
    assert event["data"]["object"]["status"] == "failed"

    row = await db.fetchrow(
        "SELECT refunded_amount, refund_reserved FROM payments WHERE id = $1", payment["id"]
    )
    assert (row["refunded_amount"], row["refund_reserved"]) == (0, 0)
    # the same merchant_refund_id gives the failed refund back
    again = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "refused", "amount": 1000}
    )
    assert (again.status, again.json["id"], again.json["status"]) == (200, refused["id"], "failed")

    # the reservation was released: once the bank allows it, the whole amount can be refunded
    del order.refunds["portal-1"]
    whole = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "whole", "amount": 2500}
    )
    assert (whole.status, whole.json["status"]) == (201, "succeeded")
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 2500


# ---- processing or unknown: the sync settles it ----------------------------------------------


async def test_processing_refund_settled_by_the_sync(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    """WeChat answers a refund PROCESSING; its REFUND.SUCCESS notification is dropped."""
    payment = await paid_payment(gateway, client, method="wechat_qr", notify_url=receiver.url)
    await set_faults(gateway, "wechat", notify="drop")
    reply = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "slow", "amount": 700}
    )
    assert (reply.status, reply.json["status"]) == (201, "pending")
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 0

    done = await wait_refund(client, reply.json["id"])
    assert done["status"] == "succeeded" and done["completed_at"] is not None
    row = await db.fetchrow(
        "SELECT sync_count, next_sync_at FROM refunds WHERE id = $1", done["id"]
    )
    assert row["sync_count"] >= 1 and row["next_sync_at"] is None
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 700
    await receiver.wait_for(2)
    types = [orjson.loads(c["body"])["type"] for c in receiver.received]
    assert types == ["payment.succeeded", "refund.succeeded"]


@pytest.fixture
async def fast_timeout_gateway(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> AsyncIterator[Gateway]:
    """Adapters give up on a call after 0.4 s."""
    gw, server = await start_gateway(
        database_url, redis_prefix, routing_file=short_timeouts_routing(tmp_path, 400)
    )
    yield gw
    await gw.http.close()
    await server.close()


async def test_refund_timed_out_is_settled_by_the_sync(
    fast_timeout_gateway: Gateway, merchant: Any, db: asyncpg.Pool
) -> None:
    """The bank takes longer than the adapter waits (and its notification is lost), then
    refunds anyway: the refund is unknown, the sync asks, the bank does not know it yet, so
    the sync sends it again with the same refund number; the bank refunds exactly once."""
    gateway = fast_timeout_gateway
    client = gateway.client(merchant)
    payment = await paid_payment(gateway, client, amount=3000)
    hang_for(gateway, "bank", 1.5)
    await set_faults(gateway, "bank", timeout_rate=1.0, notify="drop")
    reply = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "lost", "amount": 1200}
    )
    await set_faults(gateway, "bank", timeout_rate=0.0)
    assert (reply.status, reply.json["status"]) == (201, "pending")

    done = await wait_refund(client, reply.json["id"])
    assert done["status"] == "succeeded"
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 1200
    row = await db.fetchrow(
        "SELECT r.sync_count, p.refunded_amount, p.refund_reserved"
        " FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.id = $1",
        done["id"],
    )
    assert row["sync_count"] >= 1
    assert (row["refunded_amount"], row["refund_reserved"]) == (1200, 0)
    # the hung request reaches the bank after the sync's: nothing observable is meant to
    # happen, so wait it out and check that the bank did not refund twice
    await asyncio.sleep(1.6)
    order = await channel_order(gateway, "bank", payment["channel_order_id"])
    assert [r["amount"] for r in order["refunds"].values()] == [1200]


async def test_refund_that_never_reached_the_channel_is_sent_by_the_sync(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """The bank answers 96 (system error) to every try: nothing was refunded, the refund stays
    pending, and the sync sends it again once the bank is back."""
    payment = await paid_payment(gateway, client, amount=3000)
    await set_faults(gateway, "bank", error_rate=1.0)
    reply = await client.request(
        "POST", refunds_path(payment), {"merchant_refund_id": "retry-me", "amount": 3000}
    )
    assert (reply.status, reply.json["status"]) == (201, "pending")
    order = await channel_order(gateway, "bank", payment["channel_order_id"])
    assert order["refunds"] == {}
    await set_faults(gateway, "bank", error_rate=0.0)

    done = await wait_refund(client, reply.json["id"])
    assert done["status"] == "succeeded"
    order = await channel_order(gateway, "bank", payment["channel_order_id"])
    assert [r["amount"] for r in order["refunds"].values()] == [3000]
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 3000


# ---- what the channel says that cannot be applied as it is ----------------------------------


def channel_adapter(gateway: Gateway, channel: str) -> Any:
    adapter = gateway.app[SERVICES].channels.adapter(channel)
    assert adapter is not None
    return adapter


def refund_metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_refund_success_with_another_amount_is_not_applied(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """The bank's answer to the refund names another amount (or no currency): the refund stays
    pending (alerted, recorded once); the sync's query, a whole answer, settles it."""
    payment = await paid_payment(gateway, client, amount=3000)
    adapter = channel_adapter(gateway, payment["channel"])
    send = adapter.refund

    async def altered(req: Any) -> Any:
        return dataclasses.replace(await send(req), amount=req.amount + 1)

    adapter.refund = altered
    labels = {"channel": payment["channel"], "kind": "refund", "reason": "amount"}
    before = refund_metric("gateway_channel_amount_mismatches_total", labels)
    with capture_logs() as logs:
        reply = await client.request(
            "POST", refunds_path(payment), {"merchant_refund_id": "odd", "amount": 1000}
        )
    assert (reply.status, reply.json["status"]) == (201, "pending")
    assert refund_metric("gateway_channel_amount_mismatches_total", labels) == before + 1
    [alert] = [e for e in logs if e["event"] == "channel_amount_mismatch"]
    assert (alert["kind"], alert["expected_amount"], alert["reported_amount"]) == (
        "refund",
        1000,
        1001,
    )
    record = await db.fetchrow("SELECT * FROM events WHERE type = 'refund.amount_mismatch'")
    assert record["refund_id"] == reply.json["id"]
    done = await wait_refund(client, reply.json["id"])
    assert done["status"] == "succeeded"
    assert (await get_payment(client, payment["id"]))["refunded_amount"] == 1000


async def test_a_refund_that_needs_an_operator_stays_pending(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, receiver: Receiver
) -> None:
    """WeChat's REFUND.ABNORMAL (the bank plays it here): WAITING with needs_operator, never
    failed. Recorded once for an operator, the refund stays pending with its amount reserved,
    and the sync asks again on the slow end of its schedule (2 s in tests)."""
    payment = await paid_payment(gateway, client, amount=2000, notify_url=receiver.url)
    await receiver.wait_for(1)
    adapter = channel_adapter(gateway, payment["channel"])

    async def abnormal(*_: Any) -> Any:
        return ChannelResult(Outcome.WAITING, channel_code="ABNORMAL", needs_operator=True)

    adapter.refund = abnormal
    adapter.query_refund = abnormal
    labels = {"channel": payment["channel"], "kind": "refund"}
    before = refund_metric("gateway_channel_needs_operator_total", labels)
    with capture_logs() as logs:
        reply = await client.request(
            "POST", refunds_path(payment), {"merchant_refund_id": "stuck", "amount": 800}
        )
        assert (reply.status, reply.json["status"]) == (201, "pending")

        async def synced_twice() -> bool:
            row = await db.fetchrow(
                "SELECT sync_count FROM refunds WHERE id = $1", reply.json["id"]
            )
            return bool(row["sync_count"] >= 2)

        await wait_until(synced_twice)
    assert refund_metric("gateway_channel_needs_operator_total", labels) == before + 1
    assert len([e for e in logs if e["event"] == "channel_needs_operator"]) == 1
    [record] = await db.fetch("SELECT * FROM events WHERE type = 'refund.needs_operator'")
    assert record["refund_id"] == reply.json["id"]
    refund = await db.fetchrow(
        "SELECT status, extract(epoch FROM next_sync_at - now()) AS wait FROM refunds"
        " WHERE id = $1",
        reply.json["id"],
    )
    assert refund["status"] == "pending" and 1.0 < float(refund["wait"]) <= 2.0
    row = await db.fetchrow(
        "SELECT refunded_amount, refund_reserved FROM payments WHERE id = $1", payment["id"]
    )
    assert (row["refunded_amount"], row["refund_reserved"]) == (0, 800)
    assert event_types_of(receiver) == ["payment.succeeded"]


def event_types_of(receiver: Receiver) -> list[str]:
    return [orjson.loads(c["body"])["type"] for c in receiver.received]
