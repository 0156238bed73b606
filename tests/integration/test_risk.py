"""Risk rules through the merchant API (API.md §1.4): each rule kind refuses with 403
`risk_rejected` naming the rule and creates nothing; refusals are logged and counted; counters
are shared by gateway processes and never let concurrent payments past a limit; the risk file
is hot-reloaded (an invalid edit keeps the rules in force); Redis down fails closed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import structlog
import yaml
from prometheus_client import REGISTRY

from gateway.api.context import SERVICES
from gateway.domain.errors import RiskRejected, ServiceUnavailable
from gateway.domain.models import CreatePaymentRequest
from gateway.risk.counters import RiskCounters
from gateway.risk.engine import RiskEngine
from gateway.risk.loader import RiskHolder
from gateway.risk.rules import CounterCheck
from tests.fixtures import Gateway, new_merchant, start_gateway
from tests.support import Creds, MerchantClient, Reply, free_port, payment_payload, wait_until

Launch = Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]


def write_rules(path: Path, data: Any) -> Path:
    """Replace the file in one step, as an editor that saves atomically does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else yaml.safe_dump(data).encode())
    os.replace(tmp, path)
    return path


@pytest.fixture
def risk_path(tmp_path: Path) -> Path:
    return tmp_path / "risk.yaml"


@pytest.fixture
async def launch(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, risk_path: Path
) -> Launch:
    """launch() -> a gateway on the test's database and Redis prefix reading `risk_path`."""

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[Gateway]:
        gw, server = await start_gateway(database_url, redis_prefix, risk_file=risk_path)
        try:
            yield gw
        finally:
            await gw.http.close()
            await server.close()

    return run


def rejections(rule: str) -> float:
    return REGISTRY.get_sample_value("gateway_risk_rejections_total", {"rule": rule}) or 0.0


def assert_refused(reply: Reply, rule: str) -> None:
    assert reply.status == 403, reply.body
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    problem = reply.json
    assert (problem["code"], problem["rule"], problem["status"]) == ("risk_rejected", rule, 403)
    assert problem["title"] == "Risk rejected" and problem["request_id"]
    assert rule in problem["detail"]


async def payment_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM payments"))


# ---- each rule kind -------------------------------------------------------------------------


def rules_for(merchant_id: str) -> dict[str, Any]:
    """One rule of each kind, each on its own method or merchant so they do not overlap."""
    mine = [merchant_id]
    return {
        "blocklists": [
            {"name": "blocked_users", "merchants": mine, "payer_ids": ["u-bad"]},
            {"name": "blocked_nets", "ips": ["192.0.2.66"], "cidrs": ["2001:db8:bad::/48"]},
        ],
        "amount_limits": [
            {"name": "card_range", "merchants": mine, "methods": "card", "min": 100, "max": 50_000}
        ],
        "daily_caps": [
            {"name": "alipay_daily", "merchants": mine, "methods": "alipay_qr", "max_amount": 10_000},
            {"name": "wechat_daily", "merchants": mine, "methods": "wechat_qr", "max_count": 2},
        ],
        "velocity": [
            {"name": "payer_burst", "merchants": mine, "methods": "unionpay_qr",
             "per": "payer_id", "max": 2, "window_s": 60},
            {"name": "ip_burst", "methods": "card", "per": "payer_ip", "max": 2, "window_s": 60},
        ],
    }  # fmt: skip


CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    # rule: (payments that pass first, the payment the rule refuses)
    "blocked_users": ([{"payer": {"id": "u-good"}}], {"payer": {"id": "u-bad"}}),
    "blocked_nets": (
        [{"payer": {"ip": "192.0.2.67"}}, {"payer": {"ip": "2001:db8:bae::1"}}],
        {"payer": {"ip": "2001:db8:bad:ffff::1"}},
    ),
    "card_range": ([{"amount": 100}, {"amount": 50_000}], {"amount": 50_001}),
    "alipay_daily": (
        # a refused payment adds nothing: 6,000 passes, 5,000 is refused, 4,000 fills the cap
        [{"method": "alipay_qr", "amount": 6000}],
        {"method": "alipay_qr", "amount": 5000},
    ),
    "wechat_daily": ([{"method": "wechat_qr"}, {"method": "wechat_qr"}], {"method": "wechat_qr"}),
    "payer_burst": (
        [{"method": "unionpay_qr", "payer": {"id": "u-1"}}] * 2
        + [{"method": "unionpay_qr", "payer": {"id": "u-2"}}],
        {"method": "unionpay_qr", "payer": {"id": "u-1"}},
    ),
    "ip_burst": (
        [{"payer": {"ip": "203.0.113.7"}}, {"payer": {"ip": "::ffff:203.0.113.7"}}],
        {"payer": {"ip": "203.0.113.7", "id": "u-9"}},
    ),
}


