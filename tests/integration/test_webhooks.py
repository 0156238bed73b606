"""Callback fan-out (API.md §1.6 and §2): one delivery per destination, retries on the schedule,
410 Gone, Retry-After, manual retry, the delivery log, Standard Webhooks signatures (also both
of them during a secret rotation), lease recovery, and two gateways on one database delivering
each attempt once. Events come from paying payments on the simulators. Where callbacks may go:
test_callback_ssrf.py (and tests/unit/gateway/test_check_url.py); sharing the delivery capacity:
test_callback_capacity.py."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from gateway.api.context import SERVICES
from gateway.auth.secretbox import SecretBox
from gateway.domain import webhooks
from gateway.services.webhook_secrets import rotate_webhook_secret
from gateway.store import webhooks as webhook_store
from tests.fixtures import MASTER_KEY, REDIS_URL, ROOT, Gateway, start_gateway
from tests.integration.callback_support import serving
from tests.support import Creds, MerchantClient, wait_until

SUCCEEDED = "payment.succeeded"


# --- a merchant's receiving side: several paths, each answering from its own script ---------


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Hooks:
    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path

    def script(self, path: str, *answers: Answer) -> None:
        self.scripts[path] = list(answers)

    def at(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def handle(self, request: web.Request) -> web.Response:
        hit = Hit(request.path, dict(request.headers), await request.read(), time.monotonic())
        self.hits.append(hit)
        steps = self.scripts.get(request.path)
        answer = steps.pop(0) if steps else Answer()
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    rec = Hooks()
    async with serving(rec.handle) as rec.base:
        yield rec


# --- helpers ---------------------------------------------------------------------------------


async def subscribe(client: MerchantClient, url: str, events: list[str]) -> str:
    reply = await client.request("POST", "/v1/webhook-endpoints", {"url": url, "events": events})
    assert reply.status == 201, reply.body
    return str(reply.json["id"])


async def pay(gw: Gateway, client: MerchantClient, action: str = "pay", **fields: Any) -> str:
    """Create a card payment and act as the payer on the simulator's page; returns its id."""
    created = await client.create_payment(**fields)
    assert created.status == 201, created.body
    async with gw.http.post(created.json["next_action"]["url"], json={"action": action}) as r:
        assert r.status == 200, await r.text()
    return str(created.json["id"])


async def event_of(db: asyncpg.Pool, payment_id: str) -> str:
    async def find() -> str | None:
        value = await db.fetchval("SELECT id FROM events WHERE payment_id = $1", payment_id)
        return str(value) if value is not None else None

    return str(await wait_until(find))


async def settled(db: asyncpg.Pool, expected: int, within: float = 15.0) -> list[asyncpg.Record]:
    """Wait until `expected` deliveries exist and none is still pending; returns them all."""

    async def done() -> list[asyncpg.Record] | None:
        rows = await db.fetch("SELECT * FROM callback_deliveries ORDER BY created_at, id")
        busy = [r for r in rows if r["status"] in ("pending", "delivering")]
        return rows if len(rows) >= expected and not busy else None

    rows: list[asyncpg.Record] = await wait_until(done, within=within)
    assert len(rows) == expected, [(r["url"], r["status"]) for r in rows]
    return rows


async def attempts_of(db: asyncpg.Pool, delivery_id: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT * FROM callback_attempts WHERE delivery_id = $1 ORDER BY id", delivery_id
        )
    )


def verify(creds: Creds, hit: Hit) -> dict[str, Any]:
    assert creds.webhook_secret is not None
    event: dict[str, Any] = Webhook(creds.webhook_secret).verify(hit.body, hit.headers)
    assert event["id"] == hit.webhook_id
    return event


# --- fan-out ---------------------------------------------------------------------------------


