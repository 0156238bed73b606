"""Routing inside the gateway (issue 4): failover, no failover on a timeout, circuit breakers
shared through Redis by two gateways, 503 when every circuit is open, hot reload while requests
flow, and the admin view."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.registry import build_simulator
from adapters.simkit import SimulatorSettings, mount
from tests.fixtures import ROOT, Gateway, new_merchant, start_gateway
from tests.support import MerchantClient, free_port, wait_until

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"

BANK_CONFIG = """
      merchant_id: M100200300
      merchant_private_key: keys/bank/merchant_private.pem
      bank_public_key: keys/bank/bank_public.pem"""


def routing_yaml(order: list[str], *, max_attempts: int = 2, extra: str = "") -> str:
    return f"""
channels:
  bank_a:
    adapter: bank
    methods: [card]
    timeout_ms: 1000
    config:
      base_url: ${{BANK_A_URL}}{BANK_CONFIG}
      max_attempts: 1
  bank_b:
    adapter: bank
    methods: [card]
    timeout_ms: 3000
    config:
      base_url: ${{GATEWAY_PUBLIC_URL}}/sim/bank{BANK_CONFIG}
{extra}
default:
  route:
    strategy: priority
    channels: [{", ".join(order)}]
settings:
  max_attempts: {max_attempts}
  breaker: {{consecutive_failures: 3, open_s: 1, half_open_probes: 1, min_calls: 50}}
"""


@pytest.fixture
async def bank_a() -> AsyncIterator[str]:
    """A second, standalone bank simulator (so faults hit bank_a only)."""
    app = web.Application()
    mount(
        app,
        "bank",
        build_simulator(
            "bank",
            SimulatorSettings(
                config_dir=str(ROOT / "config"), notify_time_scale=0.001, timeout_sleep_s=3
            ),
        ),
    )
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    yield str(server.make_url("/sim/bank"))
    await server.close()


async def set_faults(url: str, **faults: Any) -> None:
    async with aiohttp.ClientSession() as http, http.put(f"{url}/control/faults", json=faults) as r:
        assert r.status == 200, await r.text()


async def routed_gateway(
    tmp_path: Path,
    database_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    bank_a_url: str,
    order: list[str],
    settings: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Gateway, TestServer, Path]:
    monkeypatch.setenv("BANK_A_URL", bank_a_url)
    path = tmp_path / "routing.yaml"
    path.write_text(routing_yaml(order, **kwargs))
    gw, server = await start_gateway(
        database_url, redis_prefix, routing_file=path, admin_token=ADMIN_TOKEN, **(settings or {})
    )
    return gw, server, path


Start = Callable[..., Awaitable[tuple[Gateway, Path]]]


@pytest.fixture
async def routed(
    tmp_path: Path, database_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Start]:
    """`await routed(bank_a_url, order, settings=None, **routing)` -> (gateway, its routing
    file): a gateway (with these settings overrides) on a routing file of this test's;
    `await routed(routing_file=path)` another process on the same file. Every gateway started
    is closed after the test."""
    started: list[tuple[Gateway, TestServer]] = []

    async def start(
        bank_a_url: str = "", order: list[str] | None = None, *, routing_file: Path | None = None,
        settings: dict[str, Any] | None = None, **routing: Any,
    ) -> tuple[Gateway, Path]:  # fmt: skip
        if routing_file is None:
            gw, server, path = await routed_gateway(
                tmp_path, database_url, redis_prefix, monkeypatch, bank_a_url, order or [],
                settings, **routing,
            )  # fmt: skip
        else:
            path = routing_file
            gw, server = await start_gateway(
                database_url, redis_prefix, routing_file=path, admin_token=ADMIN_TOKEN
            )
        started.append((gw, server))
        return gw, path

    yield start
    for gw, server in reversed(started):
        await gw.http.close()
        await server.close()


async def admin(gw: Gateway, path: str = "/admin/routing") -> dict[str, Any]:
    async with gw.http.get(
        gw.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def attempts(db: asyncpg.Pool, payment_id: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT * FROM payment_attempts WHERE payment_id = $1 ORDER BY seq", payment_id
        )
    )


@pytest.fixture
async def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/sim/bank"  # nothing listens: connection refused


async def test_failover_from_a_refusing_channel(
    database_url: str,
    routed: Start,
    redis_client: Any,
    closed_port_url: str,
    db: asyncpg.Pool,
) -> None:
    gw, _ = await routed(closed_port_url, ["bank_a", "bank_b"])
    client = gw.client(await new_merchant(database_url))
    reply = await client.create_payment()
    assert reply.status == 201, reply.body
    payment = reply.json
    assert payment["status"] == "pending"
    assert payment["channel"] == "bank_b"
    assert payment["channel_order_id"] == f"{payment['id']}_2"
    assert payment["next_action"] is not None
    rows = await attempts(db, payment["id"])
    assert [(a["channel"], a["status"]) for a in rows] == [
        ("bank_a", "failed_over"),
        ("bank_b", "waiting"),
    ]
    version = (await admin(gw))["version"]
    assert {a["routing_version"] for a in rows} == {version}


async def test_every_channel_failing_over_fails_the_payment(
    database_url: str,
    routed: Start,
    redis_client: Any,
    closed_port_url: str,
    db: asyncpg.Pool,
) -> None:
    extra = f"""  bank_c:
    adapter: bank
    methods: [card]
    config:
      base_url: http://127.0.0.1:{free_port()}/sim/bank{BANK_CONFIG}
