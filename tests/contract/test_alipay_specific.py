"""What only the `alipay` channel has: form notifications with Alipay's fields (refund ones
carry the trade's totals), the checks on their transport, the unsigned error answer to an
unknown method, and the GBK bill file."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import datetime
from urllib.parse import urlencode

import pytest

from adapters.base import IncomingRequest, NotificationKind, NotificationRejected
from tests.contract.conftest import Channel
from tests.contract.drivers import ALIPAY, CHINA, form_fields, private_key, rsa_sha256

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.parametrize("channel_runtime", [ALIPAY], ids=["alipay"], indirect=True),
]


async def test_notification_fields(channel: Channel) -> None:
    paid = await channel.pay()
    fields = form_fields(channel.receiver.about(paid.order_id)[0].request.body)
    assert fields["notify_type"] == "trade_status_sync"
    assert fields["sign_type"] == "RSA2"
    assert fields["app_id"] == ALIPAY.app_id
    assert fields["trade_status"] == "TRADE_SUCCESS"
    assert fields["total_amount"] == fields["receipt_amount"] == "19.99"


async def test_notifications_are_refused_unless_a_signed_trade_status_sync_form_post(
    channel: Channel,
) -> None:
    paid = await channel.pay()
    genuine = channel.receiver.about(paid.order_id)[0].request
    fields = form_fields(genuine.body)

    def with_fields(**changes: str) -> IncomingRequest:
        return replace(genuine, body=urlencode({**fields, **changes}).encode())

    refused = {
        "status changed after signing": with_fields(trade_status="TRADE_CLOSED"),
        "another notify_type, signed": ALIPAY.resign(with_fields(notify_type="x")),
        "a GET": replace(genuine, method="GET"),
        "JSON": replace(genuine, content_type="application/json"),
        "not ASCII": replace(genuine, body="a=订单".encode()),
    }
    for name, request in refused.items():
        with pytest.raises(NotificationRejected):
            channel.adapter.parse_notification(request)
            pytest.fail(name)


async def test_refund_notifications_carry_the_trades_totals(channel: Channel) -> None:
    paid = await channel.pay(1999)
    await channel.adapter.refund(channel.refund_of(paid.request, 500))
    [first] = await channel.receiver.wait_accepted(paid.order_id, NotificationKind.REFUND)
    assert (first.result.raw["refund_fee"], first.result.raw["trade_status"]) == (
        "5.00",
        "TRADE_SUCCESS",
    )
    rest = channel.refund_of(paid.request, 1499)
    await channel.adapter.refund(rest)
    notes = await channel.receiver.wait_accepted(paid.order_id, NotificationKind.REFUND, 2)
    last = notes[-1]
    assert (last.channel_refund_id, last.result.raw["trade_status"]) == (
        rest.channel_refund_id,
        "TRADE_CLOSED",
    )
    assert last.result.raw["refund_fee"] == "19.99"  # everything refunded: the trade closes


async def test_an_unknown_method_gets_an_unsigned_error_response(channel: Channel) -> None:
    async with channel.http.post(
        f"{channel.sim_base}/gateway.do", data={"method": "alipay.nope"}
    ) as resp:
        body = await resp.json()
    assert body == {
        "error_response": {
            "code": "40002",
            "msg": "Invalid Arguments",
            "sub_code": "isv.invalid-method",
            "sub_msg": "不存在的方法名",
        }
    }


async def test_bill_file_is_gbk_csv_with_alipays_header_and_footer(
    fresh_channel: Channel,
) -> None:
    channel = fresh_channel
    await channel.pay()
    today = datetime.now(CHINA).date()
    method = "alipay.data.dataservice.bill.downloadurl.query"
    params = {
        "app_id": ALIPAY.app_id,
        "method": method,
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "timestamp": datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S"),
        "version": "1.0",
        "biz_content": json.dumps({"bill_type": "trade", "bill_date": today.isoformat()}),
    }
    # a request's signature covers every non-empty parameter but sign, sorted, raw values
    content = "&".join(f"{k}={params[k]}" for k in sorted(params))
    params["sign"] = rsa_sha256(private_key("alipay/app_private_key.pem"), content.encode())
    async with channel.http.post(f"{channel.sim_base}/gateway.do", data=params) as resp:
        answer = json.loads(await resp.text())
    node = answer["alipay_data_dataservice_bill_downloadurl_query_response"]
    assert node["code"] == "10000" and base64.b64decode(answer["sign"])
    async with channel.http.get(node["bill_download_url"]) as resp:
        assert resp.headers["Content-Type"] == "text/csv; charset=GBK"
        lines = (await resp.read()).decode("gbk").splitlines()
    assert lines[0] == "#支付宝业务明细查询"
    assert lines[4].startswith("支付宝交易号,商户订单号,业务类型")
    assert lines[-2] == "#交易合计：1笔，退款合计：0笔"