async def test_fan_out_to_subscribed_endpoints_and_notify_url(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool
) -> None:
    paid_only = await subscribe(client, hooks.url("/paid"), [SUCCEEDED])
    everything = await subscribe(
        client, hooks.url("/all"), [SUCCEEDED, "payment.failed", "payment.closed"]
    )
    failures = await subscribe(client, hooks.url("/fail"), ["payment.failed", "payment.closed"])

    paid = await pay(gateway, client, notify_url=hooks.url("/notify"))
    cancelled = await pay(gateway, client, action="cancel")
    paid_event, cancelled_event = await event_of(db, paid), await event_of(db, cancelled)
    rows = await settled(db, 5)

    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in rows)
    by_event: dict[str, set[str | None]] = {paid_event: set(), cancelled_event: set()}
    for r in rows:
        by_event[r["event_id"]].add(r["endpoint_id"])
    assert by_event == {paid_event: {None, paid_only, everything},
                        cancelled_event: {everything, failures}}  # fmt: skip

    ids_at = {path: sorted(h.webhook_id for h in hooks.at(path))
              for path in ("/notify", "/paid", "/all", "/fail")}  # fmt: skip
    assert ids_at == {
        "/notify": [paid_event],
        "/paid": [paid_event],
        "/all": sorted([paid_event, cancelled_event]),
        "/fail": [cancelled_event],
    }
    for hit in hooks.hits:
        event = verify(client.creds, hit)
        assert event["type"] == (SUCCEEDED if hit.webhook_id == paid_event else event["type"])
        assert event["data"]["object"]["id"] in (paid, cancelled)

    async with gateway.http.get(f"{gateway.url}/metrics") as r:
        exposed = await r.text()
    for name in ('gateway_callback_deliveries_total{outcome="succeeded"}',
                 'gateway_callback_attempts_total{outcome="succeeded"}',
                 "gateway_callback_attempt_seconds_count", "gateway_callback_queue_depth",
                 "gateway_callback_oldest_due_seconds"):  # fmt: skip
        assert name in exposed, name


async def test_queue_depth_and_age_of_the_oldest_due_delivery(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool
) -> None:
    gw, server = await start_gateway(database_url, redis_prefix, background=False)
    try:
        event_id = await event_of(db, await pay(gw, gw.client(merchant)))
        rows = [  # (status, due, lease ends): seconds from now
            ("pending", -60, None), ("pending", -5, None), ("pending", 30, None),
            ("delivering", -120, -1), ("delivering", -10, 20), ("succeeded", -300, None),
        ]  # fmt: skip
        for n, (status, due, lease) in enumerate(rows):
            await db.execute(
                "INSERT INTO callback_deliveries (id, event_id, merchant_id, url, status,"
                " next_attempt_at, locked_until) VALUES ($1, $2, $3, 'https://shop.example/h',"
                " $4, now() + make_interval(secs => $5),"
                " now() + make_interval(secs => $6::float8))",
                f"dlv_{n}", event_id, merchant.merchant_id, status, due, lease,
            )  # fmt: skip
        await gw.app[SERVICES].dispatcher.update_gauges()
    finally:
        await gw.http.close()
        await server.close()
    # due: the two pending ones whose time has come and the lease that ran out (due 120 s ago)
    assert REGISTRY.get_sample_value("gateway_callback_queue_depth") == 3
    oldest = REGISTRY.get_sample_value("gateway_callback_oldest_due_seconds")
    assert oldest is not None and 120 <= oldest < 125


# --- retries ---------------------------------------------------------------------------------


async def test_receiver_failing_n_times_gets_one_success_with_the_same_webhook_id(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool
) -> None:
    big = b"x" * 10_000
    hooks.script(
        "/flaky",
        Answer(500, body=big),
        Answer(302, headers={"Location": hooks.url("/elsewhere")}),
        Answer(503),
    )
    payment = await pay(gateway, client, notify_url=hooks.url("/flaky"))
    event_id = await event_of(db, payment)
    [delivery] = await settled(db, 1)

    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 4)
    attempts = await attempts_of(db, delivery["id"])
    assert [a["status_code"] for a in attempts] == [500, 302, 503, 200]
    assert len(attempts[0]["response_body"]) == 2048  # read up to the cap, no further
    assert attempts[3]["response_body"] == "ok"
    assert all(a["latency_ms"] is not None for a in attempts)
    flaky = hooks.at("/flaky")
    assert len(flaky) == 4 and {h.webhook_id for h in flaky} == {event_id}
    assert [verify(client.creds, h)["id"] for h in flaky] == [event_id] * 4
    assert hooks.at("/elsewhere") == []  # redirects are not followed
    gaps = [b.at - a.at for a, b in itertools.pairwise(flaky)]
    assert all(gap >= 0.9 * d for gap, d in zip(gaps, (0.2, 0.4, 0.8), strict=True)), gaps

    log = await client.request("GET", f"/v1/webhook-deliveries?event_id={event_id}")
    [listed] = log.json["data"]
    assert listed["status"] == "succeeded" and listed["attempts"] == 4
    assert [a["status_code"] for a in listed["attempt_log"]] == [500, 302, 503, 200]
    assert listed["attempt_log"][0]["attempted_at"].endswith("Z")
    assert len(listed["attempt_log"][0]["response_body"]) == 2048


