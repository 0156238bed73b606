"""What only the `unionpay` channel has: order ids of letters and digits whose txnTime is read
back from the id, the signer certificate carried in every message and checked against the
trusted chain, and refund lines with their own status in the reconciliation file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import structlog.testing

from adapters.base import Decision, NotificationKind, NotificationRejected, Outcome
from tests.contract.conftest import Channel, result_shape
from tests.contract.drivers import CHINA, UNIONPAY, form_fields

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.parametrize("channel_runtime", [UNIONPAY], ids=["unionpay"], indirect=True),
]

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def id_time(gateway_id_body: str) -> datetime:
    """The creation time in a gateway id (its first 10 base32 characters: milliseconds)."""
    millis = 0
    for char in gateway_id_body[:10]:
        millis = millis * 32 + _CROCKFORD.index(char)
    return datetime.fromtimestamp(millis / 1000, UTC)


async def test_order_ids_are_alphanumeric_and_carry_their_txn_time(channel: Channel) -> None:
    order_id, refund_id = channel.new_order_id(), channel.new_refund_id()
    assert len(order_id) == 29 and order_id.isalnum() and order_id.endswith("01")
    assert len(refund_id) == 26 and refund_id.isalnum()
    created = await channel.create(channel_order_id=order_id)
    view = await channel.order_view(created.order_id)
    assert view is not None
    txn_time = id_time(order_id[3:-2]).astimezone(CHINA).strftime("%Y%m%d%H%M%S")
    assert view["extra"]["txnTime"] == txn_time


async def test_notification_carries_the_signer_certificate(channel: Channel) -> None:
    paid = await channel.pay()
    fields = form_fields(channel.receiver.about(paid.order_id)[0].request.body)
    assert fields["signPubKeyCert"].startswith("-----BEGIN CERTIFICATE-----\r\n")
    assert (fields["txnType"], fields["txnSubType"], fields["signMethod"]) == ("01", "07", "01")
    trade_no = paid.notification.result.channel_trade_no
    assert trade_no is not None and len(trade_no) == 21  # queryId
    queried = await channel.adapter.query_payment(paid.order_id)
    assert queried.raw["settleDate"] == fields["settleDate"]

    genuine = channel.receiver.about(paid.order_id)[0].request
    with pytest.raises(NotificationRejected, match="chain"):
        channel.adapter.parse_notification(UNIONPAY.resign(genuine, foreign=True))
    with pytest.raises(NotificationRejected, match="signature"):
        channel.adapter.parse_notification(UNIONPAY.tamper_amount(genuine))


async def test_an_altered_answer_is_logged_as_not_matching(
    channel: Channel, tmp_path: Path
) -> None:
    distrustful = await UNIONPAY.distrustful_adapter(channel, tmp_path)
    with structlog.testing.capture_logs() as logs:
        await distrustful.create_payment(channel.payment())
    warning = next(e for e in logs if e["event"] == UNIONPAY.untrusted_log_event)
    assert "does not match" in warning["reason"]


async def test_reconciliation_file_reports_a_refunds_own_status(channel: Channel) -> None:
    paid = await channel.pay(3000)
    refund = channel.refund_of(paid.request, 1000)
    await channel.adapter.refund(refund)
    await channel.receiver.wait_accepted(paid.order_id, NotificationKind.REFUND)
    await channel.statement_faults(status={refund.channel_refund_id: "01"})
    lines = await channel.statement(datetime.now(CHINA).date())
    [line] = [x for x in lines if x.channel_refund_id == refund.channel_refund_id]
    assert (line.channel_order_id, line.amount, line.status) == (paid.order_id, 1000, "failed")
    payment = next(
        x for x in lines if x.channel_order_id == paid.order_id and not x.channel_refund_id
    )
    assert payment.status == "succeeded"


async def test_a_refund_whose_own_answer_is_not_trusted_is_unknown(channel: Channel) -> None:
    """The shared scenarios break every request, so a UnionPay refund never gets past its
    query of the payment there. Here only the refund's own answer (txnType 04) is altered
    after UnionPay signed it: the refund was made, so the result is UNKNOWN, never a failure."""
    paid = await channel.pay(3000)

    def alter_the_refund(path: str, body: bytes) -> bytes:
        fields = dict(parse_qsl(body.decode("utf-8")))
        if fields.get("txnType") != "04":
            return body
        return body.replace(b"respMsg=", b"respMsg=tampered ", 1)

    proxy = await channel.proxy(alter_the_refund)
    adapter = channel.build(base_url=proxy.base_url)
    refund = channel.refund_of(paid.request, 1000)
    result = await adapter.refund(refund)
    assert result_shape(result) == (Outcome.UNKNOWN, Decision.RETRY, "INVALID_SIGNATURE")
    [note] = await channel.receiver.wait_accepted(paid.order_id, NotificationKind.REFUND)
    assert (note.channel_refund_id, note.result.outcome) == (
        refund.channel_refund_id,
        Outcome.SUCCEEDED,
    )
    queried = await channel.adapter.query_refund(paid.order_id, refund.channel_refund_id)
    assert (queried.outcome, queried.amount) == (Outcome.SUCCEEDED, 1000)
