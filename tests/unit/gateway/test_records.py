"""Records become the API's objects: what a payment, a refund and a delivery show, and the
delivery state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.models import PaymentObject, RefundObject, WebhookDeliveryObject, event_body
from gateway.domain.records import (
    CallbackAttempt,
    Delivery,
    Failure,
    NextAction,
    Payment,
    Refund,
)
from gateway.domain.states import (
    DeliveryStatus,
    PaymentStatus,
    RefundStatus,
    delivery_can,
)

NOW = datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def payment(**changes: object) -> Payment:
    values: dict[str, object] = {
        "id": "pay_1",
        "merchant_id": "mch_1",
        "merchant_order_id": "A1001",
        "status": PaymentStatus.PENDING,
        "amount": 1999,
        "currency": "CNY",
        "method": "alipay_qr",
        "description": "Order A1001",
        "notify_url": None,
        "metadata": {"cart": "c-77"},
        "payer": {"ip": "203.0.113.9"},
        "channel": "alipay_main",
        "channel_order_id": "pay_1_1",
        "channel_trade_no": None,
        "next_action": NextAction("qr_code", "https://sim/pay"),
        "refunded_amount": 0,
        "refund_reserved": 0,
        "failure": None,
        "attempt_count": 1,
        "created_at": NOW,
        "updated_at": NOW,
        "expires_at": NOW + timedelta(minutes=15),
        "paid_at": None,
        "closed_at": None,
    }
    values.update(changes)
    return Payment(**values)  # type: ignore[arg-type]


def test_a_payment_object_shows_the_next_action_only_while_pending() -> None:
    shown = PaymentObject.of(payment()).model_dump(mode="json")
    assert shown["next_action"] == {"type": "qr_code", "url": "https://sim/pay"}
    assert (shown["object"], shown["status"]) == ("payment", "pending")
    assert shown["created_at"] == "2025-03-01T08:30:15Z"
    assert shown["expires_at"] == "2025-03-01T08:45:15Z"
    assert "payer" not in shown and "refund_reserved" not in shown
    closed = payment(status=PaymentStatus.CLOSED, failure=Failure("expired", "Too late."))
    shown = PaymentObject.of(closed).model_dump(mode="json")
    assert shown["next_action"] is None
    assert shown["failure"] == {"code": "expired", "message": "Too late."}


def test_an_event_carries_the_object_as_json() -> None:
    body = event_body("evt_1", "payment.succeeded", NOW, PaymentObject.of(payment()))
    assert body["created_at"] == "2025-03-01T08:30:15Z"
    assert body["data"]["object"]["status"] == "pending"
    assert body["data"]["object"]["metadata"] == {"cart": "c-77"}


def test_a_refund_object() -> None:
    refund = Refund(
        id="re_1",
        payment_id="pay_1",
        merchant_id="mch_1",
        merchant_refund_id="R1",
        amount=500,
        currency="CNY",
        reason=None,
        status=RefundStatus.SUCCEEDED,
        channel="alipay_main",
        channel_order_id="pay_1_1",
        channel_refund_id="re_1",
        channel_refund_no="2025",
        channel_code="10000",
        failure=None,
        created_at=NOW,
        updated_at=NOW,
        completed_at=NOW,
        next_sync_at=None,
        sync_count=0,
    )
    shown = RefundObject.of(refund).model_dump(mode="json")
    assert list(shown) == [
        "id", "object", "payment_id", "merchant_refund_id", "amount", "currency", "reason",
        "status", "failure", "created_at", "completed_at",
    ]  # fmt: skip
    assert (shown["status"], shown["completed_at"]) == ("succeeded", "2025-03-01T08:30:15Z")


@pytest.mark.parametrize(
    ("status", "shown", "next_shown"),
    [
        (DeliveryStatus.PENDING, "pending", True),
        (DeliveryStatus.DELIVERING, "pending", False),
        (DeliveryStatus.FAILED, "failed", False),
    ],
)
def test_a_delivery_under_way_is_pending_to_the_merchant(
    status: DeliveryStatus, shown: str, next_shown: bool
) -> None:
    delivery = Delivery(
        id="dlv_1",
        event_id="evt_1",
        event_type="payment.succeeded",
        merchant_id="mch_1",
        endpoint_id=None,
        url="https://shop.example/hook",
        status=status,
        attempts=1,
        next_attempt_at=NOW,
        last_status_code=None,
        last_error="timed out after 10 s",
        created_at=NOW,
        delivered_at=None,
        attempt_log=(CallbackAttempt(NOW, None, 10_000, "timed out after 10 s", None),),
    )
    obj = WebhookDeliveryObject.of(delivery).model_dump(mode="json")
    assert obj["status"] == shown
    assert obj["next_attempt_at"] == ("2025-03-01T08:30:15Z" if next_shown else None)
    assert obj["attempt_log"][0]["attempted_at"] == "2025-03-01T08:30:15.123Z"


def test_the_delivery_state_machine() -> None:
    assert delivery_can(DeliveryStatus.PENDING, DeliveryStatus.DELIVERING)
    assert delivery_can(DeliveryStatus.DELIVERING, DeliveryStatus.DELIVERING)  # lease ran out
    assert delivery_can(DeliveryStatus.FAILED, DeliveryStatus.PENDING)  # manual retry
    assert not delivery_can(DeliveryStatus.PENDING, DeliveryStatus.SUCCEEDED)  # not attempted
    assert not delivery_can(DeliveryStatus.FAILED, DeliveryStatus.DELIVERING)
    for target in DeliveryStatus:
        assert not delivery_can(DeliveryStatus.SUCCEEDED, target)
