"""`POST /notify/{channel}`: a forged or stale notification is refused in the channel's own
format and changes nothing; the refused ones are counted for operators per channel, outcome
and minute, with no database write per notification (a flood costs one write); a notification
id is applied once (a repeat is acknowledged, not applied again); a correctly signed success
whose amount or currency is not the payment's is refused, recorded and alerted (API.md §3); an
unknown channel is 404."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import asyncpg
import orjson
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from adapters.bank import protocol as bank_protocol
from adapters.kernel.crypto import load_private_key
from gateway.api.context import SERVICES
from tests.fixtures import ROOT, Gateway
from tests.integration.test_refunds import get_payment, payer_acts, set_faults, wait_payment
from tests.support import MerchantClient, wait_until

BANK_KEY = load_private_key((ROOT / "config" / "keys" / "bank" / "bank_private.pem").read_bytes())
BANK_MERCHANT = "M100200300"  # config/routing.yaml's bank channels


def signed_by_the_bank(
    body: dict[str, Any], *, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A notification as the bank sends it (docs/channels/bank.md), signed with its key."""
    raw = orjson.dumps(body)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_urlsafe(24)
    message = bank_protocol.notification_message(BANK_MERCHANT, stamp, nonce, raw)
    return raw, {
        "Content-Type": "application/json",
        bank_protocol.HEADER_TIMESTAMP: stamp,
        bank_protocol.HEADER_NONCE: nonce,
        bank_protocol.HEADER_SIGNATURE: bank_protocol.sign(BANK_KEY, message),
    }


def paid_notification(payment: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "notify_type": "PAYMENT",
        "notify_id": "N" + secrets.token_hex(8),
        "notify_time": "2024-05-01T12:02:05+08:00",
        "merchant_id": BANK_MERCHANT,
        "order_no": payment["channel_order_id"],
        "txn_id": "B" + secrets.token_hex(8),
        "amount": payment["amount"],
        "currency": payment["currency"],
        "status": "SUCCESS",
        "resp_code": "00",
        "resp_msg": "Approved",
        "paid_time": "2024-05-01T12:02:04+08:00",
        **changes,
    }


async def notify(gateway: Gateway, channel: str, raw: bytes, headers: dict[str, str]) -> Any:
    async with gateway.http.post(
        f"{gateway.url}/notify/{channel}", data=raw, headers=headers
    ) as resp:
        return resp.status, await resp.json()


def notifications(channel: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_channel_notifications_total", {"channel": channel, "result": result}
    )
    return value or 0.0


