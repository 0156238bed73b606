"""What only the `wechat` channel has: encrypted notification resources and their timestamp
window, expiry that leaves an order NOTPAY, the trade bill protected by a signed hash, and its
configuration's key options."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters.base import NotificationRejected, Outcome, ResponseVerificationError
from adapters.registry import build_adapter
from tests.contract.conftest import Channel, result_shape
from tests.contract.drivers import CHINA, KEYS, WECHAT, private_key

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.parametrize("channel_runtime", [WECHAT], ids=["wechat"], indirect=True),
]


async def test_notifications_are_signed_and_their_resource_encrypted(channel: Channel) -> None:
    paid = await channel.pay()
    genuine = channel.receiver.about(paid.order_id)[0].request
    assert genuine.headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    envelope, resource = WECHAT.open(genuine.body)
    assert envelope["event_type"] == "TRANSACTION.SUCCESS"
    assert envelope["resource"]["algorithm"] == "AEAD_AES_256_GCM"
    assert "out_trade_no" not in genuine.body.decode()  # only inside the ciphertext
    assert (resource["out_trade_no"], resource["mchid"]) == (paid.order_id, WECHAT.mchid)

    platform = private_key("wechat/platform_key.pem")
    # signed by the platform, but encrypted with another APIv3 key
    other_key = WECHAT.signed(genuine, WECHAT.seal(envelope, resource, b"0" * 32), platform)
    with pytest.raises(NotificationRejected, match="decrypt"):
        channel.adapter.parse_notification(other_key)
    # a genuine notification replayed an hour later
    an_hour_ago = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    stale = WECHAT.signed(genuine, genuine.body, platform, timestamp=an_hour_ago)
    with pytest.raises(NotificationRejected, match="window"):
        channel.adapter.parse_notification(stale)


async def test_an_expired_order_cannot_be_paid_and_stays_notpay(channel: Channel) -> None:
    created = await channel.create(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    answer = await channel.payer(created.payer_url)
    assert answer.status == 409
    queried = await channel.adapter.query_payment(created.order_id)
    assert result_shape(queried) == WECHAT.waiting_query


async def test_a_trade_bill_that_does_not_match_its_signed_hash_is_refused(
    channel: Channel,
) -> None:
    await channel.pay()

    def corrupt_the_file(path: str, body: bytes) -> bytes:
        # the download is unsigned (as at WeChat Pay); the signed answer carries its hash
        return body + b"\n" if path.endswith("/billdownload/file") else body

    proxy = await channel.proxy(corrupt_the_file)
    adapter = channel.build(base_url=proxy.base_url)
    today = datetime.now(CHINA).date()
    proxy.alter = None
    assert await channel.statement(today, adapter)  # through the proxy, untouched: fine
    proxy.alter = corrupt_the_file
    with pytest.raises(ResponseVerificationError):
        await channel.statement(today, adapter)


async def test_config_takes_the_apiv3_key_inline_and_a_numeric_mchid(channel: Channel) -> None:
    inline = channel.build(
        apiv3_key_path=None, apiv3_key=(KEYS / "wechat" / "apiv3_key.txt").read_text().strip()
    )
    assert inline.channel_order_id("pay_x", 1) == "pay_x_1"
    numeric = build_adapter("wechat", "w", channel.config(mchid=int(WECHAT.mchid)), channel.context)
    for adapter in (inline, numeric):
        created = await adapter.create_payment(channel.payment())
        assert created.outcome is Outcome.WAITING