@pytest.mark.parametrize("rule", list(CASES))
async def test_each_rule_refuses_naming_itself_and_creates_nothing(
    launch: Launch, risk_path: Path, merchant: Creds, db: asyncpg.Pool, rule: str
) -> None:
    write_rules(risk_path, rules_for(merchant.merchant_id))
    passing, refused = CASES[rule]
    async with launch() as gw:
        client = gw.client(merchant)
        for overrides in passing:
            reply = await client.create_payment(**overrides)
            assert reply.status == 201, reply.body
        before = rejections(rule)
        with structlog.testing.capture_logs() as logs:
            reply = await client.create_payment(merchant_order_id="refused-1", **refused)
        assert_refused(reply, rule)
        assert await payment_count(db) == len(passing)
        missing = await client.request("GET", "/v1/payments?merchant_order_id=refused-1")
        assert missing.status == 404
        assert await db.fetchval("SELECT count(*) FROM payment_attempts") == len(passing)
        assert rejections(rule) == before + 1
        [entry] = [e for e in logs if e["event"] == "risk_rejected"]
        assert entry["rule"] == rule and entry["merchant_id"] == merchant.merchant_id
        assert entry["merchant_order_id"] == "refused-1" and entry["reason"]
        if rule == "alipay_daily":
            filled = await client.create_payment(method="alipay_qr", amount=4000)
            assert filled.status == 201, filled.body
            assert_refused(await client.create_payment(method="alipay_qr", amount=1), rule)


async def test_rules_scoped_to_a_merchant_leave_others_alone(
    launch: Launch, risk_path: Path, merchant: Creds, database_url: str
) -> None:
    write_rules(risk_path, rules_for(merchant.merchant_id))
    other = await new_merchant(database_url)
    async with launch() as gw:
        theirs = gw.client(other)
        for _ in range(3):
            reply = await theirs.create_payment(method="wechat_qr", payer={"id": "u-bad"})
            assert reply.status == 201, reply.body
        assert (await theirs.create_payment(amount=50_001)).status == 201
        # velocity per payer IP is counted across merchants
        ip = {"ip": "203.0.113.50"}
        assert (await theirs.create_payment(payer=ip)).status == 201
        assert (await gw.client(merchant).create_payment(payer=ip)).status == 201
        assert_refused(await theirs.create_payment(payer=ip), "ip_burst")


async def test_rejections_are_exported_at_metrics(
    launch: Launch, risk_path: Path, merchant: Creds
) -> None:
    write_rules(risk_path, rules_for(merchant.merchant_id))
    async with launch() as gw:
        assert_refused(await gw.client(merchant).create_payment(amount=99), "card_range")
        async with gw.http.get(f"{gw.url}/metrics") as r:
            text = await r.text()
    assert 'gateway_risk_rejections_total{rule="card_range"}' in text


# ---- counters -------------------------------------------------------------------------------