async def test_429_and_503_retry_after_is_honoured(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool
) -> None:
    hooks.script("/busy", Answer(429, headers={"Retry-After": "1"}))
    await pay(gateway, client, notify_url=hooks.url("/busy"))
    [delivery] = await settled(db, 1)
    first, second = hooks.at("/busy")
    assert delivery["attempts"] == 2
    assert second.at - first.at >= 0.95  # the schedule alone would have waited 0.2 s ± 10 %


async def test_slow_receiver_times_out_and_is_retried(
    database_url: str, redis_prefix: str, merchant: Creds, hooks: Hooks, db: asyncpg.Pool
) -> None:
    gw, server = await start_gateway(database_url, redis_prefix, callback_timeout_s=0.5)
    try:
        hooks.script("/slow", Answer(delay_s=3))
        await pay(gw, gw.client(merchant), notify_url=hooks.url("/slow"))
        [delivery] = await settled(db, 1)
    finally:
        await gw.http.close()
        await server.close()
    first, second = await attempts_of(db, delivery["id"])
    assert first["status_code"] is None and first["error"] == "timed out after 0.5 s"
    assert 450 <= first["latency_ms"] < 1500
    assert second["status_code"] == 200 and delivery["status"] == "succeeded"


async def test_410_gone_disables_the_endpoint(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool
) -> None:
    gone = await subscribe(client, hooks.url("/gone"), [SUCCEEDED])
    hooks.script("/gone", Answer(410))
    first = await event_of(db, await pay(gateway, client, notify_url=hooks.url("/notify")))
    rows = await settled(db, 2)
    to_gone = next(r for r in rows if r["endpoint_id"] == gone)
    assert (to_gone["status"], to_gone["attempts"]) == ("failed", 1)
    assert to_gone["last_error"] == "410 Gone: endpoint disabled"

    listed = (await client.request("GET", "/v1/webhook-endpoints")).json["data"]
    assert [(e["id"], e["status"], e["disabled_reason"]) for e in listed] == [
        (gone, "disabled", "410 Gone")
    ]

    second = await event_of(db, await pay(gateway, client, notify_url=hooks.url("/notify")))
    rows = await settled(db, 3)  # the notify_url only: nothing more for the disabled endpoint
    assert [r["endpoint_id"] for r in rows if r["event_id"] == second] == [None]
    assert [h.webhook_id for h in hooks.at("/gone")] == [first]
    assert sorted(h.webhook_id for h in hooks.at("/notify")) == sorted([first, second])


async def test_exhausted_delivery_fails_and_manual_retry_sends_it_again(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool
) -> None:
    hooks.script("/down", *[Answer(500)] * 4)  # the first attempt and the schedule's three
    failing = await event_of(db, await pay(gateway, client, notify_url=hooks.url("/down")))
    fine = await event_of(db, await pay(gateway, client, notify_url=hooks.url("/up")))
    rows = await settled(db, 2)
    failed = next(r for r in rows if r["event_id"] == failing)
    assert (failed["status"], failed["attempts"], failed["last_status_code"]) == ("failed", 4, 500)

    async def listed(query: str) -> list[tuple[str, str]]:
        path = "/v1/webhook-deliveries" + (f"?{query}" if query else "")
        reply = await client.request("GET", path)
        assert reply.status == 200, reply.body
        return [(d["event_id"], d["status"]) for d in reply.json["data"]]

    assert await listed("status=failed") == [(failing, "failed")]
    assert await listed("status=succeeded") == [(fine, "succeeded")]
    assert await listed("status=pending") == []
    assert await listed(f"event_id={fine}") == [(fine, "succeeded")]
    assert await listed(f"event_id={failing}&status=succeeded") == []
    assert len(await listed("")) == 2
    page = await client.request("GET", "/v1/webhook-deliveries?limit=1")
    assert page.json["has_more"] is True
    rest = await client.request(
        "GET", f"/v1/webhook-deliveries?limit=1&starting_after={page.json['data'][0]['id']}"
    )
    assert rest.json["has_more"] is False
    assert {page.json["data"][0]["event_id"], rest.json["data"][0]["event_id"]} == {failing, fine}
    bad = await client.request("GET", "/v1/webhook-deliveries?status=delivering")
    assert bad.status == 400

    retried = await client.request("POST", f"/v1/webhook-deliveries/{failed['id']}/retry")
    assert retried.status == 202, retried.body

    async def delivered() -> bool:
        status = await db.fetchval(
            "SELECT status FROM callback_deliveries WHERE id = $1", failed["id"]
        )
        return bool(status == "succeeded")

    await wait_until(delivered)
    down = hooks.at("/down")
    assert len(down) == 5 and {h.webhook_id for h in down} == {failing}
    verify(client.creds, down[-1])
    codes = [a["status_code"] for a in await attempts_of(db, failed["id"])]
    assert codes == [500, 500, 500, 500, 200]
    again = await client.request("POST", f"/v1/webhook-deliveries/{failed['id']}/retry")
    assert (again.status, again.json["code"]) == (409, "invalid_state")
    missing = await client.request("POST", "/v1/webhook-deliveries/dlv_nope/retry")
    assert missing.status == 404


