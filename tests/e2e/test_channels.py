"""Every channel end to end through HTTP (issue 3's per-channel proof, issue 6's refunds and
sync): create -> the payer pays on the channel's page -> the channel notifies -> succeeded ->
a merchant callback that `standardwebhooks` verifies; two refunds settled however the channel
settles them (synchronously, by notification or by query); close; a dropped notification
resolved by the status sync; a payer's cancel; `GET /v1/payments/{id}?sync=true`."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from tests.fixtures import Gateway, start_gateway
from tests.support import MerchantClient, Receiver, wait_until

CHANNELS = [
    pytest.param("card", "bank", id="bank"),
    pytest.param("wechat_qr", "wechat", id="wechat"),
    pytest.param("alipay_qr", "alipay", id="alipay"),
    pytest.param("unionpay_qr", "unionpay", id="unionpay"),
]


async def payer_acts(gateway: Gateway, url: str, action: str) -> int:
    """The payer presses pay or cancel on the page behind next_action.url."""
    async with gateway.http.post(url, json={"action": action}) as resp:
        await resp.read()
        return resp.status


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


async def wait_payment(
    client: MerchantClient, payment_id: str, *, until: Any, within: float = 10.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        reply = await client.request("GET", f"/v1/payments/{payment_id}")
        assert reply.status == 200, reply.body
        return reply.json if until(reply.json) else None

    result: dict[str, Any] = await wait_until(check, within=within)
    return result


def notifications_applied(channel: str) -> float:
    """The gateway's count of channel notifications applied (a process-wide metric)."""
    value = REGISTRY.get_sample_value(
        "gateway_channel_notifications_total", {"channel": channel, "result": "applied"}
    )
    return value or 0.0


def simulator(gateway: Gateway, adapter: str) -> Any:
    """The simulator mounted in the gateway under /sim/<adapter>."""
    key = importlib.import_module(f"adapters.{adapter}.simulator").SIMULATOR
    for sub in gateway.app._subapps:
        if key in sub:
            return sub[key]
    raise AssertionError(f"{adapter} simulator not mounted")


def verified_events(client: MerchantClient, receiver: Receiver) -> list[dict[str, Any]]:
    """Every callback received so far, its Standard Webhooks signature checked."""
    assert client.creds.webhook_secret is not None
    hook = Webhook(client.creds.webhook_secret)
    events = []
    for callback in receiver.received:
        event = hook.verify(callback["body"], callback["headers"])
        assert callback["headers"]["webhook-id"] == event["id"]
        events.append(event)
    return events


async def wait_events(
    client: MerchantClient, receiver: Receiver, count: int
) -> list[dict[str, Any]]:
    await receiver.wait_for(count)
    return verified_events(client, receiver)


@pytest.mark.parametrize(("method", "adapter"), CHANNELS)
async def test_pay_then_two_refunds(
    gateway: Gateway,
    client: MerchantClient,
    receiver: Receiver,
    db: asyncpg.Pool,
    method: str,
    adapter: str,
) -> None:
    created = await client.create_payment(method=method, amount=10000, notify_url=receiver.url)
    assert created.status == 201, created.body
    payment = created.json
    assert payment["status"] == "pending"
    url = payment["next_action"]["url"]
    assert url.startswith(f"{gateway.url}/sim/{adapter}/")

    applied_before = notifications_applied(payment["channel"])
    assert await payer_acts(gateway, url, "pay") == 200
    paid = await wait_payment(client, payment["id"], until=lambda p: p["status"] != "pending")
    assert paid["status"] == "succeeded"
    assert paid["paid_at"] is not None and paid["channel_trade_no"]
    assert paid["next_action"] is None

    # the channel's notification reaches the gateway and is applied (the status sync may
    # have learnt the news first on a loaded machine; the notification still arrives)
    async def notified() -> bool:
        return notifications_applied(payment["channel"]) > applied_before

    await wait_until(notified)

    (event,) = await wait_events(client, receiver, 1)
    assert event["type"] == "payment.succeeded"
    assert event["data"]["object"]["id"] == payment["id"]
    assert event["data"]["object"]["status"] == "succeeded"

    path = f"/v1/payments/{payment['id']}/refunds"
    first = await client.request("POST", path, {"merchant_refund_id": "rf-1", "amount": 3000})
    assert first.status == 201, first.body
    second = await client.request(
        "POST", path, {"merchant_refund_id": "rf-2", "amount": 2500, "reason": "damaged"}
    )
    assert second.status == 201, second.body
    for refund in (first.json, second.json):
        assert refund["id"].startswith("re_")
        assert refund["payment_id"] == payment["id"]
        assert refund["status"] in ("pending", "succeeded")

    async def settled(refund_id: str) -> dict[str, Any] | None:
        reply = await client.request("GET", f"/v1/refunds/{refund_id}")
        assert reply.status == 200, reply.body
        return reply.json if reply.json["status"] != "pending" else None

    for refund in (first.json, second.json):
        done = await wait_until(lambda r=refund: settled(r["id"]))
        assert done["status"] == "succeeded"
        assert done["completed_at"] is not None

    after = await wait_payment(client, payment["id"], until=lambda p: p["refunded_amount"] == 5500)
    assert after["status"] == "succeeded"

    events = await wait_events(client, receiver, 3)
    refund_events = {e["data"]["object"]["id"]: e for e in events if e["type"].startswith("re")}
    assert set(refund_events) == {first.json["id"], second.json["id"]}
    assert all(e["type"] == "refund.succeeded" for e in refund_events.values())
    assert refund_events[first.json["id"]]["data"]["object"]["amount"] == 3000

    # the channel's own book agrees: 55.00 yuan refunded on this order
    order = await channel_order(gateway, adapter, payment["channel_order_id"])
    assert sorted(r["amount"] for r in order["refunds"].values()) == [2500, 3000]

    # what is left is 4500: one fen more is refused, and nothing changes
    over = await client.request("POST", path, {"merchant_refund_id": "rf-3", "amount": 4501})
    assert (over.status, over.json["code"]) == (409, "refund_exceeds_amount")
    row = await db.fetchrow(
        "SELECT refunded_amount, refund_reserved FROM payments WHERE id = $1", payment["id"]
    )
    assert (row["refunded_amount"], row["refund_reserved"]) == (5500, 0)
    assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'refund.succeeded'") == 2