async def test_daily_counters_live_in_redis_until_the_day_is_over(
    launch: Launch,
    risk_path: Path,
    merchant: Creds,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    write_rules(risk_path, rules_for(merchant.merchant_id))
    async with launch() as gw:
        assert (
            await gw.client(merchant).create_payment(method="alipay_qr", amount=700)
        ).status == 201
    [key] = [k async for k in redis_client.scan_iter(match=f"{redis_prefix}risk:day:*")]
    day = time.strftime("%Y%m%d", time.gmtime(time.time() + 8 * 3600))
    assert key.decode() == f"{redis_prefix}risk:day:alipay_daily:{merchant.merchant_id}:{day}"
    assert await redis_client.hgetall(key) == {b"amount": b"700"}
    ttl = await redis_client.pttl(key)
    assert 3600_000 < ttl <= 25 * 3600_000


async def test_a_repeated_order_is_answered_before_the_rules_and_not_counted(
    launch: Launch, risk_path: Path, merchant: Creds
) -> None:
    write_rules(risk_path, rules_for(merchant.merchant_id))
    async with launch() as gw:
        client = gw.client(merchant)
        first = await client.create_payment(merchant_order_id="W-1", method="wechat_qr")
        again = await client.create_payment(merchant_order_id="W-1", method="wechat_qr")
        assert (first.status, again.status) == (201, 200)
        assert (await client.create_payment(method="wechat_qr")).status == 201
        assert_refused(await client.create_payment(method="wechat_qr"), "wechat_daily")


async def test_a_velocity_window_slides(
    launch: Launch,
    risk_path: Path,
    merchant: Creds,
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    write_rules(
        risk_path,
        {"velocity": [{"name": "one_per_s", "per": "payer_id", "max": 1, "window_s": 1}]},
    )
    async with launch() as gw:
        client = gw.client(merchant)
        payer = {"id": "u-slide"}
        assert (await client.create_payment(payer=payer)).status == 201
        key = f"{redis_prefix}risk:vel:one_per_s:id:{merchant.merchant_id}:u-slide"
        assert 0 < await redis_client.pttl(key) <= 1000
        assert_refused(await client.create_payment(payer=payer), "one_per_s")
        started = time.monotonic()

        async def accepted() -> bool:
            return (await client.create_payment(payer=payer)).status == 201

        await wait_until(accepted, within=3, interval=0.1)
        assert 0.5 < time.monotonic() - started < 2.0
        assert await redis_client.zcard(key) == 1


async def test_counters_are_shared_by_two_gateways_and_never_overrun(
    launch: Launch, risk_path: Path, merchant: Creds, db: asyncpg.Pool
) -> None:
    write_rules(
        risk_path,
        {
            "daily_caps": [{"name": "daily5", "max_count": 5, "methods": "card"}],
            "velocity": [{"name": "burst", "per": "payer_ip", "max": 2, "window_s": 60}],
        },
    )
    async with launch() as gw1, launch() as gw2:
        one, two = gw1.client(merchant), gw2.client(merchant)
        ip = {"ip": "203.0.113.77"}
        assert (await one.create_payment(method="alipay_qr", payer=ip)).status == 201
        assert (await two.create_payment(method="alipay_qr", payer=ip)).status == 201
        assert_refused(await one.create_payment(method="alipay_qr", payer=ip), "burst")
        assert_refused(await two.create_payment(method="alipay_qr", payer=ip), "burst")

        # 24 concurrent card payments through both processes against a cap of 5
        replies = await asyncio.gather(
            *((one if i % 2 else two).create_payment() for i in range(24))
        )
        statuses = sorted(r.status for r in replies)
        assert statuses == [201] * 5 + [403] * 19
        assert {r.json["rule"] for r in replies if r.status == 403} == {"daily5"}
        assert await payment_count(db) == 2 + 5


async def test_the_counter_script_adds_nothing_when_one_check_is_exceeded(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    counters = RiskCounters(redis_client, redis_prefix)
    checks = [
        CounterCheck("d", "day", "risk:day:d:m:20240501", "amount", 300, 1000, 60_000, "amount"),
        CounterCheck("d", "day", "risk:day:d:m:20240501", "count", 1, 3, 60_000, "count"),
        CounterCheck("v", "window", "risk:vel:v:ip:192.0.2.1", "", 1, 2, 60_000, "per ip"),
    ]
    assert await counters.check_and_add(checks, "m", "o1") == (True, [0, 0, 0])
    assert await counters.check_and_add(checks, "m", "o2") == (True, [300, 1, 1])
    # the window is full
    assert await counters.check_and_add(checks, "m", "o3") == (False, [600, 2, 2])
    assert await counters.check_and_add(checks[:2], "m", "o3") == (True, [600, 2])
    # 1,200 > 1,000
    assert await counters.check_and_add(checks[:2], "m", "o4") == (False, [900, 3])
    day_key = redis_prefix + checks[0].key
    assert await redis_client.hgetall(day_key) == {b"amount": b"900", b"count": b"3"}
    assert await redis_client.zcard(redis_prefix + checks[2].key) == 2
    assert 0 < await redis_client.pttl(day_key) <= 60_000
    assert await counters.check_and_add([], "m", "o5") == (True, [])


async def test_a_retried_order_passes_the_counters_without_counting_twice(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    counters = RiskCounters(redis_client, redis_prefix)
    checks = [
        CounterCheck("d", "day", "risk:day:d:m:20240501", "count", 1, 2, 60_000, "count"),
        CounterCheck("v", "window", "risk:vel:v:ip:192.0.2.1", "", 1, 2, 60_000, "per ip"),
    ]
    assert await counters.check_and_add(checks, "m", "o1") == (True, [0, 0])
    assert await counters.check_and_add(checks, "m", "o2") == (True, [1, 1])
    # both counters are full: a new order is refused, a retry of a counted one passes
    assert await counters.check_and_add(checks, "m", "o3") == (False, [2, 2])
    assert await counters.check_and_add(checks, "m", "o1") == (True, [2, 2])
    assert await counters.check_and_add(checks, "other", "o1") == (False, [2, 2])
    day_key = redis_prefix + checks[0].key
    assert await redis_client.hgetall(day_key) == {b"count": b"2"}
    assert await redis_client.zcard(redis_prefix + checks[1].key) == 2
    seen = await redis_client.pttl(redis_prefix + "risk:seen:m:o1")
    assert 0 < seen <= 60_000


# ---- hot reload -----------------------------------------------------------------------------


async def test_a_hot_edit_takes_effect_and_an_invalid_edit_keeps_the_old_rules(
    launch: Launch, risk_path: Path, merchant: Creds
) -> None:
    write_rules(risk_path, {"amount_limits": [{"name": "max_1000", "max": 1000}]})
    async with launch() as gw:
        client = gw.client(merchant)
        assert_refused(await client.create_payment(amount=2000), "max_1000")

        write_rules(risk_path, {"amount_limits": [{"name": "max_5000", "max": 5000}]})

        async def accepted() -> bool:
            return (await client.create_payment(amount=2000)).status == 201

        await wait_until(accepted, within=5, interval=0.1)
        assert_refused(await client.create_payment(amount=5001), "max_5000")

        holder: RiskHolder = gw.app[SERVICES].payments.risk.holder  # type: ignore[union-attr]
        version = holder.current.version
        failures_before = REGISTRY.get_sample_value("gateway_risk_reload_failures_total", {})
        with structlog.testing.capture_logs() as logs:
            write_rules(risk_path, b"amount_limits:\n  - name: max_9000\n    max: 90.00\n")

            async def refused() -> bool:
                return holder.reload_failures == 1

            await wait_until(refused, within=5)
        assert holder.stale and holder.current.version == version
        assert holder.last_error == (
            "amount_limits[0].max: must be an integer amount in minor units (fen), got 90.0"
        )
        assert [e["error"] for e in logs if e["event"] == "risk_reload_refused"] == [
            holder.last_error
        ]
        failures = REGISTRY.get_sample_value("gateway_risk_reload_failures_total", {})
        assert failures == (failures_before or 0) + 1
        assert_refused(await client.create_payment(amount=5001), "max_5000")  # old rules serve
        assert (await client.create_payment(amount=5000)).status == 201


# ---- Redis down -----------------------------------------------------------------------------


async def test_redis_down_fails_closed_for_counter_rules(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path / "risk.yaml",
        {
            "amount_limits": [{"name": "max_1000", "max": 1000}],
            "velocity": [{"name": "burst", "per": "payer_id", "max": 5, "window_s": 60}],
        },
    )
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=1)
    engine = RiskEngine(RiskHolder(path), dead, "test:dead:")

    def request(**overrides: Any) -> CreatePaymentRequest:
        return CreatePaymentRequest.model_validate(payment_payload(**{"amount": 500, **overrides}))

    try:
        with pytest.raises(ServiceUnavailable) as down:
            await engine.check("mch_x", request(payer={"id": "u-1"}))
        assert (down.value.code, down.value.retry_after_s) == ("service_unavailable", 1)
        with pytest.raises(RiskRejected) as limit:  # rules without counters still answer
            await engine.check("mch_x", request(amount=1001, payer={"id": "u-1"}))
        assert (limit.value.code, limit.value.members()) == ("risk_rejected", {"rule": "max_1000"})
        await engine.check("mch_x", request())  # no payer id: no counter, no Redis needed
    finally:
        await dead.aclose()


async def test_the_shipped_rules_let_ordinary_payments_through(
    client: MerchantClient, db: asyncpg.Pool
) -> None:
    """The `gateway` fixture reads config/risk.yaml: the test suite's payments pass."""
    for payer in (None, {"ip": "203.0.113.9", "id": "u-1"}):
        reply = await client.create_payment(amount=10**11, payer=payer)
        assert reply.status == 201, reply.body
    blocked = await client.create_payment(payer={"ip": "198.51.100.20"})
    assert_refused(blocked, "blocked_networks")
    assert await payment_count(db) == 2
