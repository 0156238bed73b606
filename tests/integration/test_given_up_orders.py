"""Orders the gateway gave up, through a real gateway and the bank simulator: an attempt failed
over after an answer that may have created its order is closed at the channel by the status
sync (with backoff, until the channel confirms; paid there, a late payment); a success for a
failed-over attempt after another attempt took the payment is a late payment, refunded when
the setting says so without touching the merchant's payment; a closed order the channel could
not close (`watch_until`) is queried until then, and a payment there is a late payment.

The bank never answers "may have created the order" nor "cannot close": those answers are the
other channels' (WeChat SYSTEM_ERROR, UnionPay's QR orders), so the tests make the bank adapter
give them (`answers_system_error_after_creating`, `closes_locally`) while the simulator plays
everything else for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from adapters.base import (
    ChannelAdapter,
    ChannelResult,
    CreatePayment,
    Decision,
    Outcome,
)
from gateway.api.context import SERVICES
from tests.fixtures import Gateway, new_merchant, start_gateway
from tests.integration.test_refunds import (
    channel_order,
    get_payment,
    payer_acts,
    set_faults,
    wait_payment,
)
from tests.integration.test_sync import attempt_row, event_types, expire_now, late_payments
from tests.support import MerchantClient, Receiver, wait_until

BANK = """
    adapter: bank
    methods: [card]
    timeout_ms: 3000
    config:
      base_url: ${GATEWAY_PUBLIC_URL}/sim/bank
      merchant_id: M100200300
      merchant_private_key: keys/bank/merchant_private.pem
      bank_public_key: keys/bank/bank_public.pem
"""

TWO_BANKS = f"""
channels:
  bank_a:{BANK}
  bank_b:{BANK}
default:
  route:
    strategy: priority
    channels: [bank_a, bank_b]
settings:
  max_attempts: 2
"""

Start = Callable[..., Awaitable[tuple[Gateway, MerchantClient]]]


@pytest.fixture
async def start(
    tmp_path: Path, database_url: str, redis_prefix: str, redis_client: aioredis.Redis
) -> AsyncIterator[Start]:
    """`await start(**settings)`: a gateway routing card payments to bank_a, then bank_b (both
    at its bank simulator), and a merchant's client."""
    started: list[tuple[Gateway, Any]] = []
    routing = tmp_path / "routing.yaml"
    routing.write_text(TWO_BANKS)

    async def run(**settings: Any) -> tuple[Gateway, MerchantClient]:
        gateway, server = await start_gateway(
            database_url, redis_prefix, routing_file=routing, **settings
        )
        started.append((gateway, server))
        return gateway, gateway.client(await new_merchant(database_url))

    yield run
    for gateway, server in reversed(started):
        await gateway.http.close()
        await server.close()


def adapter_of(gateway: Gateway, channel: str) -> ChannelAdapter:
    adapter = gateway.app[SERVICES].channels.adapter(channel)
    assert adapter is not None
    return adapter


def answers_system_error_after_creating(adapter: ChannelAdapter) -> None:
    """The create reaches the channel and opens the order, but the answer is WeChat's
    SYSTEM_ERROR (fail over: the payer never got a way to pay, yet the order may exist)."""
    create = adapter.create_payment

    async def create_then_system_error(req: CreatePayment) -> ChannelResult:
        await create(req)
        return ChannelResult(
            Outcome.SYSTEM_ERROR, Decision.FAILOVER, "SYSTEM_ERROR", order_may_exist=True
        )

    adapter.create_payment = create_then_system_error  # type: ignore[method-assign]


def closes_locally(adapter: ChannelAdapter, stays_payable_s: float) -> None:
    """A channel with no close for an unpaid order (UnionPay's QR): the close "succeeds" at
    once, and the order stays payable at the channel until `watch_until`."""

    async def local_close(channel_order_id: str) -> ChannelResult:
        return ChannelResult(
            Outcome.SUCCEEDED,
            channel_code="LOCAL_CLOSE",
            watch_until=datetime.now(UTC) + timedelta(seconds=stays_payable_s),
        )

    adapter.close_payment = local_close  # type: ignore[method-assign]


def bank_page(gateway: Gateway, channel_order_id: str) -> str:
    return f"{gateway.url}/sim/bank/pay/{channel_order_id}"


async def attempts(db: asyncpg.Pool, payment_id: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT * FROM payment_attempts WHERE payment_id = $1 ORDER BY seq", payment_id
        )
    )


def closes(channel: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_given_up_attempt_closes_total", {"channel": channel, "result": result}
    )
    return value or 0.0


async def failed_over_payment(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, **overrides: Any
) -> tuple[dict[str, Any], str]:
    """A payment whose first attempt (bank_a) was answered "system error" after creating its
    order: the payment is pending at bank_b. Returns it and the first attempt's order id."""
    answers_system_error_after_creating(adapter_of(gateway, "bank_a"))
    reply = await client.create_payment(**overrides)
    assert reply.status == 201, reply.body
    payment = reply.json
    assert (payment["status"], payment["channel"]) == ("pending", "bank_b")
    first, second = await attempts(db, payment["id"])
    assert (first["status"], first["decision"], second["status"]) == (
        "closing",
        "failover",
        "waiting",
    )
    assert first["next_sync_at"] is not None
    return payment, first["channel_order_id"]