async def counted(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM channel_notification_counts ORDER BY outcome"))


async def write_counts(gateway: Gateway) -> None:
    await gateway.app[SERVICES].notifications.audit.flush()


# ---- refused ---------------------------------------------------------------------------------


async def test_forged_bank_notification_is_refused_and_counted(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    payment = (await client.create_payment()).json
    forged = {
        "notify_type": "PAYMENT",
        "order_no": payment["channel_order_id"],
        "status": "SUCCESS",
        "resp_code": "00",
        "amount": payment["amount"],
    }
    async with gateway.http.post(
        f"{gateway.url}/notify/{payment['channel']}",
        data=orjson.dumps(forged),
        headers={"Content-Type": "application/json", "X-Bank-Signature": "Zm9yZ2Vk"},
    ) as resp:
        assert resp.status == 500  # the bank's "not accepted": it would send again
        assert (await resp.json())["code"] == "FAIL"
    still = await client.request("GET", f"/v1/payments/{payment['id']}")
    assert still.json["status"] == "pending"
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    await write_counts(gateway)
    [row] = await counted(db)
    assert (row["channel"], row["outcome"], row["count"]) == (payment["channel"], "rejected", 1)


async def test_a_stale_bank_notification_is_refused(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """Genuinely signed by the bank, but six minutes old: a recording replayed."""
    payment = (await client.create_payment()).json
    raw, headers = signed_by_the_bank(paid_notification(payment), timestamp=int(time.time()) - 360)
    with capture_logs() as logs:
        status, body = await notify(gateway, payment["channel"], raw, headers)
    assert (status, body["code"]) == (500, "FAIL")
    reasons = [e.get("reason") for e in logs if e["event"] == "notification_rejected"]
    assert reasons == ["timestamp outside the notification window"]
    assert (await get_payment(client, payment["id"]))["status"] == "pending"
    # the same notification signed now is applied: only its age was wrong
    raw, headers = signed_by_the_bank(paid_notification(payment))
    assert (await notify(gateway, payment["channel"], raw, headers))[0] == 200
    assert (await get_payment(client, payment["id"]))["status"] == "succeeded"


async def test_a_flood_of_forged_notifications_costs_one_write(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """200 forged and 3 for an order we do not know: nothing is written while they arrive;
    one statement then writes one row per channel, outcome and minute, with the counts, the
    first and last moment seen and an order id they named."""
    audit = gateway.app[SERVICES].notifications.audit
    audit.flush_after_s = 3600  # the test writes the counts itself
    started = time.time()

    async def forged() -> int:
        async with gateway.http.post(
            f"{gateway.url}/notify/bank_icbc",
            data=b'{"notify_type":"PAYMENT"}',
            headers={"Content-Type": "application/json", "X-Bank-Signature": "Zm9yZ2Vk"},
        ) as resp:
            return resp.status

    assert set(await asyncio.gather(*(forged() for _ in range(200)))) == {500}
    unknown = {"channel_order_id": "pay_nobodyknows_1", "amount": 100, "currency": "CNY"}
    for _ in range(3):
        raw, headers = signed_by_the_bank(paid_notification(unknown))
        assert (await notify(gateway, "bank_icbc", raw, headers))[0] == 500
    assert await counted(db) == []  # no write per notification

    await write_counts(gateway)
    rows = await counted(db)
    by_outcome: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_outcome.setdefault(row["outcome"], []).append(row)
    assert set(by_outcome) == {"rejected", "unknown_order"}
    assert len(rows) <= 4  # one row each, or two if the flood straddled a minute
    assert sum(r["count"] for r in by_outcome["rejected"]) == 200
    assert sum(r["count"] for r in by_outcome["unknown_order"]) == 3
    assert {r["sample_channel_order_id"] for r in by_outcome["rejected"]} == {None}
    assert {r["sample_channel_order_id"] for r in by_outcome["unknown_order"]} == {
        "pay_nobodyknows_1"
    }
    for row in rows:
        assert started - 1 <= row["first_seen"].timestamp() <= row["last_seen"].timestamp()
        assert row["last_seen"].timestamp() <= time.time() + 1
        assert row["minute"].second == 0 and row["minute"] <= row["first_seen"]

    # a later write adds to the same bucket (as a second process's would)
    await forged()
    await write_counts(gateway)
    total = await db.fetchval(
        "SELECT sum(count) FROM channel_notification_counts WHERE outcome = 'rejected'"
    )
    assert total == 201


async def test_counts_are_written_when_the_gateway_stops(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    gateway.app[SERVICES].notifications.audit.flush_after_s = 3600
    async with gateway.http.post(f"{gateway.url}/notify/bank_icbc", data=b"{}") as resp:
        assert resp.status == 500
    assert await counted(db) == []
    await gateway.server.close()  # on_shutdown, before the pool closes
    [row] = await counted(db)
    assert (row["outcome"], row["count"]) == ("rejected", 1)


# ---- applied once ----------------------------------------------------------------------------


async def test_a_notification_id_is_applied_once(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """The bank delivers its notification twice (same notify_id): the first is applied, the
    second acknowledged as accepted and not applied again."""
    payment = (await client.create_payment()).json
    channel = payment["channel"]
    applied, repeated = notifications(channel, "applied"), notifications(channel, "repeated")
    await set_faults(gateway, "bank", notify="duplicate")
    with capture_logs() as logs:
        assert await payer_acts(gateway, payment["next_action"]["url"]) == 200

        async def both_answered() -> bool:
            return notifications(channel, "applied") + notifications(channel, "repeated") >= (
                applied + repeated + 2
            )

        await wait_until(both_answered)
    assert notifications(channel, "applied") == applied + 1
    assert notifications(channel, "repeated") == repeated + 1
    [repeat] = [e for e in logs if e["event"] == "notification_repeated"]
    row = await db.fetchrow(
        "SELECT * FROM channel_notification_ids WHERE notification_id = $1",
        repeat["notification_id"],
    )
    assert row is not None and row["channel"] == channel
    done = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
    assert done["status"] == "succeeded"
    assert await db.fetchval("SELECT count(*) FROM events") == 1  # one payment.succeeded


async def test_a_redelivery_signed_afresh_is_a_repeat(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """The bank signs every delivery afresh (new timestamp and nonce): the notify_id, not the
    bytes, makes it the same notification."""
    payment = (await client.create_payment()).json
    channel = payment["channel"]
    body = paid_notification(payment)
    raw, headers = signed_by_the_bank(body)
    assert (await notify(gateway, channel, raw, headers))[0] == 200
    events = await db.fetchval("SELECT count(*) FROM events")
    repeated = notifications(channel, "repeated")
    raw, headers = signed_by_the_bank(body | {"notify_time": "2024-05-01T12:03:05+08:00"})
    assert (await notify(gateway, channel, raw, headers))[0] == 200  # accepted
    assert notifications(channel, "repeated") == repeated + 1  # and not applied again
    assert await db.fetchval("SELECT count(*) FROM events") == events
    ids = await db.fetch("SELECT channel, notification_id FROM channel_notification_ids")
    assert [(r["channel"], r["notification_id"]) for r in ids] == [(channel, body["notify_id"])]


# ---- a success whose money is not ours ---------------------------------------------------------


def mismatches(channel: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_channel_amount_mismatches_total",
        {"channel": channel, "kind": "payment", "reason": reason},
    )
    return value or 0.0


async def test_a_success_with_another_amount_or_currency_is_refused_recorded_and_alerted(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    payment = (await client.create_payment(amount=4200)).json
    channel = payment["channel"]
    before = {reason: mismatches(channel, reason) for reason in ("amount", "currency")}
    with capture_logs() as logs:
        for changes in ({"amount": 1}, {"currency": "USD"}, {"amount": 1}):
            raw, headers = signed_by_the_bank(paid_notification(payment, **changes))
            status, body = await notify(gateway, channel, raw, headers)
            assert (status, body["code"]) == (500, "FAIL")  # the bank will send it again
    assert (await get_payment(client, payment["id"]))["status"] == "pending"
    assert mismatches(channel, "amount") == before["amount"] + 2
    assert mismatches(channel, "currency") == before["currency"] + 1
    alerts = [e for e in logs if e["event"] == "channel_amount_mismatch"]
    assert [(a["reason"], a["reported_amount"], a["reported_currency"]) for a in alerts] == [
        ("amount", 1, "CNY"),
        ("currency", 4200, "USD"),
        ("amount", 1, "CNY"),
    ]
    assert all(a["alert"] is True and a["log_level"] == "error" for a in alerts)
    # recorded once for an operator (an internal event, never delivered)
    [record] = await db.fetch(
        "SELECT payload FROM events WHERE type = 'payment.amount_mismatch' AND payment_id = $1",
        payment["id"],
    )
    payload = orjson.loads(record["payload"])
    assert (payload["expected_amount"], payload["reported_amount"]) == (4200, 1)
    assert payload["channel_order_id"] == payment["channel_order_id"]
    assert await db.fetchval("SELECT count(*) FROM callback_deliveries") == 0
    assert await db.fetchval("SELECT count(*) FROM channel_notification_ids") == 0
    await write_counts(gateway)
    [row] = await counted(db)
    assert (row["outcome"], row["count"]) == ("amount_mismatch", 3)
    assert row["sample_channel_order_id"] == payment["channel_order_id"]

    # the genuine one is applied
    raw, headers = signed_by_the_bank(paid_notification(payment))
    assert (await notify(gateway, channel, raw, headers))[0] == 200
    assert (await get_payment(client, payment["id"]))["status"] == "succeeded"


async def test_unknown_channel_is_404(gateway: Gateway) -> None:
    async with gateway.http.post(f"{gateway.url}/notify/nope", data=b"{}") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