async def test_a_delivery_under_way_cannot_be_retried_and_is_called_pending(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool
) -> None:
    """The merchant sees deliveries as pending, succeeded or failed: the refusal to retry one
    whose attempt is under way does not name the internal `delivering`."""
    gw, server = await start_gateway(database_url, redis_prefix, background=False)
    try:
        client = gw.client(merchant)
        event_id = await event_of(db, await pay(gw, client))
        await db.execute(
            "INSERT INTO callback_deliveries (id, event_id, merchant_id, url, status,"
            " locked_until) VALUES ('dlv_busy', $1, $2, 'https://shop.example/h', 'delivering',"
            " now() + interval '30 seconds')",
            event_id,
            merchant.merchant_id,
        )
        refused = await client.request("POST", "/v1/webhook-deliveries/dlv_busy/retry")
        assert (refused.status, refused.json["code"]) == (409, "invalid_state")
        assert refused.json["detail"] == (
            "Only failed deliveries can be retried (this one is pending)."
        )
        listed = await client.request("GET", f"/v1/webhook-deliveries?event_id={event_id}")
        assert [d["status"] for d in listed.json["data"]] == ["pending"]
    finally:
        await gw.http.close()
        await server.close()


# --- signatures and secret rotation ----------------------------------------------------------


async def rotate_secret(database_url: str, merchant_id: str, grace_hours: str) -> dict[str, Any]:
    """`gateway merchant rotate-webhook-secret`, run as an operator would."""
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_REDIS_URL": REDIS_URL,
           "GATEWAY_MASTER_KEY": MASTER_KEY, "GATEWAY_LOG_LEVEL": "warning"}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "gateway"), "merchant", "rotate-webhook-secret",
        "--merchant", merchant_id, "--grace-hours", grace_hours, "--json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_both_signatures_during_a_secret_rotation(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool, database_url: str
) -> None:
    old = client.creds.webhook_secret
    assert old is not None
    rotated = await rotate_secret(database_url, client.creds.merchant_id, "1")
    new = rotated["webhook_secret"]
    assert new.startswith("whsec_") and new != old
    assert len(base64.b64decode(new.removeprefix("whsec_"))) == 32
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)

    await pay(gateway, client, notify_url=hooks.url("/rotating"))
    await settled(db, 1)
    [hit] = hooks.at("/rotating")
    signatures = hit.headers["webhook-signature"].split(" ")
    timestamp = int(hit.headers["webhook-timestamp"])
    assert signatures == [webhooks.sign(new, hit.webhook_id, timestamp, hit.body),
                          webhooks.sign(old, hit.webhook_id, timestamp, hit.body)]  # fmt: skip
    assert Webhook(new).verify(hit.body, hit.headers)["id"] == hit.webhook_id
    assert Webhook(old).verify(hit.body, hit.headers)["id"] == hit.webhook_id

    # the grace period ends: the old secret stops signing
    await db.execute(
        "UPDATE merchants SET webhook_secret_prev_expires_at = now() - interval '1 second'"
    )
    await pay(gateway, client, notify_url=hooks.url("/after"))
    await settled(db, 2)
    [after] = hooks.at("/after")
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert Webhook(new).verify(after.body, after.headers)["id"] == after.webhook_id
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body, after.headers)

    # no grace: the new secret alone, from the next callback on
    rotated_again = await rotate_webhook_secret(
        gateway.app[SERVICES].pool, SecretBox(MASTER_KEY), client.creds.merchant_id, 0
    )
    assert rotated_again.previous_secret_expires_at is None
    newest = rotated_again.webhook_secret
    assert await db.fetchval("SELECT webhook_secret_prev_enc FROM merchants") is None
    await pay(gateway, client, notify_url=hooks.url("/newest"))
    await settled(db, 3)
    [last] = hooks.at("/newest")
    assert Webhook(newest).verify(last.body, last.headers)["id"] == last.webhook_id
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(last.body, last.headers)


