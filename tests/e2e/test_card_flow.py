"""The whole slice through HTTP: a signed create, the payer pays on the bank's hosted page, the
bank notifies, the payment succeeds, and the merchant gets a callback whose signature the
`standardwebhooks` package verifies."""

from __future__ import annotations

import asyncpg
import orjson
from standardwebhooks import Webhook

from tests.fixtures import Gateway
from tests.support import MerchantClient, Receiver, wait_until


async def pay_on_payer_page(gateway: Gateway, url: str, action: str = "pay") -> None:
    async with gateway.http.post(url, json={"action": action}) as resp:
        assert resp.status == 200, await resp.text()


async def test_card_payment_end_to_end(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    created = await client.create_payment(notify_url=receiver.url, amount=2500)
    assert created.status == 201, created.body
    payment = created.json
    # the payer page renders
    async with gateway.http.get(payment["next_action"]["url"]) as page:
        assert page.status == 200
        assert "text/html" in page.headers["Content-Type"]

    await pay_on_payer_page(gateway, payment["next_action"]["url"])

    async def succeeded() -> dict[str, object] | None:
        reply = await client.request("GET", f"/v1/payments/{payment['id']}")
        return reply.json if reply.json["status"] == "succeeded" else None

    final = await wait_until(succeeded)
    assert final["paid_at"] is not None
    assert final["channel_trade_no"]
    assert final["next_action"] is None

    await receiver.wait_for(1)
    callback = receiver.received[0]
    body: bytes = callback["body"]
    assert client.creds.webhook_secret is not None
    event = Webhook(client.creds.webhook_secret).verify(body, callback["headers"])
    assert event["type"] == "payment.succeeded"
    assert event["data"]["object"]["id"] == payment["id"]
    assert event["data"]["object"]["status"] == "succeeded"
    assert callback["headers"]["webhook-id"] == event["id"]
    assert orjson.loads(body)["id"].startswith("evt_")

    assert (
        await db.fetchval("SELECT count(*) FROM events WHERE payment_id = $1", payment["id"]) == 1
    )

    async def delivered() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT * FROM callback_deliveries")
        return row if row is not None and row["status"] == "succeeded" else None

    # the dispatcher records results in groups: just after the callback arrived, its row may
    # still say delivering
    delivery = await wait_until(delivered)
    assert delivery["attempts"] == 1


async def test_duplicated_notification_changes_state_once(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    async with gateway.http.put(
        f"{gateway.url}/sim/bank/control/faults", json={"notify": "duplicate"}
    ) as r:
        assert r.status == 200
    payment = (await client.create_payment(notify_url=receiver.url)).json
    await pay_on_payer_page(gateway, payment["next_action"]["url"])

    async def both_notifications_seen() -> bool:
        n = await db.fetchval("SELECT count(*) FROM events")
        return bool(n) and gateway_sim_sent(gateway) >= 2

    await wait_until(both_notifications_seen)
    await receiver.wait_for(1)
    events = await db.fetch("SELECT type FROM events WHERE payment_id = $1", payment["id"])
    assert [e["type"] for e in events] == ["payment.succeeded"]
    transitions = await db.fetchval(
        "SELECT count(*) FROM payment_attempts WHERE payment_id = $1 AND status = 'succeeded'",
        payment["id"],
    )
    assert transitions == 1
    assert await db.fetchval("SELECT count(*) FROM callback_deliveries") == 1


def gateway_sim_sent(gateway: Gateway) -> int:
    """How many notifications the in-process bank simulator has sent."""
    from adapters.bank.simulator import SIMULATOR

    for sub in gateway.app._subapps:  # the mounted simulators
        if SIMULATOR in sub:
            return sub[SIMULATOR].core.notifications_sent
    raise AssertionError("bank simulator not mounted")


async def test_cancel_on_payer_page_fails_the_payment(
    gateway: Gateway, client: MerchantClient, receiver: Receiver
) -> None:
    payment = (await client.create_payment(notify_url=receiver.url)).json
    await pay_on_payer_page(gateway, payment["next_action"]["url"], action="cancel")

    async def final() -> dict[str, object] | None:
        reply = await client.request("GET", f"/v1/payments/{payment['id']}")
        return reply.json if reply.json["status"] != "pending" else None

    done = await wait_until(final)
    assert done["status"] in ("failed", "closed")
    await receiver.wait_for(1)
    event = orjson.loads(receiver.received[0]["body"])
    assert event["type"] == f"payment.{done['status']}"


async def test_closed_payment_cannot_be_paid_then_succeeded_cannot_close(
    gateway: Gateway, client: MerchantClient
) -> None:
    payment = (await client.create_payment()).json
    await pay_on_payer_page(gateway, payment["next_action"]["url"])

    async def succeeded() -> bool:
        reply = await client.request("GET", f"/v1/payments/{payment['id']}")
        return bool(reply.json["status"] == "succeeded")

    await wait_until(succeeded)
    reply = await client.request("POST", f"/v1/payments/{payment['id']}/close")
    assert (reply.status, reply.json["code"]) == (409, "invalid_state")