# ---- failed over while the order may exist ----------------------------------------------------


async def test_a_failed_over_order_that_may_exist_is_closed_at_the_channel(
    start: Start, db: asyncpg.Pool
) -> None:
    """The bank is down for the first closes: the sync tries again, with backoff, until the
    bank confirms; the order is closed there and nobody can pay it; the payment goes on at
    bank_b."""
    gateway, client = await start(sync_schedule="1,0.3,0.5")
    closed_before = closes("bank_a", "closed")
    unconfirmed_before = closes("bank_a", "unconfirmed")
    payment, first_order = await failed_over_payment(gateway, client, db)
    assert (await channel_order(gateway, "bank", first_order))["status"] == "CREATED"
    await set_faults(gateway, "bank", error_rate=1.0)

    async def tried_twice() -> bool:
        return closes("bank_a", "unconfirmed") >= unconfirmed_before + 2

    await wait_until(tried_twice)
    first = (await attempts(db, payment["id"]))[0]
    assert first["status"] == "closing" and first["sync_count"] >= 2
    await set_faults(gateway, "bank", error_rate=0.0)

    async def closed() -> bool:
        return (await attempts(db, payment["id"]))[0]["status"] == "closed"

    await wait_until(closed)
    assert closes("bank_a", "closed") == closed_before + 1
    first = (await attempts(db, payment["id"]))[0]
    assert first["next_sync_at"] is None and first["watch_until"] is None
    assert (await channel_order(gateway, "bank", first_order))["status"] == "CLOSED"
    assert await payer_acts(gateway, bank_page(gateway, first_order)) >= 400
    # the payment itself is untouched: pending at bank_b, which the payer can pay
    assert await payer_acts(gateway, payment["next_action"]["url"]) == 200
    done = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
    assert (done["status"], done["channel_order_id"]) == ("succeeded", f"{payment['id']}_2")
    assert await db.fetchval("SELECT count(*) FROM events WHERE type LIKE '%after_close'") == 0


async def test_a_failed_over_order_paid_before_its_close_is_a_late_payment(
    start: Start, db: asyncpg.Pool
) -> None:
    """The payer paid the first order (its notification lost) before the sync's close: the
    bank refuses the close, the query says paid, and it goes the late-payment way."""
    gateway, client = await start(sync_schedule="1.5,0.5,1")
    payment, first_order = await failed_over_payment(gateway, client, db)
    before = late_payments("bank_a")
    await set_faults(gateway, "bank", notify="drop")
    with capture_logs() as logs:
        assert await payer_acts(gateway, bank_page(gateway, first_order)) == 200

        async def recorded() -> bool:
            return (await attempts(db, payment["id"]))[0]["status"] == "closed"

        await wait_until(recorded)
    assert closes("bank_a", "paid") >= 1
    alerts = [e for e in logs if e["event"] == "late_payment_after_final_state"]
    assert len(alerts) == 1 and alerts[0]["alert"] is True
    assert (alerts[0]["status"], alerts[0]["attempt_status"]) == ("pending", "closing")
    assert late_payments("bank_a") == before + 1
    record = await db.fetchrow("SELECT payload FROM events WHERE type = 'payment.paid_after_close'")
    assert orjson.loads(record["payload"])["channel_order_id"] == first_order
    first, second = await attempts(db, payment["id"])
    assert first["channel_trade_no"] and first["next_sync_at"] is None
    assert second["status"] == "waiting"
    assert (await get_payment(client, payment["id"]))["status"] == "pending"


# ---- paid through another attempt --------------------------------------------------------------


