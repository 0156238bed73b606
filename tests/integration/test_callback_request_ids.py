"""Callbacks carry the request id of what caused their event (`X-Request-Id`): the channel's
notification, the merchant's request, or a background job's `job_…` id; none for an event
without one (written before events had request ids). The Standard Webhooks signature is the
same either way, and the dispatcher's logs of a delivery carry the id too."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import asyncpg
import orjson
import structlog
from multidict import CIMultiDict
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from gateway.api.context import SERVICES
from tests.fixtures import Gateway, start_gateway
from tests.integration.test_refunds import payer_acts, set_faults, simulator, wait_payment
from tests.integration.test_sync import expire_now
from tests.support import Creds, MerchantClient, Receiver

JOB_ID = re.compile(r"job_[0-9a-f]{24}")


def callback(
    receiver: Receiver, creds: Creds, index: int = 0
) -> tuple[dict[str, Any], CIMultiDict[str]]:
    """The index-th callback received: its event (signature verified) and its headers."""
    hit = receiver.received[index]
    assert creds.webhook_secret is not None
    event: dict[str, Any] = Webhook(creds.webhook_secret).verify(hit["body"], hit["headers"])
    return event, CIMultiDict(hit["headers"])


async def stored_request_id(db: asyncpg.Pool, event_id: str) -> Any:
    return await db.fetchval("SELECT request_id FROM events WHERE id = $1", event_id)


async def send_bank_notification(gateway: Gateway, channel_order_id: str) -> str:
    """Send the bank's payment notification of an order, as the bank simulator would; returns
    the `X-Request-Id` of the gateway's answer."""
    answered: list[str] = []

    async def on_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        answered.append(params.response.headers["X-Request-Id"])

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    sim = simulator(gateway, "bank")
    order = sim.core.orders[channel_order_id]
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        assert await sim._payment_sender(order)(http, order), "the gateway did not acknowledge"
    assert len(answered) == 1
    return answered[0]


async def test_callback_carries_the_request_id_of_the_channel_notification(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    await set_faults(gateway, "bank", notify="drop")  # the test sends the notification
    created = await client.create_payment(notify_url=receiver.url)
    assert created.status == 201, created.body
    payment = created.json
    # only the notification may settle it: the status sync stays away
    await db.execute(
        "UPDATE payment_attempts SET next_sync_at = now() + interval '1 hour'"
        " WHERE payment_id = $1",
        payment["id"],
    )
    assert await payer_acts(gateway, payment["next_action"]["url"]) == 200
    assert receiver.received == []

    notification_id = await send_bank_notification(gateway, payment["channel_order_id"])

    await receiver.wait_for(1)
    event, headers = callback(receiver, client.creds)
    assert (event["type"], event["data"]["object"]["id"]) == ("payment.succeeded", payment["id"])
    assert notification_id.startswith("req_")
    assert notification_id != created.headers["X-Request-Id"]
    assert headers["X-Request-Id"] == notification_id
    assert await stored_request_id(db, event["id"]) == notification_id


async def test_callback_carries_the_request_id_of_the_merchant_request(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    payment = (await client.create_payment(notify_url=receiver.url)).json
    closed = await client.request("POST", f"/v1/payments/{payment['id']}/close")
    assert (closed.status, closed.json["status"]) == (200, "closed")

    await receiver.wait_for(1)
    event, headers = callback(receiver, client.creds)
    assert (event["type"], event["data"]["object"]["id"]) == ("payment.closed", payment["id"])
    assert headers["X-Request-Id"] == closed.headers["X-Request-Id"]
    assert await stored_request_id(db, event["id"]) == closed.headers["X-Request-Id"]


async def test_event_of_a_background_job_carries_its_job_id_into_the_callback_and_the_logs(
    gateway: Gateway, client: MerchantClient, receiver: Receiver, db: asyncpg.Pool
) -> None:
    """The status sync closes an expired payment: the event, its callback (both attempts of it:
    the receiver fails the first) and the logs of the job and of the delivery carry one
    `job_…` id."""
    receiver.script = [500]
    created = await client.create_payment(notify_url=receiver.url)
    payment = created.json
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await expire_now(db, payment["id"])
        closed = await wait_payment(client, payment["id"], lambda p: p["status"] != "pending")
        assert (closed["status"], closed["failure"]["code"]) == ("closed", "expired")
        await receiver.wait_for(2)

    job_ids = {CIMultiDict(c["headers"]).get("X-Request-Id") for c in receiver.received}
    assert len(job_ids) == 1
    job_id = job_ids.pop()
    assert job_id is not None and JOB_ID.fullmatch(job_id), job_id
    assert job_id != created.headers["X-Request-Id"]
    event, _ = callback(receiver, client.creds, 1)
    assert (event["type"], event["data"]["object"]["id"]) == ("payment.closed", payment["id"])
    assert await stored_request_id(db, event["id"]) == job_id

    [transition] = [
        e for e in logs if e["event"] == "payment_transition" and e["payment_id"] == payment["id"]
    ]
    assert transition["request_id"] == job_id
    [retry] = [e for e in logs if e["event"] == "callback_retry_scheduled"]
    assert retry["request_id"] == job_id


async def test_event_without_a_request_id_is_delivered_without_the_header(
    database_url: str, redis_prefix: str, merchant: Creds, receiver: Receiver, db: asyncpg.Pool
) -> None:
    gw, server = await start_gateway(database_url, redis_prefix, background=False)
    try:
        client = gw.client(merchant)
        payment = (await client.create_payment(notify_url=receiver.url)).json
        closed = await client.request("POST", f"/v1/payments/{payment['id']}/close")
        assert closed.status == 200
        event_id = await db.fetchval("SELECT id FROM events WHERE payment_id = $1", payment["id"])
        assert await stored_request_id(db, event_id) == closed.headers["X-Request-Id"]
        await db.execute("UPDATE events SET request_id = NULL WHERE id = $1", event_id)

        stop = asyncio.Event()
        dispatcher = asyncio.create_task(gw.app[SERVICES].dispatcher.run(stop))
        try:
            await receiver.wait_for(1)
        finally:
            stop.set()
            await dispatcher
    finally:
        await gw.http.close()
        await server.close()
    event, headers = callback(receiver, merchant)
    assert event["id"] == event_id
    assert "X-Request-Id" not in headers
    assert orjson.loads(receiver.received[0]["body"])["type"] == "payment.closed"