@pytest.mark.parametrize(("method", "adapter"), CHANNELS)
async def test_close_cancel_and_dropped_notification(
    gateway: Gateway,
    client: MerchantClient,
    receiver: Receiver,
    db: asyncpg.Pool,
    method: str,
    adapter: str,
) -> None:
    """Three payments on one channel: the merchant closes one; the payer cancels one (learnt
    from the channel's notification, or by the sync for a channel that notifies successes
    only); the payer pays one whose notification the channel drops (learnt by the sync)."""
    to_close, to_cancel = [
        (await client.create_payment(method=method, notify_url=receiver.url)).json for _ in range(2)
    ]

    # close: at the channel and here, once; a closed payment cannot be paid or refunded
    closed = await client.request("POST", f"/v1/payments/{to_close['id']}/close")
    assert closed.status == 200, closed.body
    assert closed.json["status"] == "closed" and closed.json["next_action"] is None
    again = await client.request("POST", f"/v1/payments/{to_close['id']}/close", {})
    assert (again.status, again.json["status"]) == (200, "closed")
    assert await payer_acts(gateway, to_close["next_action"]["url"], "pay") >= 400
    refund = await client.request(
        "POST", f"/v1/payments/{to_close['id']}/refunds", {"merchant_refund_id": "x", "amount": 1}
    )
    assert (refund.status, refund.json["code"]) == (409, "invalid_state")

    # the payer cancels
    assert await payer_acts(gateway, to_cancel["next_action"]["url"], "cancel") == 200
    cancelled = await wait_payment(
        client, to_cancel["id"], until=lambda p: p["status"] != "pending"
    )
    assert cancelled["status"] in ("failed", "closed")
    if cancelled["status"] == "failed":
        assert cancelled["failure"]["code"]

    # the payer pays; the channel's notification is lost
    await set_faults(gateway, adapter, notify="drop")
    core = simulator(gateway, adapter).core

    async def quiet() -> bool:  # earlier notifications (the cancel's) have all been sent
        return not core._tasks

    await wait_until(quiet)
    sent_before = core.notifications_sent
    dropped = (await client.create_payment(method=method, notify_url=receiver.url)).json
    assert await payer_acts(gateway, dropped["next_action"]["url"], "pay") == 200
    done = await wait_payment(client, dropped["id"], until=lambda p: p["status"] != "pending")
    assert done["status"] == "succeeded" and done["channel_trade_no"]
    assert simulator(gateway, adapter).core.notifications_sent == sent_before
    attempt = await db.fetchrow(
        "SELECT status, sync_count, next_sync_at FROM payment_attempts WHERE payment_id = $1",
        dropped["id"],
    )
    assert attempt["status"] == "succeeded" and attempt["sync_count"] >= 1
    assert attempt["next_sync_at"] is None

    events = {e["data"]["object"]["id"]: e for e in await wait_events(client, receiver, 3)}
    assert len(events) == 3
    assert events[to_close["id"]]["type"] == "payment.closed"
    assert events[to_cancel["id"]]["type"] == f"payment.{cancelled['status']}"
    assert events[dropped["id"]]["type"] == "payment.succeeded"


@pytest.fixture
async def quiet_gateway(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[Gateway]:
    """A gateway whose background sync waits a minute before it first asks a channel."""
    gw, server = await start_gateway(database_url, redis_prefix, sync_schedule="60")
    yield gw
    await gw.http.close()
    await server.close()


@pytest.mark.parametrize(("method", "adapter"), CHANNELS)
async def test_get_with_sync_asks_the_channel(
    quiet_gateway: Gateway, merchant: Any, db: asyncpg.Pool, method: str, adapter: str
) -> None:
    gateway = quiet_gateway
    client = gateway.client(merchant)
    await set_faults(gateway, adapter, notify="drop")
    payment = (await client.create_payment(method=method)).json
    path = f"/v1/payments/{payment['id']}"
    unpaid = await client.request("GET", path + "?sync=true")
    assert (unpaid.status, unpaid.json["status"]) == (200, "pending")
    assert unpaid.json["next_action"] == payment["next_action"]

    assert await payer_acts(gateway, payment["next_action"]["url"], "pay") == 200
    assert (await client.request("GET", path)).json["status"] == "pending"  # nobody told us
    synced = await client.request("GET", path + "?sync=true")
    assert synced.status == 200, synced.body
    assert synced.json["status"] == "succeeded" and synced.json["paid_at"] is not None
    assert (await client.request("GET", path)).json == synced.json
    events = await db.fetch("SELECT type FROM events WHERE payment_id = $1", payment["id"])
    assert [e["type"] for e in events] == ["payment.succeeded"]

    bad = await client.request("GET", path + "?sync=yes")
    assert (bad.status, bad.json["code"]) == (400, "invalid_request")
    missing = await client.request("GET", "/v1/payments/pay_nope?sync=true")
    assert missing.status == 404
