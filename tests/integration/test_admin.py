"""The operators' API: settlement per merchant and channel, token required."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures import Gateway, new_merchant, start_gateway
from tests.support import wait_until

TOKEN = "admin-token-for-tests-0123456789"


@pytest.fixture
async def admin_gateway(
    database_url: str, redis_prefix: str, redis_client: Any
) -> AsyncIterator[Gateway]:
    gw, server = await start_gateway(database_url, redis_prefix, admin_token=TOKEN)
    yield gw
    await gw.http.close()
    await server.close()


async def get(gw: Gateway, path: str, token: str = TOKEN) -> tuple[int, Any]:
    async with gw.http.get(gw.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def test_settlement_of_the_day(admin_gateway: Gateway) -> None:
    gw = admin_gateway
    creds = await new_merchant(gw.database_url)
    client = gw.client(creds)
    paid = []
    for amount in (10_000, 25_000):
        payment = (await client.create_payment(amount=amount)).json
        async with gw.http.post(payment["next_action"]["url"], json={"action": "pay"}) as r:
            assert r.status == 200
        paid.append(payment["id"])

    async def both_paid() -> bool:
        statuses = [
            (await client.request("GET", f"/v1/payments/{pid}")).json["status"] for pid in paid
        ]
        return statuses == ["succeeded", "succeeded"]

    await wait_until(both_paid)
    china_today = (datetime.now(UTC) + timedelta(hours=8)).date().isoformat()
    status, body = await get(gw, f"/admin/settlement?date={china_today}")
    assert status == 200, body
    rows = [r for r in body["data"] if r["merchant_id"] == creds.merchant_id]
    assert sum(r["count"] for r in rows) == 2
    assert sum(r["gross"] for r in rows) == 35_000
    assert all(r["net"] == r["gross"] - r["refunds"] - r["fees"] for r in rows)
    assert all(r["fees"] > 0 for r in rows)


async def test_settlement_needs_a_date_and_the_token(admin_gateway: Gateway) -> None:
    status, body = await get(admin_gateway, "/admin/settlement?date=yesterday")
    assert (status, body["code"]) == (400, "invalid_request")
    status, body = await get(admin_gateway, "/admin/settlement?date=2026-01-01", token="wrong")
    assert (status, body["code"]) == (401, "unauthenticated")
