"""A burst of concurrent signed requests against one gateway process waits for its Redis and
PostgreSQL connections (bounded) instead of failing: no 5xx."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.fixtures import Gateway
from tests.support import Creds, MerchantClient

BURST = 500


async def test_a_burst_of_500_signed_requests_gets_no_5xx(
    gateway: Gateway, merchant: Creds
) -> None:
    # a connector without a connection limit, so that all 500 reach the server at once
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        client = MerchantClient(gateway.url, merchant, http)
        created = await client.create_payment()
        assert created.status == 201, created.body
        path = f"/v1/payments/{created.json['id']}"
        replies = await asyncio.gather(*(client.request("GET", path) for _ in range(BURST)))
    statuses = sorted({r.status for r in replies})
    assert statuses == [200], [r.body for r in replies if r.status != 200][:3]