async def test_a_success_for_a_failed_over_attempt_after_another_took_the_payment(
    start: Start, db: asyncpg.Pool, receiver: Receiver
) -> None:
    """The payer pays at bank_b, then also the first order (still open at the bank): charged
    twice. The second success is recorded, alerted and refunded (the setting is on), at the
    first order; the merchant's payment, its refundable amount and its callbacks are as if
    nothing happened."""
    gateway, client = await start(late_payment_auto_refund=True, sync_schedule="30")
    payment, first_order = await failed_over_payment(
        gateway, client, db, amount=3100, notify_url=receiver.url
    )
    assert await payer_acts(gateway, payment["next_action"]["url"]) == 200
    await wait_payment(client, payment["id"], lambda p: p["status"] == "succeeded")
    await receiver.wait_for(1)
    before = late_payments("bank_a")
    with capture_logs() as logs:
        assert await payer_acts(gateway, bank_page(gateway, first_order)) == 200

        async def refunded() -> Any:
            row = await db.fetchrow("SELECT * FROM refunds WHERE payment_id = $1", payment["id"])
            return row if row is not None and row["status"] != "pending" else None

        refund = await wait_until(refunded)
    [alert] = [e for e in logs if e["event"] == "late_payment_after_final_state"]
    assert (alert["status"], alert["channel_order_id"]) == ("succeeded", first_order)
    assert late_payments("bank_a") == before + 1
    assert (refund["status"], refund["amount"], refund["channel_order_id"]) == (
        "succeeded",
        3100,
        first_order,
    )
    assert refund["counts_on_payment"] is False
    order = await channel_order(gateway, "bank", first_order)
    assert [r["amount"] for r in order["refunds"].values()] == [3100]
    # the merchant's payment: succeeded through bank_b, nothing refunded, all refundable
    now = await get_payment(client, payment["id"])
    assert (now["status"], now["refunded_amount"]) == ("succeeded", 0)
    row = await db.fetchrow("SELECT refund_reserved FROM payments WHERE id = $1", payment["id"])
    assert row["refund_reserved"] == 0
    whole = await client.request(
        "POST", f"/v1/payments/{payment['id']}/refunds", {"merchant_refund_id": "m", "amount": 3100}
    )
    assert (whole.status, whole.json["status"]) == (201, "succeeded")
    await receiver.wait_for(2)
    assert event_types(receiver) == ["payment.succeeded", "refund.succeeded"]
    assert await db.fetchval("SELECT count(*) FROM callback_deliveries") == 2
    assert orjson.loads(receiver.received[1]["body"])["data"]["object"]["merchant_refund_id"] == "m"
    first = (await attempts(db, payment["id"]))[0]
    assert first["status"] == "closed" and first["channel_trade_no"]


# ---- closed, but payable at the channel until watch_until ---------------------------------------


async def test_a_locally_closed_order_is_watched_and_a_payment_there_is_late(
    start: Start, db: asyncpg.Pool, receiver: Receiver
) -> None:
    """The merchant closes; the channel cannot close the order, payable for 3 s more: the
    payment is closed (payment.closed), the attempt closed but watched; the payer pays in that
    time (its notification lost): the watch's query finds it, a late payment, and the watch
    ends."""
    gateway, client = await start()
    closes_locally(adapter_of(gateway, "bank_a"), stays_payable_s=3)
    payment = (await client.create_payment(notify_url=receiver.url)).json
    assert payment["channel"] == "bank_a"
    closed = await client.request("POST", f"/v1/payments/{payment['id']}/close")
    assert (closed.status, closed.json["status"]) == (200, "closed")
    attempt = await attempt_row(db, payment["id"])
    assert attempt["status"] == "closed" and attempt["watch_until"] is not None
    assert attempt["next_sync_at"] is not None
    await set_faults(gateway, "bank", notify="drop")
    before = late_payments("bank_a")
    assert await payer_acts(gateway, payment["next_action"]["url"]) == 200  # still open there

    async def recorded() -> bool:
        return bool(
            await db.fetchval("SELECT count(*) FROM events WHERE type = 'payment.paid_after_close'")
        )

    await wait_until(recorded)
    assert late_payments("bank_a") == before + 1

    async def watch_over() -> bool:
        return (await attempt_row(db, payment["id"]))["next_sync_at"] is None

    await wait_until(watch_over)
    assert (await get_payment(client, payment["id"]))["status"] == "closed"
    await receiver.wait_for(1)
    assert event_types(receiver) == ["payment.closed"]


async def test_the_watch_of_an_expired_order_ends_after_watch_until(
    start: Start, db: asyncpg.Pool
) -> None:
    """At expiry the channel cannot close the order either: closed as expired, watched until
    watch_until plus the grace, then left alone."""
    gateway, client = await start(sync_schedule="0.3")
    gateway.app[SERVICES].sync.watch_grace = timedelta(seconds=0.5)
    adapter = adapter_of(gateway, "bank_a")
    closes_locally(adapter, stays_payable_s=1.5)
    queried: list[float] = []
    query = adapter.query_payment

    async def counted_query(channel_order_id: str) -> ChannelResult:
        queried.append(time.time())
        return await query(channel_order_id)

    adapter.query_payment = counted_query  # type: ignore[method-assign]
    payment = (await client.create_payment(expires_in=60)).json
    await expire_now(db, payment["id"])
    done = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
    assert (done["status"], done["failure"]["code"]) == ("closed", "expired")
    attempt = await attempt_row(db, payment["id"])
    assert attempt["status"] == "closed" and attempt["watch_until"] is not None
    watched = len(queried)

    async def watch_over() -> bool:
        return (await attempt_row(db, payment["id"]))["next_sync_at"] is None

    await wait_until(watch_over)
    assert len(queried) > watched  # queried while watched, until the watch's end
    assert queried[-1] >= (attempt["watch_until"] + timedelta(seconds=0.5)).timestamp()
    # never closed at the channel: it could not
    assert (await channel_order(gateway, "bank", payment["channel_order_id"]))["status"] == (
        "CREATED"
    )
    settled = len(queried)
    await asyncio.sleep(0.9)  # three periods of the schedule: nothing is meant to happen
    assert len(queried) == settled
