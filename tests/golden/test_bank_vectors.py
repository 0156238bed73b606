"""The bank channel (our own design) pinned by its specification, docs/channels/bank.md, and by
worked examples signed with the `openssl` command line (tests/golden/data/bank.json).

No Python of ours makes or checks a bank signature here: the five-line messages are built from
the specification, signatures are made and checked by `openssl dgst -sha256` with the
development keys in config/keys/bank/. The adapter is used only through `build_adapter` and its
public calls, against a capturing server on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.bank.adapter import BankAdapter
from adapters.base import (
    AdapterContext,
    ChannelAdapter,
    CreatePayment,
    IncomingRequest,
    NotificationKind,
    NotificationRejected,
    Outcome,
    ResponseVerificationError,
    StatementKind,
)
from adapters.registry import build_adapter
from tests.golden.support import Captured, Reply, StartServer, openssl_sign, openssl_verify, vectors

V = vectors("bank")
KEYS = Path(__file__).resolve().parents[2] / "config" / "keys" / "bank"
MERCHANT_ID = "M100200300"
PREFIX = "/gw"
CHINA = timezone(timedelta(hours=8))
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def message(line1: str, line2: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The specification's signed message: five lines, each ending in a line feed."""
    return f"{line1}\n{line2}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def example_message(example: Mapping[str, str]) -> bytes:
    return message(
        example["line1"],
        example["line2"],
        example["timestamp"],
        example["nonce"],
        example["body"].encode(),
    )


def bank_signs(line1: str, line2: str, timestamp: str, nonce: str, body: bytes) -> str:
    return openssl_sign(KEYS / "bank_private.pem", message(line1, line2, timestamp, nonce, body))


def signed_answer(sent: Captured, body: bytes, status: int = 200) -> Reply:
    """The bank's answer to `sent`: signed over status, the request's path, a fresh timestamp
    and the request's own nonce."""
    timestamp = str(int(time.time()))
    nonce = sent.headers["X-Bank-Nonce"]
    return Reply(
        status,
        body,
        {
            "Content-Type": "application/json",
            "X-Bank-Timestamp": timestamp,
            "X-Bank-Nonce": nonce,
            "X-Bank-Signature": bank_signs(str(status), sent.path_qs, timestamp, nonce, body),
        },
    )


def build_bank(
    http: aiohttp.ClientSession, base_url: str, merchant_id: str = MERCHANT_ID
) -> ChannelAdapter:
    config = {
        "base_url": base_url + PREFIX,
        "merchant_id": merchant_id,
        "merchant_private_key": "keys/bank/merchant_private.pem",
        "bank_public_key": "keys/bank/bank_public.pem",
    }
    return build_adapter(
        "bank", "bank_golden", config, AdapterContext(http=http, config_dir=str(KEYS.parents[1]))
    )


def create_order() -> CreatePayment:
    body = json.loads(V["request"]["body"])
    return CreatePayment(
        channel_order_id=body["order_no"],
        amount=body["amount"],
        currency=body["currency"],
        method="card",
        description=body["description"],
        notify_url=body["notify_url"],
        expires_at=datetime.fromisoformat(body["expire_time"]),
    )


def notification(example: Mapping[str, str], **overrides: str) -> IncomingRequest:
    fields = dict(example) | overrides
    return IncomingRequest(
        method="POST",
        path="/notify/bank_golden",
        headers={
            "Content-Type": "application/json",
            "X-Bank-Timestamp": fields["timestamp"],
            "X-Bank-Nonce": fields["nonce"],
            "X-Bank-Signature": fields["signature"],
        },
        body=fields["body"].encode(),
        content_type="application/json",
    )


# ---- the worked examples of the specification -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "public_key"),
    [
        ("request", "merchant_public.pem"),
        ("answer", "bank_public.pem"),
        ("payment_notification", "bank_public.pem"),
        ("refund_notification", "bank_public.pem"),
    ],
)
def test_worked_examples_verify_with_openssl(name: str, public_key: str, tmp_path: Path) -> None:
    example = V[name]
    signed = example_message(example)
    assert openssl_verify(KEYS / public_key, signed, example["signature"], tmp_path)
    later = example_message(example | {"timestamp": str(int(example["timestamp"]) + 1)})
    assert not openssl_verify(KEYS / public_key, later, example["signature"], tmp_path)
    other = "bank_public.pem" if public_key == "merchant_public.pem" else "merchant_public.pem"
    assert not openssl_verify(KEYS / other, signed, example["signature"], tmp_path)


