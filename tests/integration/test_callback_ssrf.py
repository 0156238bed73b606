"""Server-side request forgery through callbacks (issue 13, API.md §1.6): what a merchant may
subscribe or name as a payment's `notify_url`, what the dispatcher checks again at delivery
(legacy rows written before the subscription check, names that resolve to internal addresses),
and what the delivery log tells the merchant (no DNS or port-scan oracle; the detail goes to the
logs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from tests.fixtures import Gateway, start_gateway
from tests.integration.callback_support import paid_event, queue_deliveries, serving
from tests.support import Creds, MerchantClient, free_port, wait_until

SUCCEEDED = "payment.succeeded"

NOT_PUBLIC_OR_NOT_CANONICAL = [
    "http://2130706433/h",  # 127.0.0.1 as one decimal number
    "http://127.1/h",
    "http://0/h",
    "http://0177.0.0.1/h",  # octal
    "http://0x7f.1/h",  # hexadecimal
    "http://0x7f000001/h",
    "http://127.0.0.1./h",  # a trailing dot: not canonical either
    "http://１２７.０.０.１/h",  # fullwidth digits: the HTTP client's IDNA makes them 127.0.0.1
    "http://①②⑦.0.0.1/h",
    "http://127.0.0.1/h",
    "http://10.0.0.1/h",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/h",
    "http://[::ffff:127.0.0.1]/h",  # v4-mapped
    "http://[::ffff:0:7f00:1]/h",  # v4-translated
    "http://[::7f00:1]/h",  # v4-compatible
    "http://[2002:7f00:1::]/h",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::808:808]/h",  # NAT64, even of a public address
    "http://[64:ff9b:1::a00:1]/h",  # local-use NAT64
    "http://[fec0::1]/h",  # site-local
    "http://[2001:0:4136:e378::1]/h",  # Teredo
    "http://[fe80::1%25eth0]/h",
    "http://[ff02::1]/h",
    "https://8.8.8.8:8443/h",  # a port other than 80 and 443
    "http://shop.example:22/h",
]


@dataclass
class Hit:
    path: str
    body: bytes


@dataclass
class Receiver:
    """A merchant's (or an internal service's) HTTP endpoint: records every request."""

    port: int = 0
    hits: list[Hit] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(Hit(request.path, await request.read()))
        return web.Response(text="internal: the answer an attacker wants to read")


@pytest.fixture
async def internal() -> AsyncIterator[Receiver]:
    """A service on the loopback interface that callbacks must not reach."""
    rec = Receiver()
    async with serving(rec.handle) as base:
        rec.port = int(base.rsplit(":", 1)[1])
        yield rec


async def stop(gw: Gateway, server: TestServer) -> None:
    await gw.http.close()
    await server.close()


def field_errors(reply: Any) -> list[str]:
    assert (reply.status, reply.json["code"]) == (400, "invalid_request"), reply.body
    return [e["field"] for e in reply.json["errors"]]


async def ended(db: asyncpg.Pool, ids: list[str], within: float = 20.0) -> dict[str, Any]:
    """Wait until every delivery of `ids` is succeeded or failed; returns them by id."""

    async def done() -> dict[str, Any] | None:
        rows = await db.fetch("SELECT * FROM callback_deliveries WHERE id = ANY($1)", ids)
        if len(rows) == len(ids) and all(r["status"] in ("succeeded", "failed") for r in rows):
            return {r["id"]: r for r in rows}
        return None

    found: dict[str, Any] = await wait_until(done, within=within)
    return found


async def delivery_log(client: MerchantClient) -> dict[str, Any]:
    """GET /v1/webhook-deliveries, as the merchant reads it: by delivery id."""
    reply = await client.request("GET", "/v1/webhook-deliveries?limit=100")
    assert reply.status == 200, reply.body
    return {d["id"]: d for d in reply.json["data"]}


# --- at subscription, and for a payment's notify_url (400) -----------------------------------


async def test_subscription_and_notify_url_refuse_non_public_and_non_canonical_hosts(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool
) -> None:
    gw, server = await start_gateway(database_url, redis_prefix, callback_allow_private=False)
    try:
        client = gw.client(merchant)
        for url in NOT_PUBLIC_OR_NOT_CANONICAL:
            body = {"url": url, "events": [SUCCEEDED]}
            refused = await client.request("POST", "/v1/webhook-endpoints", body)
            assert field_errors(refused) == ["url"], url
            payment = await client.create_payment(notify_url=url)
            assert field_errors(payment) == ["notify_url"], url
        accepted = ["https://shop.example/h", "http://shop.example:80/h", "https://8.8.8.8/h",
                    "https://[2606:4700:4700::1111]/h", "https://例子.测试/h"]  # fmt: skip
        for url in accepted:
            body = {"url": url, "events": [SUCCEEDED]}
            created = await client.request("POST", "/v1/webhook-endpoints", body)
            assert created.status == 201, (url, created.body)
        payment = await client.create_payment(notify_url="https://shop.example/notify")
        assert payment.status == 201, payment.body
    finally:
        await stop(gw, server)
    assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoints") == len(accepted)


async def test_the_refusal_says_what_is_wrong_with_the_url(
    database_url: str, redis_prefix: str, merchant: Creds
) -> None:
    gw, server = await start_gateway(database_url, redis_prefix, callback_allow_private=False)
    try:
        client = gw.client(merchant)
        messages = {}
        for url in ("http://127.1/h", "http://10.0.0.1/h", "https://shop.example:8443/h"):
            reply = await client.request(
                "POST", "/v1/webhook-endpoints", {"url": url, "events": [SUCCEEDED]}
            )
            field_errors(reply)
            messages[url] = reply.json["errors"][0]["message"]
    finally:
        await stop(gw, server)
    assert messages == {  # pydantic's prefix, as for every other value the API refuses
        "http://127.1/h": "Value error, 127.1 is not an IPv4 address in canonical form (a.b.c.d)",
        "http://10.0.0.1/h": "Value error, 10.0.0.1 is not a public address",
        "https://shop.example:8443/h": "Value error, port 8443 is not allowed (allowed: 80, 443)",
    }


async def test_private_callbacks_allowed_still_refuse_non_canonical_addresses(
    gateway: Gateway, client: MerchantClient
) -> None:
    """`GATEWAY_CALLBACK_ALLOW_PRIVATE` (development, tests): loopback, private addresses and any
    port; an address in a form other than a.b.c.d is refused all the same (what it means
    depends on who parses it)."""
    for url, status in [
        ("http://127.0.0.1:8080/h", 201),
        ("http://[::1]:9/h", 201),
        ("http://10.1.2.3:22/h", 201),
        ("http://localhost:8080/h", 201),
        ("http://127.1:8080/h", 400),
        ("http://2130706433/h", 400),
        ("http://１２７.０.０.１/h", 201),  # the client's IDNA reads it as 127.0.0.1: allowed here
    ]:
        reply = await client.request(
            "POST", "/v1/webhook-endpoints", {"url": url, "events": [SUCCEEDED]}
        )
        assert reply.status == status, (url, reply.body)


# --- at delivery -----------------------------------------------------------------------------


async def test_delivery_checks_again_and_never_connects_to_a_refused_destination(
    database_url: str,
    redis_prefix: str,
    merchant: Creds,
    internal: Receiver,
    db: asyncpg.Pool,
) -> None:
    """Rows written before the subscription check (or an operator's insert) are checked again
    when they are attempted: none reaches the internal service, each fails at once with the
    URL's own fault, and nothing of an internal answer shows in the delivery log."""
    port = internal.port
    gw, server = await start_gateway(
        database_url,
        redis_prefix,
        callback_allow_private=False,
        callback_allowed_ports=f"80,443,{port}",  # the port alone would not refuse these
    )
    try:
        client = gw.client(merchant)
        event_id = await paid_event(gw, merchant, db)
        hosts = ["2130706433", "127.1", "0x7f.1", "0177.0.0.1", "１２７.０.０.１",
                 "[::ffff:127.0.0.1]", "[::7f00:1]", "[2002:7f00:1::]", "127.0.0.1"]  # fmt: skip
        urls = [f"http://{host}:{port}/leak" for host in hosts]
        ids = await queue_deliveries(db, event_id, merchant.merchant_id, urls)
        rows = await ended(db, ids)
        listed = await delivery_log(client)
    finally:
        await stop(gw, server)
    assert internal.hits == []
    assert {(r["status"], r["attempts"]) for r in rows.values()} == {("failed", 1)}
    errors = {}
    for delivery_id in ids:
        [attempt] = listed[delivery_id]["attempt_log"]
        assert attempt["response_body"] is None and attempt["status_code"] is None
        errors[rows[delivery_id]["url"]] = attempt["error"]
    assert all(e.startswith("refused: ") for e in errors.values()), errors
    assert errors[f"http://127.1:{port}/leak"] == (
        "refused: 127.1 is not an IPv4 address in canonical form (a.b.c.d)"
    )
    assert errors[f"http://127.0.0.1:{port}/leak"] == "refused: 127.0.0.1 is not a public address"


async def test_a_port_outside_the_allowed_ones_is_not_even_tried(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool
) -> None:
    gw, server = await start_gateway(
        database_url, redis_prefix, callback_allow_private=False, callback_timeout_s=1.0
    )
    try:
        event_id = await paid_event(gw, merchant, db)
        ids = await queue_deliveries(
            db, event_id, merchant.merchant_id, ["https://8.8.8.8:8443/h", "http://8.8.8.8:22/h"]
        )
        rows = await ended(db, ids)
    finally:
        await stop(gw, server)
    assert [(rows[i]["status"], rows[i]["attempts"], rows[i]["last_error"]) for i in ids] == [
        ("failed", 1, "refused: port 8443 is not allowed (allowed: 80, 443)"),
        ("failed", 1, "refused: port 22 is not allowed (allowed: 80, 443)"),
    ]


async def test_delivery_errors_are_not_a_dns_or_port_scan_oracle(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool
) -> None:
    """A name that resolves to loopback and a name that does not resolve look the same to the
    merchant ("connection failed", retried on the schedule), and neither shows an address or a
    resolver's message; the logs keep what operators need."""
    gw, server = await start_gateway(
        database_url, redis_prefix, callback_allow_private=False, webhook_retry_schedule="0.1,0.1"
    )
    try:
        client = gw.client(merchant)
        event_id = await paid_event(gw, merchant, db)
        with capture_logs() as logs:
            ids = await queue_deliveries(
                db, event_id, merchant.merchant_id,
                ["http://localhost/internal", "http://no-such-name.invalid/h"],
            )  # fmt: skip
            rows = await ended(db, ids)
        listed = await delivery_log(client)
    finally:
        await stop(gw, server)
    seen = {
        rows[i]["url"]: [a["error"] for a in listed[i]["attempt_log"]] + [rows[i]["last_error"]]
        for i in ids
    }
    assert seen == {
        "http://localhost/internal": ["connection failed"] * 4,
        "http://no-such-name.invalid/h": ["connection failed"] * 4,
    }
    assert {(r["status"], r["attempts"]) for r in rows.values()} == {("failed", 3)}
    refused = [e for e in logs if e["event"] == "callback_destination_refused"]
    assert refused and all(e["host"] == "localhost" for e in refused)
    assert "127.0.0.1" in refused[0]["addresses"]
    failed = [e for e in logs if e["event"] == "callback_attempt_failed"]
    assert any("no-such-name.invalid" in e["detail"] for e in failed), failed


async def test_connection_failures_do_not_name_the_address_or_the_port(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """Also with private destinations allowed: a closed port is "connection failed", not the
    client's message with the address and port it tried."""
    closed = free_port()
    event_id = await paid_event(gateway, client.creds, db)
    [delivery_id] = await queue_deliveries(
        db, event_id, client.creds.merchant_id, [f"http://127.0.0.1:{closed}/h"]
    )
    rows = await ended(db, [delivery_id])
    listed = await delivery_log(client)
    errors = [a["error"] for a in listed[delivery_id]["attempt_log"]]
    assert errors == ["connection failed"] * 4
    assert rows[delivery_id]["last_error"] == "connection failed"


async def test_a_public_destination_keeps_its_answer_snippet(
    gateway: Gateway, client: MerchantClient, internal: Receiver, db: asyncpg.Pool
) -> None:
    """What a destination that was allowed answered stays in the log (the first 2 KiB): useful
    to the merchant, and only ever from a destination the rules let through."""
    event_id = await paid_event(gateway, client.creds, db)
    [delivery_id] = await queue_deliveries(
        db, event_id, client.creds.merchant_id, [f"http://127.0.0.1:{internal.port}/h"]
    )
    await ended(db, [delivery_id])
    [attempt] = (await delivery_log(client))[delivery_id]["attempt_log"]
    assert attempt["response_body"] == "internal: the answer an attacker wants to read"
    assert len(internal.hits) == 1
