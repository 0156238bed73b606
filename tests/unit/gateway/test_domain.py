from __future__ import annotations

import asyncio
import base64
import random
import re
import time

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from standardwebhooks import Webhook

from gateway.auth.secretbox import SecretBox, generate_master_key
from gateway.domain import webhooks
from gateway.domain.ids import new_id
from gateway.domain.models import CreatePaymentRequest
from gateway.domain.states import (
    AttemptStatus,
    PaymentStatus,
    attempt_can,
    payment_can,
)
from gateway.logs import bind_job, bind_request_id, current_request_id, redact_secrets

VALID = {
    "merchant_order_id": "A1001",
    "amount": 1999,
    "currency": "CNY",
    "method": "alipay_qr",
    "description": "Order A1001",
}


def test_payment_state_machine_only_moves_forward() -> None:
    assert payment_can("pending", "succeeded")
    assert payment_can("pending", "failed")
    assert payment_can("pending", "closed")
    for final in ("succeeded", "failed", "closed"):
        for target in PaymentStatus:
            assert not payment_can(final, target)


def test_attempt_state_machine() -> None:
    assert attempt_can(AttemptStatus.CREATING, AttemptStatus.WAITING)
    assert attempt_can(AttemptStatus.UNKNOWN, AttemptStatus.SUCCEEDED)
    assert not attempt_can(AttemptStatus.SUCCEEDED, AttemptStatus.WAITING)
    assert not attempt_can(AttemptStatus.WAITING, AttemptStatus.FAILED_OVER)
    assert not attempt_can(AttemptStatus.FAILED_OVER, AttemptStatus.SUCCEEDED)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"amount": 19.99}, "amount"),
        ({"amount": 1999.0}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "1999"}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": 10**11 + 1}, "amount"),
        ({"currency": "cny"}, "currency"),
        ({"method": "paypal"}, "method"),
        ({"merchant_order_id": "has space"}, "merchant_order_id"),
        ({"merchant_order_id": "x" * 65}, "merchant_order_id"),
        ({"description": ""}, "description"),
        ({"expires_in": 59}, "expires_in"),
        ({"expires_in": 86401}, "expires_in"),
        ({"notify_url": "ftp://x"}, "notify_url"),
        ({"metadata": {str(i): "v" for i in range(21)}}, "metadata"),
        ({"payer": {"ip": "not-an-ip"}}, "payer.ip"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_create_payment_request_is_strict(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        CreatePaymentRequest.model_validate({**VALID, **patch})
    locs = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert any(loc.startswith(field) for loc in locs), locs


def test_create_payment_request_accepts_the_contract_example() -> None:
    req = CreatePaymentRequest.model_validate(
        {
            **VALID,
            "notify_url": "https://shop.example/pay/notify",
            "expires_in": 900,
            "metadata": {"cart": "c-77"},
            "payer": {"ip": "203.0.113.9", "id": "u-1"},
        }
    )
    assert req.amount == 1999 and req.payer is not None and req.payer.ip == "203.0.113.9"


def test_ids_are_unique_sortable_and_fit_channel_limits() -> None:
    ids = [new_id("pay") for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 28 and i.startswith("pay_") for i in ids)
    assert len(ids[0] + "_99") <= 32  # WeChat's out_trade_no limit


def test_webhook_signature_verifies_with_standardwebhooks() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"id":"evt_1","type":"payment.succeeded"}'
    headers = webhooks.headers(secret, "evt_1", 1_700_000_000, body)
    wh = Webhook(secret)
    # standardwebhooks checks the timestamp against its clock: sign with now
    now = int(time.time())
    headers = webhooks.headers(secret, "evt_1", now, body)
    assert wh.verify(body, headers) is not None


def test_callback_headers_carry_the_request_id_outside_the_signature() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"id":"evt_1","type":"payment.succeeded"}'
    now = int(time.time())
    plain = webhooks.headers(secret, "evt_1", now, body)
    traced = webhooks.headers(secret, "evt_1", now, body, request_id="req_0123456789abcdef")
    assert not any(name.lower() == "x-request-id" for name in plain)
    assert traced["X-Request-Id"] == "req_0123456789abcdef"
    assert {k: v for k, v in traced.items() if k != "X-Request-Id"} == plain
    assert Webhook(secret).verify(body, traced) is not None
    assert webhooks.headers(secret, "evt_1", now, body, request_id=None) == plain


async def test_bind_job_binds_a_fresh_job_id_for_its_own_task() -> None:
    async def job() -> tuple[str, str | None]:
        bound = bind_job()
        await asyncio.sleep(0)
        return bound, current_request_id()

    bind_request_id("req_outer")
    try:
        (first, first_seen), (second, second_seen) = await asyncio.gather(job(), job())
        assert current_request_id() == "req_outer"  # the jobs' ids stayed in their tasks
        assert structlog.contextvars.get_contextvars()["request_id"] == "req_outer"
    finally:
        bind_request_id(None)
    assert current_request_id() is None
    assert (first_seen, second_seen) == (first, second)
    assert re.fullmatch(r"job_[0-9a-f]{24}", first) and re.fullmatch(r"job_[0-9a-f]{24}", second)
    assert first != second


@given(st.integers(min_value=1, max_value=7))
def test_retry_schedule_with_jitter(attempts: int) -> None:
    schedule = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    delay = webhooks.next_delay(schedule, attempts, random.Random(attempts))
    assert delay is not None
    base = schedule[attempts - 1]
    assert 0.9 * base <= delay <= 1.1 * base


def test_retry_schedule_ends() -> None:
    assert webhooks.next_delay((1.0, 2.0), 3) is None


def test_retry_after_parsing() -> None:
    assert webhooks.parse_retry_after("120") == 120
    assert webhooks.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert webhooks.parse_retry_after(None) is None
    assert webhooks.parse_retry_after("999999999") == 86400


def test_secretbox_round_trip_and_binding() -> None:
    box = SecretBox(generate_master_key())
    sealed = box.seal("sk_secret", "key_1")
    assert b"sk_secret" not in sealed
    assert box.open(sealed, "key_1") == "sk_secret"
    with pytest.raises(ValueError):
        box.open(sealed, "key_2")
    with pytest.raises(ValueError):
        SecretBox(generate_master_key()).open(sealed, "key_1")
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(base64.urlsafe_b64encode(b"short").decode())


def test_log_redaction() -> None:
    event = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "secret": "sk_abcdefghijklmnopqrstuvwxyz",
            "headers": {"Authorization": "GW1-HMAC-SHA256 …", "X-Other": "fine"},
            "note": "leaked whsec_QUJDREVGR0g= and sk_abcdefghijklmnopqrstuv",
            "key_id": "key_123",
        },
    )
    assert event["secret"] == "[redacted]"
    assert event["headers"]["Authorization"] == "[redacted]"
    assert event["headers"]["X-Other"] == "fine"
    assert "whsec_" not in event["note"] and "sk_abc" not in event["note"]
    assert event["key_id"] == "key_123"