# ---- our adapter against them ---------------------------------------------------------------


async def test_create_request_is_signed_as_specified(
    tmp_path: Path, http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    server = await start_server(lambda sent: signed_answer(sent, V["answer"]["body"].encode()))
    adapter = build_bank(http, server.base_url)

    result = await adapter.create_payment(create_order())

    sent = server.only_request()
    assert (sent.method, sent.path_qs) == ("POST", PREFIX + V["request"]["line2"])  # the full path
    assert sent.headers["X-Bank-Merchant"] == MERCHANT_ID
    assert NONCE.match(sent.headers["X-Bank-Nonce"])
    timestamp = sent.headers["X-Bank-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    signed = message("POST", sent.path_qs, timestamp, sent.headers["X-Bank-Nonce"], sent.body)
    assert openssl_verify(
        KEYS / "merchant_public.pem", signed, sent.headers["X-Bank-Signature"], tmp_path
    )
    assert json.loads(sent.body) == json.loads(V["request"]["body"])  # fen, RFC 3339 in UTC+8

    answer = json.loads(V["answer"]["body"])["order"]
    assert result.outcome is Outcome.WAITING
    assert result.channel_trade_no == answer["txn_id"]
    assert result.next_action is not None
    assert (result.next_action.type, result.next_action.url) == ("redirect", answer["pay_url"])


async def test_a_recorded_answer_is_refused_for_another_request(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    """The worked example's answer is genuine, but signed with the example request's nonce."""
    example = V["answer"]
    recorded = Reply(
        200,
        example["body"].encode(),
        {
            "X-Bank-Timestamp": example["timestamp"],
            "X-Bank-Nonce": example["nonce"],
            "X-Bank-Signature": example["signature"],
        },
    )
    server = await start_server(lambda _: recorded)
    adapter = build_bank(http, server.base_url)

    result = await adapter.create_payment(create_order())

    assert result.outcome is Outcome.UNKNOWN
    assert result.next_action is None


async def test_an_answer_altered_after_signing_is_not_trusted(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    def respond(sent: Captured) -> Reply:
        genuine = signed_answer(sent, V["answer"]["body"].encode())
        return Reply(200, genuine.body.replace(b'"CREATED"', b'"SUCCESS"'), genuine.headers)

    server = await start_server(respond)
    adapter = build_bank(http, server.base_url)

    result = await adapter.create_payment(create_order())

    assert result.outcome is Outcome.UNKNOWN


async def test_query_signs_an_empty_body(
    tmp_path: Path, http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    paid = json.loads(V["answer"]["body"])
    paid["order"] |= {
        "status": "SUCCESS",
        "paid_time": "2024-05-01T12:02:04+08:00",
        "pay_url": None,
    }
    server = await start_server(lambda sent: signed_answer(sent, json.dumps(paid).encode()))
    adapter = build_bank(http, server.base_url)
    order_no = paid["order"]["order_no"]

    result = await adapter.query_payment(order_no)

    sent = server.only_request()
    assert (sent.method, sent.path_qs, sent.body) == (
        "GET",
        f"{PREFIX}/api/v1/orders/{order_no}",
        b"",
    )
    signed = message(
        "GET", sent.path_qs, sent.headers["X-Bank-Timestamp"], sent.headers["X-Bank-Nonce"], b""
    )
    assert signed.endswith(b"\n\n")
    assert openssl_verify(
        KEYS / "merchant_public.pem", signed, sent.headers["X-Bank-Signature"], tmp_path
    )
    assert result.outcome is Outcome.SUCCEEDED
    assert (result.amount, result.currency) == (1999, "CNY")
    assert result.paid_at == datetime(2024, 5, 1, 12, 2, 4, tzinfo=CHINA)


def bank_at(http: aiohttp.ClientSession, unix_seconds: float) -> ChannelAdapter:
    """The bank adapter on a clock stopped at `unix_seconds`."""
    adapter = build_bank(http, "https://pay.bank.example")
    assert isinstance(adapter, BankAdapter)
    adapter.clock = lambda: unix_seconds
    return adapter


async def test_worked_example_notifications_are_accepted(http: aiohttp.ClientSession) -> None:
    """On a clock within the specification's 5 minutes of their timestamps."""
    payment = json.loads(V["payment_notification"]["body"])
    refund = json.loads(V["refund_notification"]["body"])
    paid_at = int(V["payment_notification"]["timestamp"])
    refunded_at = int(V["refund_notification"]["timestamp"])

    paid = bank_at(http, paid_at + 299).parse_notification(notification(V["payment_notification"]))
    refunded = bank_at(http, refunded_at - 299).parse_notification(
        notification(V["refund_notification"])
    )

    assert (paid.kind, paid.channel_order_id) == (NotificationKind.PAYMENT, payment["order_no"])
    assert paid.notification_id == payment["notify_id"]
    assert paid.result.outcome is Outcome.SUCCEEDED
    assert (paid.result.amount, paid.result.currency) == (1999, "CNY")
    assert paid.result.channel_trade_no == payment["txn_id"]
    assert paid.result.paid_at == datetime(2024, 5, 1, 12, 2, 4, tzinfo=CHINA)
    assert (refunded.kind, refunded.channel_refund_id) == (
        NotificationKind.REFUND,
        refund["refund_no"],
    )
    assert refunded.notification_id == refund["notify_id"]
    assert refunded.result.outcome is Outcome.SUCCEEDED
    assert (refunded.result.amount, refunded.result.currency) == (500, refund["currency"])
    assert refunded.result.channel_trade_no == refund["refund_txn_id"]


@pytest.mark.parametrize("name", ["payment_notification", "refund_notification"])
async def test_worked_example_notifications_are_refused_outside_the_window(
    http: aiohttp.ClientSession, name: str
) -> None:
    """Genuine, but replayed today, or 301 s from their timestamp either way."""
    example = V[name]
    signed_at = int(example["timestamp"])
    for now in (time.time(), signed_at + 301, signed_at - 301):
        with pytest.raises(NotificationRejected, match="window"):
            bank_at(http, now).parse_notification(notification(example))


async def test_forged_notifications_are_rejected(http: aiohttp.ClientSession) -> None:
    example = V["payment_notification"]
    adapter = bank_at(http, int(example["timestamp"]))
    with pytest.raises(NotificationRejected, match="invalid signature"):
        adapter.parse_notification(
            notification(example, body=example["body"].replace("1999", "19990"))
        )
    with pytest.raises(NotificationRejected, match="invalid signature"):
        adapter.parse_notification(notification(example, nonce="AAAAAAAAAAAAAAAAAAAAAA"))
    # line 2 is the merchant id it is addressed to: another merchant cannot accept it
    other = build_bank(http, "https://pay.bank.example", merchant_id="M999999999")
    assert isinstance(other, BankAdapter)
    other.clock = lambda: int(example["timestamp"])
    with pytest.raises(NotificationRejected, match="invalid signature"):
        other.parse_notification(notification(example))


def statement_server(csv: bytes, *, alter: bool = False) -> Any:
    def respond(sent: Captured) -> Reply:
        genuine = signed_answer(sent, csv)
        body = genuine.body.replace(b"19.99", b"91.99") if alter else genuine.body
        return Reply(200, body, dict(genuine.headers) | {"Content-Type": "text/csv; charset=utf-8"})

    return respond


async def test_statement_is_verified_and_read(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    statement = V["statement"]
    server = await start_server(statement_server(statement["csv"].encode()))
    adapter = build_bank(http, server.base_url)

    lines = [
        line async for line in adapter.download_statement(date.fromisoformat(statement["day"]))
    ]

    assert server.only_request().path_qs == f"{PREFIX}/api/v1/statements/20240501"
    assert [(x.kind, x.amount, x.fee, x.status) for x in lines] == [
        (StatementKind.PAYMENT, 1999, 12, "succeeded"),  # 0.6 % of 19.99, half up: 0.12
        (StatementKind.REFUND, 500, 0, "succeeded"),
    ]
    assert lines[1].channel_refund_id == json.loads(V["refund_notification"]["body"])["refund_no"]


async def test_a_statement_altered_after_signing_is_refused(
    http: aiohttp.ClientSession, start_server: StartServer
) -> None:
    statement = V["statement"]
    server = await start_server(statement_server(statement["csv"].encode(), alter=True))
    adapter = build_bank(http, server.base_url)

    with pytest.raises(ResponseVerificationError):
        [line async for line in adapter.download_statement(date.fromisoformat(statement["day"]))]


async def test_acknowledgement(http: aiohttp.ClientSession) -> None:
    ack = build_bank(http, "https://pay.bank.example").ack(True)
    assert (ack.status, json.loads(ack.body)) == (V["ack"]["status"], V["ack"]["body"])
