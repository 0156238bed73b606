"""Status sync and expiry: creates that timed out resolved by query, pending payments closed at
their expiry (or succeeded, if the channel says they were paid), payments paid after the
gateway closed them, queried successes that do not carry the payment's money, payments the
channel reports neither paid nor failed (an operator's matter), and two gateways sharing the
sync without querying one attempt at once. (Orders the gateway gave up and watches:
test_given_up_orders.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from adapters.bank import simulator as bank_simulator
from adapters.base import ChannelResult, Outcome
from adapters.simkit import now as sim_now
from gateway.api.context import SERVICES
from tests.fixtures import Gateway, start_gateway
from tests.integration.test_refunds import (
    channel_order,
    get_payment,
    hang_for,
    payer_acts,
    set_faults,
    short_timeouts_routing,
    simulator,
    wait_payment,
)
from tests.support import Creds, MerchantClient, Receiver, wait_until

StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[StartGateway]:
    """Start gateways on the test's database with settings of the test's choosing."""
    started: list[tuple[Gateway, Any]] = []

    async def run(**overrides: Any) -> Gateway:
        gw, server = await start_gateway(database_url, redis_prefix, **overrides)
        started.append((gw, server))
        return gw

    yield run
    for gw, server in reversed(started):
        await gw.http.close()
        await server.close()


def event_types(receiver: Receiver) -> list[str]:
    return [orjson.loads(c["body"])["type"] for c in receiver.received]


async def attempt_row(db: asyncpg.Pool, payment_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT * FROM payment_attempts WHERE payment_id = $1 ORDER BY seq DESC LIMIT 1",
        payment_id,
    )
    assert row is not None
    return row


# ---- creates that timed out -----------------------------------------------------------------


async def test_create_timed_out_is_resolved_by_query(
    start: StartGateway, merchant: Creds, db: asyncpg.Pool, tmp_path: Path
) -> None:
    """The bank answers the create after the adapter gave up (but acts on it): the attempt is
    unknown, no next action; the sync's query finds the order waiting, and with it the payer's
    page; the payer pays and the payment succeeds."""
    gateway = await start(
        routing_file=short_timeouts_routing(tmp_path, 400), sync_schedule="1.5,0.5,1"
    )
    client = gateway.client(merchant)
    hang_for(gateway, "bank", 1.0)
    await set_faults(gateway, "bank", timeout_rate=1.0)
    created = await client.create_payment()
    await set_faults(gateway, "bank", timeout_rate=0.0)
    assert created.status == 201, created.body
    payment = created.json
    assert (payment["status"], payment["next_action"]) == ("pending", None)
    assert (await attempt_row(db, payment["id"]))["status"] == "unknown"

    found = await wait_payment(client, payment["id"], lambda p: p["next_action"] is not None)
    assert found["status"] == "pending"
    attempt = await attempt_row(db, payment["id"])
    assert attempt["status"] == "waiting" and attempt["sync_count"] >= 1
    assert await payer_acts(gateway, found["next_action"]["url"]) == 200
    done = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
    assert done["status"] == "succeeded"
    # one order at the bank, the one the gateway knows
    assert (await channel_order(gateway, "bank", payment["channel_order_id"]))["status"] == (
        "SUCCESS"
    )


async def create_that_hangs(
    start: StartGateway, merchant: Creds, tmp_path: Path
) -> tuple[Gateway, MerchantClient, dict[str, Any]]:
    """A card payment whose create the adapter gives up on after 0.4 s, while the bank acts on
    it after 2 s: pending, its outcome unknown."""
    gateway = await start(routing_file=short_timeouts_routing(tmp_path, 400))
    client = gateway.client(merchant)
    hang_for(gateway, "bank", 2.0)
    await set_faults(gateway, "bank", timeout_rate=1.0)
    payment = (await client.create_payment()).json
    await set_faults(gateway, "bank", timeout_rate=0.0)
    assert payment["status"] == "pending"
    return gateway, client, payment


async def test_create_that_reaches_the_channel_after_the_query_cannot_open_it(
    start: StartGateway, merchant: Creds, db: asyncpg.Pool, tmp_path: Path
) -> None:
    """The sync asks before the hung create reached the bank: the bank has no such order. The
    gateway closes the order number at the bank before failing the payment, so that the create
    arriving later is refused and nobody can pay a payment the merchant was told failed."""
    gateway, client, payment = await create_that_hangs(start, merchant, tmp_path)
    done = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
    assert done["status"] == "failed"
    assert (await attempt_row(db, payment["id"]))["status"] == "failed"
    # the hung create lands now: nothing observable is meant to happen, so wait it out
    await asyncio.sleep(2.2)
    order = await channel_order(gateway, "bank", payment["channel_order_id"])
    assert order["status"] == "CLOSED"
    pay_url = f"{gateway.url}/sim/bank/pay/{payment['channel_order_id']}"
    assert await payer_acts(gateway, pay_url) >= 400
    assert (await get_payment(client, payment["id"]))["status"] == "failed"


async def test_a_close_whose_answer_was_lost_does_not_fail_the_payment(
    start: StartGateway, merchant: Creds, db: asyncpg.Pool, tmp_path: Path
) -> None:
    """As above, but the bank's answers to the gateway's closes are lost: "no such order" from
    a query proves nothing then (the hung create may still land, and does), so the payment is
    not failed; once the order exists, the payment goes on as usual."""
    gateway, client, payment = await create_that_hangs(start, merchant, tmp_path)
    adapter = gateway.app[SERVICES].channels.adapter(payment["channel"])
    assert adapter is not None
    closes: list[str] = []

    async def close_lost(channel_order_id: str) -> ChannelResult:
        closes.append(channel_order_id)
        return ChannelResult(Outcome.UNKNOWN, channel_code="TIMEOUT")

    adapter.close_payment = close_lost  # type: ignore[method-assign]

    async def waiting() -> bool:
        return (await attempt_row(db, payment["id"]))["status"] == "waiting"

    await wait_until(waiting)
    assert closes  # the sync tried to close it first
    found = await get_payment(client, payment["id"])
    assert found["status"] == "pending" and found["next_action"] is not None
    assert (await channel_order(gateway, "bank", payment["channel_order_id"]))["status"] == (
        "CREATED"
    )
    assert await payer_acts(gateway, found["next_action"]["url"]) == 200
    done = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
    assert done["status"] == "succeeded"


# ---- expiry -----------------------------------------------------------------------------------

CHANNELS = [
    pytest.param("card", "bank", id="bank"),
    pytest.param("wechat_qr", "wechat", id="wechat"),
    pytest.param("alipay_qr", "alipay", id="alipay"),
    pytest.param("unionpay_qr", "unionpay", id="unionpay"),
]


async def expire_now(db: asyncpg.Pool, payment_id: str) -> None:
    await db.execute(
        "UPDATE payments SET expires_at = now() - interval '1 second' WHERE id = $1", payment_id
    )


@pytest.mark.parametrize(("method", "adapter"), CHANNELS)
async def test_expiry(
    gateway: Gateway,
    client: MerchantClient,
    receiver: Receiver,
    db: asyncpg.Pool,
    method: str,
    adapter: str,
) -> None:
    """Two payments past their expiry: the unpaid one is closed at the channel and here
    (payment.closed); the one the payer paid (its notification lost) succeeds."""
    unpaid = (
        await client.create_payment(method=method, expires_in=60, notify_url=receiver.url)
    ).json
    await set_faults(gateway, adapter, notify="drop")
    paid = (await client.create_payment(method=method, expires_in=60, notify_url=receiver.url)).json
    assert await payer_acts(gateway, paid["next_action"]["url"]) == 200
    expired_before = REGISTRY.get_sample_value("gateway_payments_expired_total") or 0.0
    await expire_now(db, unpaid["id"])
    await expire_now(db, paid["id"])

    closed = await wait_payment(client, unpaid["id"], lambda p: p["status"] != "pending")
    assert closed["status"] == "closed"
    assert closed["failure"]["code"] == "expired" and closed["next_action"] is None
    attempt = await attempt_row(db, unpaid["id"])
    assert attempt["status"] == "closed" and attempt["next_sync_at"] is None
    assert (REGISTRY.get_sample_value("gateway_payments_expired_total") or 0.0) == (
        expired_before + 1
    )
    # closed at the channel too: the payer can no longer pay
    assert await payer_acts(gateway, unpaid["next_action"]["url"]) >= 400

    succeeded = await wait_payment(client, paid["id"], lambda p: p["status"] != "pending")
    assert succeeded["status"] == "succeeded" and succeeded["failure"] is None
    order = await channel_order(gateway, adapter, paid["channel_order_id"])
    assert order["paid_at"] is not None

    await receiver.wait_for(2)
    assert client.creds.webhook_secret is not None
    hook = Webhook(client.creds.webhook_secret)
    events = {
        e["data"]["object"]["id"]: e["type"]
        for e in (hook.verify(c["body"], c["headers"]) for c in receiver.received)
    }
    assert events == {unpaid["id"]: "payment.closed", paid["id"]: "payment.succeeded"}


# ---- paid after the gateway closed it ---------------------------------------------------------


def pay_closed_order_at_the_bank(gateway: Gateway, channel_order_id: str) -> None:
    """The payer's card went through at the bank just as the gateway closed the order (the
    bank's page refuses a closed order, so this is done in the bank's order book), and the
    bank notifies the success."""
    sim = simulator(gateway, "bank")
    order = sim.core.orders[channel_order_id]
    assert order.status == "CLOSED"
    bank_simulator.settle(order, bank_simulator.p.OrderStatus.SUCCESS, "00", sim_now())
    order.closed_at = None
    sim.core.notify(order, sim._payment_sender(order))


def late_payments(channel: str) -> float:
    return REGISTRY.get_sample_value("gateway_late_payments_total", {"channel": channel}) or 0.0


async def closed_payment(
    gateway: Gateway, client: MerchantClient, receiver: Receiver
) -> dict[str, Any]:
    payment = (await client.create_payment(amount=4200, notify_url=receiver.url)).json
    closed = await client.request("POST", f"/v1/payments/{payment['id']}/close")
    assert (closed.status, closed.json["status"]) == (200, "closed")
    await receiver.wait_for(1)
    assert await payer_acts(gateway, payment["next_action"]["url"]) >= 400
    return payment


async def test_late_payment_is_recorded_and_alerted(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    payment = await closed_payment(gateway, client, receiver)
    before = late_payments(payment["channel"])
    await set_faults(gateway, "bank", notify="duplicate")
    with capture_logs() as logs:
        pay_closed_order_at_the_bank(gateway, payment["channel_order_id"])

        async def recorded() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM events WHERE type = 'payment.paid_after_close'"
                )
            )

        await wait_until(recorded)
        sim = simulator(gateway, "bank")

        async def both_copies_sent() -> bool:
            return bool(sim.core.notifications_sent >= 2)

        await wait_until(both_copies_sent)

    alerts = [e for e in logs if e["event"] == "late_payment_after_final_state"]
    assert len(alerts) == 1
    assert alerts[0]["log_level"] == "error" and alerts[0]["payment_id"] == payment["id"]
    assert late_payments(payment["channel"]) == before + 1
    record = await db.fetchrow(
        "SELECT payload, refund_id FROM events WHERE type = 'payment.paid_after_close'"
    )
    payload = orjson.loads(record["payload"])  # the test pool has no jsonb codec
    assert payload["channel_order_id"] == payment["channel_order_id"]
    assert payload["amount"] == 4200 and payload["payment_status"] == "closed"
    assert record["refund_id"] is None
    attempt = await attempt_row(db, payment["id"])
    assert attempt["channel_trade_no"] and attempt["status"] == "closed"
    # the payment stays closed, nothing is refunded, the merchant got only payment.closed
    now = await get_payment(client, payment["id"])
    assert (now["status"], now["refunded_amount"]) == ("closed", 0)
    assert await db.fetchval("SELECT count(*) FROM refunds") == 0
    assert await db.fetchval("SELECT count(*) FROM callback_deliveries") == 1
    assert event_types(receiver) == ["payment.closed"]


async def test_late_payment_is_refunded_when_the_setting_says_so(
    start: StartGateway, merchant: Creds, receiver: Receiver, db: asyncpg.Pool
) -> None:
    gateway = await start(late_payment_auto_refund=True)
    assert gateway.app[SERVICES].settings.late_payment_auto_refund is True
    client = gateway.client(merchant)
    payment = await closed_payment(gateway, client, receiver)
    await set_faults(gateway, "bank", notify="duplicate")
    pay_closed_order_at_the_bank(gateway, payment["channel_order_id"])

    async def refunded() -> Any:
        row = await db.fetchrow("SELECT * FROM refunds WHERE payment_id = $1", payment["id"])
        return row if row is not None and row["status"] != "pending" else None

    refund = await wait_until(refunded)
    assert (refund["status"], refund["amount"]) == ("succeeded", 4200)
    assert refund["merchant_refund_id"] == f"late_{payment['channel_order_id']}"
    order = await channel_order(gateway, "bank", payment["channel_order_id"])
    assert [r["amount"] for r in order["refunds"].values()] == [4200]
    now = await get_payment(client, payment["id"])
    assert (now["status"], now["refunded_amount"]) == ("closed", 4200)
    record = await db.fetchrow(
        "SELECT refund_id FROM events WHERE type = 'payment.paid_after_close'"
    )
    assert record["refund_id"] == refund["id"]
    await receiver.wait_for(2)
    assert event_types(receiver) == ["payment.closed", "refund.succeeded"]
    assert await db.fetchval("SELECT count(*) FROM refunds") == 1


# ---- two sync workers -------------------------------------------------------------------------


async def test_two_sync_workers_never_query_one_attempt_at_once(
    start: StartGateway, merchant: Creds, db: asyncpg.Pool
) -> None:
    fast = {"sync_schedule": "0.2", "sync_poll_s": 0.05}
    first = await start(**fast)
    # the second gateway talks to the first one's simulators: one bank for both
    second = await start(simulators=False, public_url=first.url, **fast)
    client = first.client(merchant)

    calls: list[tuple[str, str, float, float]] = []
    for name, gateway in (("first", first), ("second", second)):
        channels = gateway.app[SERVICES].channels
        for channel in channels.routing.config.channels:
            adapter = channels.adapter(channel)
            if adapter is not None:
                adapter.query_payment = _recording(  # type: ignore[method-assign]
                    adapter.query_payment, name, calls
                )

    created = await asyncio.gather(*(client.create_payment() for _ in range(30)))
    order_ids = {c.json["channel_order_id"] for c in created}
    await set_faults(first, "bank", latency_ms=100)  # every query takes a while

    async def everyone_queried_thrice() -> bool:
        counts: dict[str, int] = defaultdict(int)
        for _, order_id, _, _ in list(calls):
            counts[order_id] += 1
        return all(counts[o] >= 3 for o in order_ids)

    await wait_until(everyone_queried_thrice, within=20)

    by_order: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, order_id, started, ended in calls:
        by_order[order_id].append((started, ended))
    for order_id, spans in by_order.items():
        spans.sort()
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert begin >= end, f"{order_id} was queried twice at once"
    workers = {name for name, _, _, _ in calls}
    assert workers == {"first", "second"}
    pending = await db.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'")
    assert pending == len(order_ids)


def _recording(
    query: Callable[[str], Awaitable[Any]], name: str, calls: list[tuple[str, str, float, float]]
) -> Callable[[str], Awaitable[Any]]:
    async def wrapped(channel_order_id: str) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await query(channel_order_id)
        finally:
            calls.append((name, channel_order_id, started, loop.time()))

    return wrapped


# ---- what a query says that cannot be applied as it is ---------------------------------------


def bank_adapter(gateway: Gateway, channel: str) -> Any:
    adapter = gateway.app[SERVICES].channels.adapter(channel)
    assert adapter is not None
    return adapter


def amount_mismatches(channel: str, reason: str, kind: str = "payment") -> float:
    value = REGISTRY.get_sample_value(
        "gateway_channel_amount_mismatches_total",
        {"channel": channel, "kind": kind, "reason": reason},
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"currency": None}, "missing"), ({"amount": None}, "missing"), ({"amount": 1}, "amount")],
)
async def test_a_queried_success_without_the_payments_money_is_not_applied(
    gateway: Gateway,
    client: MerchantClient,
    db: asyncpg.Pool,
    change: dict[str, Any],
    reason: str,
) -> None:
    """The payer paid (the notification lost); the bank's query answer is missing the currency
    (or the amount), or names another amount: not applied, alerted, the attempt stays open;
    the next answer, a whole one, is applied."""
    payment = (await client.create_payment()).json
    adapter = bank_adapter(gateway, payment["channel"])
    query = adapter.query_payment

    async def altered(channel_order_id: str) -> Any:
        return dataclasses.replace(await query(channel_order_id), **change)

    adapter.query_payment = altered
    await set_faults(gateway, "bank", notify="drop")
    before = amount_mismatches(payment["channel"], reason)
    with capture_logs() as logs:
        assert await payer_acts(gateway, payment["next_action"]["url"]) == 200

        async def refused_twice() -> bool:
            return amount_mismatches(payment["channel"], reason) >= before + 2

        await wait_until(refused_twice)
    alerts = [e for e in logs if e["event"] == "channel_amount_mismatch"]
    assert alerts and all(a["alert"] is True and a["reason"] == reason for a in alerts)
    assert (await get_payment(client, payment["id"]))["status"] == "pending"
    attempt = await attempt_row(db, payment["id"])
    assert attempt["status"] == "waiting" and attempt["next_sync_at"] is not None
    del adapter.query_payment  # the bank's answers as they are
    done = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
    assert done["status"] == "succeeded"


# ---- neither paid nor failed, though money may have moved ------------------------------------


def needs_operator(channel: str, kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_channel_needs_operator_total", {"channel": channel, "kind": kind}
    )
    return value or 0.0


async def test_a_payment_that_needs_an_operator_stays_open_past_its_expiry(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, receiver: Receiver
) -> None:
    """UnionPay's origRespCode 42/45 (the bank plays it here): WAITING with needs_operator.
    Recorded once for an operator (record, metric, alert), never closed nor failed, even past
    its expiry; asked about again on the slow end of the schedule (2 s in tests)."""
    payment = (await client.create_payment(notify_url=receiver.url)).json
    channel = payment["channel"]
    adapter = bank_adapter(gateway, channel)
    closes: list[str] = []
    close = adapter.close_payment

    async def unknown_to_everyone(channel_order_id: str) -> Any:
        return ChannelResult(
            Outcome.WAITING, channel_code="42", channel_message="状态未明", needs_operator=True
        )

    async def recorded_close(channel_order_id: str) -> Any:
        closes.append(channel_order_id)
        return await close(channel_order_id)

    adapter.query_payment = unknown_to_everyone
    adapter.close_payment = recorded_close
    before = needs_operator(channel, "payment")
    await expire_now(db, payment["id"])
    with capture_logs() as logs:

        async def synced_twice() -> bool:
            return (await attempt_row(db, payment["id"]))["sync_count"] >= 2

        await wait_until(synced_twice)
    assert needs_operator(channel, "payment") == before + 1
    alerts = [e for e in logs if e["event"] == "channel_needs_operator"]
    assert len(alerts) == 1 and alerts[0]["alert"] is True
    assert alerts[0]["channel_code"] == "42"
    [record] = await db.fetch(
        "SELECT payload FROM events WHERE type = 'payment.needs_operator' AND payment_id = $1",
        payment["id"],
    )
    assert orjson.loads(record["payload"])["channel_order_id"] == payment["channel_order_id"]
    assert closes == []
    now = await get_payment(client, payment["id"])
    assert now["status"] == "pending"
    attempt = await attempt_row(db, payment["id"])
    assert attempt["status"] == "waiting"
    wait = await db.fetchval(
        "SELECT extract(epoch FROM next_sync_at - now()) FROM payment_attempts WHERE id = $1",
        attempt["id"],
    )
    assert 1.0 < float(wait) <= 2.0  # the slow end, not the expiry's immediate close
    assert await db.fetchval("SELECT count(*) FROM callback_deliveries") == 0