def test_headers_sign_with_every_secret_given() -> None:
    secrets = ["whsec_" + base64.b64encode(random.randbytes(32)).decode() for _ in range(2)]
    body = b'{"id":"evt_1"}'
    now = int(time.time())
    headers = webhooks.headers(secrets[0], "evt_1", now, body, previous=secrets[1:])
    for secret in secrets:
        assert Webhook(secret).verify(body, headers) is not None
    assert headers["webhook-signature"].startswith(webhooks.sign(secrets[0], "evt_1", now, body))


# --- the retry policy (pure) ----------------------------------------------------------------


def test_classify_the_answers() -> None:
    schedule = (5.0, 300.0, 1800.0)
    rng = random.Random(1)
    assert webhooks.classify(204, 1, schedule).delivery_status == "succeeded"
    gone = webhooks.classify(410, 1, schedule)
    assert (gone.verdict, gone.delivery_status) == ("gone", "failed")
    retry = webhooks.classify(500, 2, schedule, rng=rng)
    assert retry.verdict == "retry" and retry.delay_s is not None
    assert 270 <= retry.delay_s <= 330
    assert webhooks.classify(None, 1, schedule, rng=rng).verdict == "retry"  # no answer at all
    assert webhooks.classify(503, 1, schedule, retry_after_s=120).delay_s == 120
    assert webhooks.classify(429, 1, schedule, retry_after_s=7).delay_s == 7
    assert webhooks.classify(500, 1, schedule, retry_after_s=120).delay_s != 120
    exhausted = webhooks.classify(503, 4, schedule, retry_after_s=1)
    assert (exhausted.verdict, exhausted.delivery_status) == ("exhausted", "failed")


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert webhooks.parse_retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now=now) == 90
    assert webhooks.parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) is None
    assert webhooks.parse_retry_after("soon", now=now) is None


# --- leases and several gateways -------------------------------------------------------------


async def test_attempt_abandoned_by_a_dead_process_is_made_after_its_lease(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool
) -> None:
    event_id = await event_of(db, await pay(gateway, client))  # no destination: no delivery
    await db.execute(
        "INSERT INTO callback_deliveries (id, event_id, merchant_id, url, status, attempts,"
        " locked_until) VALUES ('dlv_orphan', $1, $2, $3, 'delivering', 1,"
        " now() - interval '1 second')",
        event_id,
        client.creds.merchant_id,
        hooks.url("/orphan"),
    )
    [delivery] = await settled(db, 1)
    assert (delivery["status"], delivery["attempts"]) == ("succeeded", 2)
    abandoned, made = await attempts_of(db, "dlv_orphan")
    assert abandoned["error"] == webhook_store.ABANDONED and abandoned["status_code"] is None
    assert made["status_code"] == 200
    [hit] = hooks.at("/orphan")
    assert verify(client.creds, hit)["id"] == event_id


async def test_two_gateways_on_one_database_deliver_each_attempt_once(
    gateway: Gateway, client: MerchantClient, hooks: Hooks, db: asyncpg.Pool, redis_prefix: str
) -> None:
    other, server = await start_gateway(gateway.database_url, redis_prefix)
    try:
        for path in ("/a", "/b"):
            await subscribe(client, hooks.url(path), [SUCCEEDED])
        clients = [(gateway, client), (other, other.client(client.creds))]
        payments = 40
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> str:
            gw, c = clients[i % 2]
            async with gate:
                return await pay(gw, c, notify_url=hooks.url("/notify"))

        await asyncio.gather(*(one(i) for i in range(payments)))
        rows = await settled(db, payments * 3, within=30)
        made = [gw.app[SERVICES].dispatcher.attempts_started for gw in (gateway, other)]
    finally:
        await other.http.close()
        await server.close()

    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in rows)
    per_delivery = await db.fetch(
        "SELECT delivery_id, count(*) AS n FROM callback_attempts GROUP BY delivery_id"
    )
    assert len(per_delivery) == payments * 3 and {r["n"] for r in per_delivery} == {1}
    received = Counter((h.path, h.webhook_id) for h in hooks.hits)
    assert len(received) == payments * 3 and set(received.values()) == {1}
    assert sum(made) == payments * 3 and min(made) > 0, made
    for hit in hooks.hits[:5]:
        verify(client.creds, hit)
    assert orjson.loads(hooks.hits[0].body)["type"] == SUCCEEDED
