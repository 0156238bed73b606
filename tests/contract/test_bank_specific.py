"""What only the `bank` channel has: the hosted card page and its test cards, order numbers a
close reserves, lazy expiry, and the bank's refusal of replayed request nonces."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from adapters.base import Decision, Outcome
from tests.contract.conftest import Channel, result_shape
from tests.contract.drivers import BANK, private_key, rsa_sha256

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.parametrize("channel_runtime", [BANK], ids=["bank"], indirect=True),
]

DECLINES = {
    "05": "Do not honour",
    "14": "Invalid card number",
    "51": "Insufficient funds",
    "54": "Expired card",
    "61": "Exceeds withdrawal amount limit",
}
"""The hosted page's test cards `40000000000000XX` decline with code XX."""


@pytest.mark.parametrize("code", sorted(DECLINES))
async def test_declined_card_fails_final(channel: Channel, code: str) -> None:
    created = await channel.create()
    answer = await channel.payer(created.payer_url, card_number=f"40000000000000{code}")
    assert (answer.status, answer.body["status"], answer.body["resp_code"]) == (
        200,
        "FAILED",
        code,
    )
    assert f"{DECLINES[code]} ({code})" in answer.body["message"]
    [note] = await channel.receiver.wait_accepted(created.order_id)
    assert result_shape(note.result) == (Outcome.FAILED, Decision.FINAL, code)
    queried = await channel.adapter.query_payment(created.order_id)
    assert result_shape(queried) == (Outcome.FAILED, Decision.FINAL, code)


async def test_card_page_asks_for_a_card_and_renders_the_result(channel: Channel) -> None:
    created = await channel.create()
    async with channel.http.get(created.payer_url) as resp:
        assert 'name="card_number"' in await resp.text()
    status, content_type, page = await channel.payer_form(
        created.payer_url, "pay", card_number="4000000000000051"
    )
    assert (status, content_type) == (200, "text/html")
    assert "Insufficient funds (51)" in page and "https://shop.example/done" in page
    view = await channel.order_view(created.order_id)
    assert view is not None and view["status"] == "FAILED"


async def test_processing_card_is_approved_a_moment_later(channel: Channel) -> None:
    created = await channel.create()
    answer = await channel.payer(created.payer_url, card_number="4000000000000009")
    assert (answer.status, answer.body["status"]) == (200, "PROCESSING")
    [note] = await channel.receiver.wait_accepted(created.order_id)
    assert result_shape(note.result) == (Outcome.SUCCEEDED, Decision.FINAL, "00")


async def test_a_number_reserved_by_a_close_is_no_order(channel: Channel) -> None:
    req = channel.payment()
    assert (await channel.adapter.close_payment(req.channel_order_id)).outcome is Outcome.SUCCEEDED
    late = await channel.adapter.create_payment(req)
    assert result_shape(late) == (Outcome.FAILED, Decision.FINAL, "12")
    queried = await channel.adapter.query_payment(req.channel_order_id)
    assert result_shape(queried) == (Outcome.FAILED, Decision.FINAL, "25")
    async with channel.http.get(f"{channel.sim_base}/pay/{req.channel_order_id}") as resp:
        assert resp.status == 404


async def test_an_expired_order_closes(channel: Channel) -> None:
    req = replace(channel.payment(), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    await channel.adapter.create_payment(req)
    queried = await channel.adapter.query_payment(req.channel_order_id)
    assert result_shape(queried) == (Outcome.FAILED, Decision.FINAL, "CLOSED")


async def test_bank_refuses_replayed_and_badly_signed_requests(channel: Channel) -> None:
    path = f"/sim/bank/api/v1/orders/{channel.new_order_id()}"
    timestamp, nonce = str(int(time.time())), secrets.token_urlsafe(24)
    # GET \n path \n timestamp \n nonce \n (empty body) \n, with the merchant's key
    message = f"GET\n{path}\n{timestamp}\n{nonce}\n\n".encode()
    headers = {
        "X-Bank-Merchant": BANK.merchant_id,
        "X-Bank-Timestamp": timestamp,
        "X-Bank-Nonce": nonce,
        "X-Bank-Signature": rsa_sha256(private_key("bank/merchant_private.pem"), message),
    }
    url = channel.origin + path
    async with channel.http.get(url, headers=headers) as resp:
        assert (resp.status, (await resp.json())["resp_code"]) == (404, "25")
    async with channel.http.get(url, headers=headers) as resp:  # the same nonce again
        assert (resp.status, (await resp.json())["resp_code"]) == (401, "63")
    other_nonce = {**headers, "X-Bank-Nonce": secrets.token_urlsafe(24)}
    async with channel.http.get(url, headers=other_nonce) as resp:
        assert (resp.status, (await resp.json())["resp_code"]) == (401, "63")
