"""`POST /notify/{channel}`: a forged notification is refused in the channel's own format,
changes nothing and is kept for operators; an unknown channel is 404."""

from __future__ import annotations

import asyncpg
import orjson

from tests.fixtures import Gateway
from tests.support import MerchantClient


async def test_forged_bank_notification_is_refused_and_audited(
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
    audit = await db.fetchrow("SELECT * FROM channel_notifications")
    assert audit["channel"] == payment["channel"]
    assert (audit["outcome"], audit["applied"]) == ("rejected", False)


async def test_unknown_channel_is_404(gateway: Gateway) -> None:
    async with gateway.http.post(f"{gateway.url}/notify/nope", data=b"{}") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