"""
    gw, _ = await routed(
        closed_port_url,
        ["bank_a", "bank_c"],
        extra=extra,
    )
    client = gw.client(await new_merchant(database_url))
    reply = await client.create_payment()
    assert reply.status == 201
    assert reply.json["status"] == "failed"
    assert reply.json["failure"]["code"] == "channel_unavailable"
    rows = await attempts(db, reply.json["id"])
    assert [a["status"] for a in rows] == ["failed_over", "failed_over"]


async def test_no_failover_on_a_timeout(
    database_url: str,
    routed: Start,
    redis_client: Any,
    bank_a: str,
    db: asyncpg.Pool,
) -> None:
    await set_faults(bank_a, timeout_rate=1)
    gw, _ = await routed(bank_a, ["bank_a", "bank_b"])
    client = gw.client(await new_merchant(database_url))
    reply = await client.create_payment()
    assert reply.status == 201, reply.body
    assert reply.json["status"] == "pending"
    assert reply.json["channel"] == "bank_a"
    rows = await attempts(db, reply.json["id"])
    assert [(a["channel"], a["status"]) for a in rows] == [("bank_a", "unknown")]


async def test_circuit_opens_under_faults_is_shared_and_closes_after_recovery(
    database_url: str,
    routed: Start,
    redis_client: Any,
    bank_a: str,
    db: asyncpg.Pool,
) -> None:
    await set_faults(bank_a, error_rate=1)
    gw, path = await routed(bank_a, ["bank_a", "bank_b"])
    gw2, _ = await routed(routing_file=path)
    merchant = await new_merchant(database_url)
    client = gw.client(merchant)
    for _ in range(3):  # consecutive_failures: 3
        reply = await client.create_payment()
        assert reply.json["channel"] == "bank_b"
    health = (await admin(gw))["health"]
    assert health["bank_a"]["circuit"] == "open"
    # the second gateway process sees the same breaker through Redis
    assert (await admin(gw2))["health"]["bank_a"]["circuit"] == "open"
    skipped = await gw2.client(merchant).create_payment()
    assert skipped.status == 201 and skipped.json["channel"] == "bank_b"
    assert [a["channel"] for a in await attempts(db, skipped.json["id"])] == ["bank_b"]
    async with gw2.http.get(gw2.url + "/metrics") as resp:
        exported = await resp.text()
    assert 'gateway_channel_breaker_state{channel="bank_a"} 2.0' in exported

    # recovery: after open_s the next payment probes bank_a, which now answers
    await set_faults(bank_a, error_rate=0)
    await asyncio.sleep(1.1)
    probe = await client.create_payment()
    assert probe.json["channel"] == "bank_a", probe.json
    assert (await admin(gw))["health"]["bank_a"]["circuit"] == "closed"


async def test_a_repeated_create_gives_back_the_probe_slot_it_took(
    database_url: str,
    routed: Start,
    redis_client: Any,
    bank_a: str,
    db: asyncpg.Pool,
) -> None:
    await set_faults(bank_a, error_rate=1)
    gw, _ = await routed(bank_a, ["bank_a", "bank_b"])
    client = gw.client(await new_merchant(database_url))
    first = await client.create_payment(merchant_order_id="R-1")
    for _ in range(2):  # consecutive_failures: 3 opens bank_a's circuit
        await client.create_payment()
    assert (await admin(gw))["health"]["bank_a"]["circuit"] == "open"
    await set_faults(bank_a, error_rate=0)
    await asyncio.sleep(1.1)  # open_s: bank_a is half-open, one probe slot
    # a merchant's retry of an existing order routes (taking bank_a's only probe slot)
    # but calls nobody: it must give the slot back
    again = await client.create_payment(merchant_order_id="R-1")
    assert again.status == 200 and again.json["id"] == first.json["id"]
    probe = await client.create_payment()
    assert probe.status == 201 and probe.json["channel"] == "bank_a", probe.json
    assert (await admin(gw))["health"]["bank_a"]["circuit"] == "closed"


async def test_all_circuits_open_is_503_and_creates_nothing(
    database_url: str,
    routed: Start,
    redis_client: Any,
    bank_a: str,
    db: asyncpg.Pool,
) -> None:
    await set_faults(bank_a, error_rate=1)
    gw, _ = await routed(bank_a, ["bank_a"], max_attempts=1)
    client = gw.client(await new_merchant(database_url))
    for _ in range(3):
        reply = await client.create_payment()
        assert reply.json["status"] == "failed"
    before = await db.fetchval("SELECT count(*) FROM payments")
    refused = await client.create_payment()
    assert refused.status == 503
    assert refused.json["code"] == "channel_unavailable"
    assert int(refused.headers["Retry-After"]) >= 1
    assert await db.fetchval("SELECT count(*) FROM payments") == before


async def test_hot_reload_while_requests_flow(
    database_url: str,
    routed: Start,
    redis_client: Any,
    bank_a: str,
) -> None:
    gw, path = await routed(bank_a, ["bank_a", "bank_b"])
    client: MerchantClient = gw.client(await new_merchant(database_url))
    before = await admin(gw)
    statuses: list[int] = []
    channels: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            reply = await client.create_payment()
            statuses.append(reply.status)
            channels.append(reply.json.get("channel", ""))

    runners = [asyncio.create_task(traffic()) for _ in range(4)]
    await wait_until(lambda: _at_least(channels, 10))
    path.write_text(routing_yaml(["bank_b", "bank_a"]))

    async def reloaded() -> bool:
        return bool((await admin(gw))["version"] != before["version"])

    await wait_until(reloaded, within=10)
    mark = len(channels)
    await wait_until(lambda: _at_least(channels, mark + 10))
    # an invalid edit is refused whole: the rules in force keep serving
    path.write_text("channels: {oops: [\n")

    async def refused() -> bool:
        return (await admin(gw))["last_reload_error"] is not None

    await wait_until(refused, within=10)
    mark2 = len(channels)
    await wait_until(lambda: _at_least(channels, mark2 + 10))
    stop.set()
    await asyncio.gather(*runners)

    assert set(statuses) == {201}, statuses
    assert set(channels[:10]) == {"bank_a"}
    # requests in flight during the swap may go either way; after it, all go to bank_b
    assert set(channels[mark + 4 :]) == {"bank_b"}
    view = await admin(gw)
    assert view["stale"] is True and view["reload_failures"] >= 1
    assert view["version"] != before["version"]


async def _at_least(items: list[str], n: int) -> bool:
    await asyncio.sleep(0)
    return len(items) >= n


async def test_admin_api_needs_the_token(gateway: Gateway) -> None:
    async with gateway.http.get(gateway.url + "/admin/routing") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "unauthenticated"


async def test_a_bad_channel_config_is_refused_whole_and_the_old_rules_keep_serving(
    database_url: str, routed: Start, redis_client: Any, bank_a: str, tmp_path: Path
) -> None:
    """POST /admin/routing/reload with a file whose new first channel names a key file that
    does not exist: refused whole, shown and counted; payments still go where they went."""
    # no file poll: only the operator's reload reads the edit
    gw, path = await routed(bank_a, ["bank_b", "bank_a"], settings={"routing_poll_s": 3600})
    client = gw.client(await new_merchant(database_url))
    assert (await client.create_payment()).json["channel"] == "bank_b"
    before = await admin(gw)
    failures = await reload_failures_metric(gw)
    broken = routing_yaml(["bank_c", "bank_a"], extra="""  bank_c:
    adapter: bank
    methods: [card]
    config:
      base_url: ${GATEWAY_PUBLIC_URL}/sim/bank
      merchant_id: M100200300
      merchant_private_key: keys/bank/no_such_key.pem
      bank_public_key: keys/bank/bank_public.pem
""")  # fmt: skip
    path.write_text(broken)
    async with gw.http.post(
        gw.url + "/admin/routing/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["changed"] is False and answer["stale"] is True
    assert answer["last_reload_error"].startswith("channels.bank_c.config.merchant_private_key: ")
    view = await admin(gw)
    assert view["version"] == before["version"] and "bank_c" not in view["channels"]
    assert view["last_reload_error"] == answer["last_reload_error"]
    assert view["reload_failures"] == before["reload_failures"] + 1
    assert (await client.create_payment()).json["channel"] == "bank_b"
    assert await reload_failures_metric(gw) == failures + 1


async def reload_failures_metric(gw: Gateway) -> float:
    async with gw.http.get(gw.url + "/metrics") as resp:
        exported = await resp.text()
    [line] = [
        x for x in exported.splitlines() if x.startswith("gateway_routing_reload_failures_total ")
    ]
    return float(line.split()[1])
