"""The `bank` wire protocol: signatures against fixed vectors, amounts, the error table and the
mapping of answers and notifications to results. Pure, no network."""

from __future__ import annotations

import base64
import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.bank import protocol as p
from adapters.bank.simulator import NonceWindow
from adapters.base import Decision, NotificationKind, Outcome, StatementKind
from adapters.kernel.calls import Call
from adapters.kernel.crypto import load_private_key, load_public_key

KEYS = Path(__file__).resolve().parents[3] / "config" / "keys" / "bank"
MERCHANT_PRIVATE = load_private_key((KEYS / "merchant_private.pem").read_bytes())
MERCHANT_PUBLIC = load_public_key((KEYS / "merchant_public.pem").read_bytes())
BANK_PRIVATE = load_private_key((KEYS / "bank_private.pem").read_bytes())
BANK_PUBLIC = load_public_key((KEYS / "bank_public.pem").read_bytes())

BODY = b'{"merchant_id":"M100200300","order_no":"pay_abc_1","amount":1999}'
NONCE = "n0nce-0123456789abcdef"
# SHA256withRSA of the request below with the committed development merchant key; the same
# value comes out of `openssl dgst -sha256 -sign config/keys/bank/merchant_private.pem`.
REQUEST_SIGNATURE = (
    "FEuPvWzz2Q2Bs+IcEUbgzL0UDuxzPxpNhPAGKE/Hll0C1Q7HoF/o0mLJKoMh9sIu4w3o10IH4vZvSlz/wmOI3A5S"
    "p4oyFdJV357quUhUb9CAtIpt/0RqojL8oUnJnUwW4Wm29H1t5A0lf2uiO1hM6bcIHLsPcr+q+FCzZjEg2QiAehCx"
    "CAnR7w03w/uLpR0YIlsfvhO0ogdOo7SUhJ3KwXYdmT6CQKwEoa3TIec/cw0qwKTp25In0q8kGI/apPatKzlHcfbe"
    "2jiSccxoqwCKBa7p5+k8+kLNo006pojb28q4xSqWVaJx1WKZUnqUvTrFKlzzhfUfzcfwghNqz/qHkw=="
)
NOTIFY_BODY = b'{"notify_type":"PAYMENT"}'
NOTIFY_SIGNATURE = (
    "B8j1ybcaQZiw9XPTBCIyP//HGGPqBXwscCiDFdqsSE4R6pKBTUfFsj85eHdIy6KXZ2xWvVnt6Ogh/ijLccpGLVT8"
    "oUH2kA6U7wPyT0RSKmx6iYNJsHXPwt7lzGnbHFqWloYvI2dpNRbv+NfHiY+toSlkc7jiZteoNvOvVYEeuH4ArN5J"
    "Yxsp/RsL+DKJuVu0oUNW3Y7AC/agJ6GHvTrOmd4GnS9F7ugYozR+RYSi2MEPuudnz0Q7RQNCK3DISNhDOxXSnkBs"
    "lsBDWFFVt/frYeZoywhqTBxJ2kwnHmPx4yJiyhdUpDo3tHN1F4GaXQCB/mgdYI11Nv9te3vm19EQVg=="
)


def request_msg(body: bytes = BODY) -> bytes:
    return p.request_message("post", "/sim/bank/api/v1/orders", "1700000000", NONCE, body)


# ---- signatures ---------------------------------------------------------------------------


def test_canonical_string_is_five_lines() -> None:
    assert request_msg() == (
        b"POST\n/sim/bank/api/v1/orders\n1700000000\n" + NONCE.encode() + b"\n" + BODY + b"\n"
    )
    assert p.response_message(200, "/x?a=1", "1", "n", b"") == b"200\n/x?a=1\n1\nn\n\n"
    assert p.notification_message("M1", "1", "n", b"{}") == b"NOTIFY\nM1\n1\nn\n{}\n"


def test_request_signature_fixed_vector() -> None:
    assert p.sign(MERCHANT_PRIVATE, request_msg()) == REQUEST_SIGNATURE
    assert p.verify(MERCHANT_PUBLIC, request_msg(), REQUEST_SIGNATURE)


def test_notification_signature_fixed_vector() -> None:
    message = p.notification_message("M100200300", "1700000000", NONCE, NOTIFY_BODY)
    assert p.sign(BANK_PRIVATE, message) == NOTIFY_SIGNATURE
    assert p.verify(BANK_PUBLIC, message, NOTIFY_SIGNATURE)


def test_tampered_or_misattributed_messages_fail() -> None:
    tampered = request_msg(BODY.replace(b"1999", b"1998"))
    assert not p.verify(MERCHANT_PUBLIC, tampered, REQUEST_SIGNATURE)
    # the right message, checked with the wrong party's key
    assert not p.verify(BANK_PUBLIC, request_msg(), REQUEST_SIGNATURE)
    # a request signature cannot pass as a notification signature
    as_notify = p.notification_message("M100200300", "1700000000", NONCE, BODY)
    assert not p.verify(MERCHANT_PUBLIC, as_notify, REQUEST_SIGNATURE)
    assert not p.verify(MERCHANT_PUBLIC, request_msg(), "not base64!")
    assert not p.verify(MERCHANT_PUBLIC, request_msg(), "")
    flipped = bytearray(base64.b64decode(REQUEST_SIGNATURE))
    flipped[10] ^= 1
    assert not p.verify(MERCHANT_PUBLIC, request_msg(), base64.b64encode(flipped).decode())


def test_signature_interoperates_with_pycryptodome() -> None:
    """An independent implementation of PKCS#1 v1.5 / SHA-256 (the one python-alipay-sdk
    uses) agrees with ours both ways."""
    crypto_rsa = pytest.importorskip("Cryptodome.PublicKey.RSA")
    pkcs1_15 = pytest.importorskip("Cryptodome.Signature.pkcs1_15")
    sha256 = pytest.importorskip("Cryptodome.Hash.SHA256")
    private = crypto_rsa.import_key((KEYS / "merchant_private.pem").read_bytes())
    theirs = pkcs1_15.new(private).sign(sha256.new(request_msg()))
    assert base64.b64encode(theirs).decode() == REQUEST_SIGNATURE
    public = crypto_rsa.import_key((KEYS / "bank_public.pem").read_bytes())
    ours = p.sign(BANK_PRIVATE, b"anything")
    pkcs1_15.new(public).verify(sha256.new(b"anything"), base64.b64decode(ours))


def test_streaming_verifier_matches_whole_body() -> None:
    body = b"a,b,c\n" * 5000
    signature = p.sign(BANK_PRIVATE, p.response_message(200, "/s", "1", NONCE, body))
    good = p.StreamingVerifier("200", "/s", "1", NONCE)
    for start in range(0, len(body), 777):
        good.update(body[start : start + 777])
    assert good.verify(BANK_PUBLIC, signature)
    bad = p.StreamingVerifier("200", "/s", "1", NONCE)
    bad.update(body[:-1])
    assert not bad.verify(BANK_PUBLIC, signature)


# ---- amounts, times, cards ----------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**11))
def test_statement_amounts_round_trip(fen: int) -> None:
    row = p.statement_row(
        record_type="PAYMENT",
        order_no="pay_a_1",
        txn_id="B1",
        currency="CNY",
        amount=fen,
        fee=p.fee_for(fen),
        status="SUCCESS",
        resp_code="00",
        trans_time=datetime(2024, 5, 1, 4, 0, tzinfo=UTC),
    )
    line = p.parse_statement_row(row)
    assert line is not None
    assert line.amount == fen
    assert line.fee == p.fee_for(fen)


def test_fee_rounds_half_up() -> None:
    assert p.fee_for(1999) == 12  # 11.994
    assert p.fee_for(250) == 2  # 1.5 -> 2
    assert p.fee_for(249) == 1  # 1.494
    assert p.fee_for(0) == 0


def test_times_are_utc8_on_the_wire() -> None:
    moment = datetime(2024, 5, 1, 16, 30, 5, 123456, tzinfo=UTC)
    assert p.format_time(moment) == "2024-05-02T00:30:05+08:00"
    assert p.parse_time("2024-05-02T00:30:05+08:00") == moment.replace(microsecond=0)
    assert p.china_day(moment) == "20240502"
    with pytest.raises(ValueError):
        p.parse_time("2024-05-02T00:30:05")
    with pytest.raises(ValueError):
        p.format_time(datetime(2024, 5, 1))


def test_test_cards() -> None:
    assert p.card_decision(p.TEST_CARD_APPROVE) == "00"
    assert p.card_decision("4111 1111 1111 1111") == "00"
    for code in p.DECLINE_CODES:
        assert p.card_decision(f"40000000000000{code}") == code
    assert p.card_decision(p.TEST_CARD_PROCESSING) == "09"
    assert p.card_decision("4111111111111112") == "14"  # fails Luhn
    assert p.card_decision("abc") == "14"


# ---- the error table and the mapping ------------------------------------------------------


def test_error_table() -> None:
    assert p.ERROR_TABLE["00"] is Decision.FINAL
    assert p.ERROR_TABLE["09"] is Decision.RETRY
    for code in ("05", "14", "51", "54", "61"):
        assert p.ERROR_TABLE[code] is Decision.FINAL
    for code in ("91", "96"):
        assert p.decision_for(code, Call.CREATE) is Decision.FAILOVER
        assert p.decision_for(code, Call.QUERY) is Decision.RETRY
        assert p.decision_for(code, Call.REFUND) is Decision.RETRY
    assert p.decision_for("Z9") is Decision.RETRY  # unknown: never assume
    assert set(p.RESP_MESSAGES) >= set(p.ERROR_TABLE)


def order(status: str, code: str = "00", **extra: Any) -> dict[str, Any]:
    return {
        "order_no": "pay_a_1",
        "txn_id": "B20240501abc",
        "merchant_id": "M1",
        "amount": 1999,
        "currency": "CNY",
        "status": status,
        "resp_code": code,
        "pay_url": "http://bank/sim/bank/pay/pay_a_1",
        "created_time": "2024-05-01T12:00:00+08:00",
        "paid_time": "2024-05-01T12:01:00+08:00" if status == "SUCCESS" else None,
        "expire_time": "2024-05-01T12:15:00+08:00",
        **extra,
    }


def answer(code: str, **objects: Any) -> p.ApiAnswer:
    return p.ApiAnswer.model_validate({"resp_code": code, "resp_msg": "", **objects})


def test_create_waiting_redirects_to_the_hosted_page() -> None:
    result = p.to_result(Call.CREATE, answer("00", order=order("CREATED", "09")))
    assert result.outcome is Outcome.WAITING
    assert result.next_action is not None
    assert result.next_action.type == "redirect"
    assert result.next_action.url == "http://bank/sim/bank/pay/pay_a_1"
    assert result.channel_trade_no == "B20240501abc"


@pytest.mark.parametrize("code", ["05", "14", "51", "54", "61"])
def test_create_decline_is_final(code: str) -> None:
    result = p.to_result(Call.CREATE, answer(code))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        code,
    )


@pytest.mark.parametrize("code", ["91", "96", "63"])
def test_create_system_error_fails_over(code: str) -> None:
    result = p.to_result(Call.CREATE, answer(code))
    assert (result.outcome, result.decision) == (Outcome.SYSTEM_ERROR, Decision.FAILOVER)
    queried = p.to_result(Call.QUERY, answer(code))
    assert (queried.outcome, queried.decision) == (Outcome.UNKNOWN, Decision.RETRY)
    refunded = p.to_result(Call.REFUND, answer(code))
    assert (refunded.outcome, refunded.decision) == (Outcome.SYSTEM_ERROR, Decision.RETRY)


def test_unknown_code_is_unknown() -> None:
    result = p.to_result(Call.CREATE, answer("Z9"))
    assert (result.outcome, result.decision) == (Outcome.UNKNOWN, Decision.RETRY)


def test_query_states() -> None:
    paid = p.to_result(Call.QUERY, answer("00", order=order("SUCCESS")))
    assert paid.outcome is Outcome.SUCCEEDED
    assert (paid.amount, paid.currency) == (1999, "CNY")
    in_hkd = p.to_result(Call.QUERY, answer("00", order=order("SUCCESS", currency="HKD")))
    assert (in_hkd.amount, in_hkd.currency) == (1999, "HKD")  # the order's own, never assumed
    assert paid.paid_at == datetime(2024, 5, 1, 4, 1, tzinfo=UTC)
    processing = p.to_result(Call.QUERY, answer("00", order=order("PROCESSING", "09")))
    assert processing.outcome is Outcome.WAITING and processing.next_action is None
    declined = p.to_result(Call.QUERY, answer("00", order=order("FAILED", "51")))
    assert (declined.outcome, declined.channel_code) == (Outcome.FAILED, "51")
    closed = p.to_result(Call.QUERY, answer("00", order=order("CLOSED")))
    assert (closed.outcome, closed.channel_code) == (Outcome.FAILED, "CLOSED")
    missing = p.to_result(Call.QUERY, answer("25"))
    assert (missing.outcome, missing.decision) == (Outcome.FAILED, Decision.FINAL)


def test_close_results() -> None:
    closed = p.to_result(Call.CLOSE, answer("00", order=order("CLOSED")))
    assert closed.outcome is Outcome.SUCCEEDED
    paid = p.to_result(Call.CLOSE, answer("12", order=order("SUCCESS")))
    assert (paid.outcome, paid.channel_code) == (Outcome.FAILED, "12")
    busy = p.to_result(Call.CLOSE, answer("09", order=order("PROCESSING", "09")))
    assert (busy.outcome, busy.decision) == (Outcome.FAILED, Decision.RETRY)
    cancelled = p.to_result(Call.CLOSE, answer("00", order=order("FAILED", "17")))
    assert (cancelled.outcome, cancelled.channel_code) == (Outcome.FAILED, "17")
    error = p.to_result(Call.CLOSE, answer("96"))
    assert error.outcome is Outcome.UNKNOWN


def refund(status: str) -> dict[str, Any]:
    return {
        "refund_no": "re_1",
        "refund_txn_id": "R1",
        "order_no": "pay_a_1",
        "amount": 500,
        "currency": "CNY",
        "status": status,
        "resp_code": "00",
        "created_time": "2024-05-01T13:00:00+08:00",
        "refunded_time": "2024-05-01T13:00:00+08:00" if status == "SUCCESS" else None,
    }


def test_refund_results() -> None:
    done = p.to_result(Call.REFUND, answer("00", refund=refund("SUCCESS")))
    assert (done.outcome, done.channel_trade_no, done.amount) == (Outcome.SUCCEEDED, "R1", 500)
    assert done.currency == "CNY"
    queried = p.to_result(Call.REFUND_QUERY, answer("00", refund=refund("SUCCESS") | {
        "currency": "USD"}))  # fmt: skip
    assert (queried.outcome, queried.amount, queried.currency) == (Outcome.SUCCEEDED, 500, "USD")
    waiting = p.to_result(Call.REFUND_QUERY, answer("00", refund=refund("PROCESSING")))
    assert waiting.outcome is Outcome.WAITING
    for code in ("12", "13", "94"):
        refused = p.to_result(Call.REFUND, answer(code))
        assert (refused.outcome, refused.decision) == (Outcome.FAILED, Decision.FINAL)
    missing = p.to_result(Call.REFUND_QUERY, answer("25"))
    assert missing.outcome is Outcome.FAILED


def test_notifications_map_to_results() -> None:
    pay = p.PaymentNotification.model_validate(
        {
            "notify_type": "PAYMENT",
            "notify_id": "N1",
            "notify_time": "2024-05-01T12:01:01+08:00",
            "merchant_id": "M1",
            "order_no": "pay_a_1",
            "txn_id": "B1",
            "amount": 1999,
            "currency": "CNY",
            "status": "SUCCESS",
            "resp_code": "00",
            "paid_time": "2024-05-01T12:01:00+08:00",
        }
    )
    note = p.notification_to_result(pay, {})
    assert note.kind is NotificationKind.PAYMENT and note.channel_order_id == "pay_a_1"
    assert (note.result.outcome, note.result.channel_trade_no, note.result.amount) == (
        Outcome.SUCCEEDED,
        "B1",
        1999,
    )
    assert (note.result.currency, note.notification_id) == ("CNY", "N1")
    declined = p.notification_to_result(
        pay.model_copy(update={"status": p.OrderStatus.FAILED, "resp_code": "05"}), {}
    )
    assert (declined.result.outcome, declined.result.channel_code) == (Outcome.FAILED, "05")
    ref = p.RefundNotification.model_validate(
        {
            "notify_type": "REFUND",
            "notify_id": "N2",
            "notify_time": "2024-05-01T13:00:01+08:00",
            "merchant_id": "M1",
            "order_no": "pay_a_1",
            "txn_id": "B1",
            "refund_no": "re_1",
            "refund_txn_id": "R1",
            "amount": 500,
            "currency": "CNY",
            "status": "SUCCESS",
            "resp_code": "00",
        }
    )
    rnote = p.notification_to_result(ref, {})
    assert rnote.kind is NotificationKind.REFUND and rnote.channel_refund_id == "re_1"
    assert rnote.result.outcome is Outcome.SUCCEEDED and rnote.result.amount == 500
    assert (rnote.result.currency, rnote.notification_id) == ("CNY", "N2")


def test_a_notification_is_fresh_within_five_minutes_either_way() -> None:
    now = 1714536125.0
    assert p.NOTIFICATION_WINDOW_S == 300
    assert p.notification_fresh("1714536125", now)
    assert p.notification_fresh("1714535825", now)  # 300 s old
    assert p.notification_fresh("1714536425", now)  # 300 s ahead
    assert not p.notification_fresh("1714535824", now)
    assert not p.notification_fresh("1714536426", now)
    for malformed in ("", "-5", "1714536125.0", "１７１４", "9" * 13):
        assert not p.notification_fresh(malformed, now), malformed


def test_amounts_must_be_integers() -> None:
    bad = order("SUCCESS", amount="19.99")
    with pytest.raises(ValueError):
        p.ApiAnswer.model_validate({"resp_code": "00", "order": bad})


# ---- statement ----------------------------------------------------------------------------


def test_statement_rows_parse() -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(p.STATEMENT_COLUMNS)
    at = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)
    writer.writerow(
        p.statement_row(
            record_type="PAYMENT",
            order_no="pay_a_1",
            txn_id="B1",
            currency="CNY",
            amount=1999,
            fee=12,
            status="SUCCESS",
            resp_code="00",
            trans_time=at,
        )
    )
    writer.writerow(
        p.statement_row(
            record_type="REFUND",
            order_no="pay_a_1",
            txn_id="B1",
            refund_no="re_1",
            refund_txn_id="R1",
            currency="CNY",
            amount=500,
            fee=0,
            status="SUCCESS",
            resp_code="00",
            trans_time=at,
        )
    )
    writer.writerow(p.summary_row(2, 1999, 500))
    text = out.getvalue()
    assert "PAYMENT,pay_a_1,B1,,,CNY,19.99,0.12,SUCCESS,00,2024-05-01T12:00:00+08:00" in text
    rows = list(csv.reader(io.StringIO(text)))
    lines = [line for row in rows if (line := p.parse_statement_row(row))]
    assert [(x.kind, x.amount, x.status) for x in lines] == [
        (StatementKind.PAYMENT, 1999, "succeeded"),
        (StatementKind.REFUND, 500, "succeeded"),
    ]
    assert lines[1].channel_refund_id == "re_1" and lines[1].channel_trade_no == "R1"
    assert lines[0].occurred_at == at
    assert p.parse_summary_row(rows[-1]) == 2
    with pytest.raises(ValueError):
        p.parse_statement_row(["PAYMENT", "x"])
    with pytest.raises(ValueError):
        p.parse_statement_row(["BOGUS", *[""] * 10])


# ---- adapter configuration ----------------------------------------------------------------


def test_adapter_config_is_validated() -> None:
    from pydantic import ValidationError

    from adapters.bank.adapter import BankConfig

    good = {
        "base_url": "http://127.0.0.1:8080/sim/bank/",
        "merchant_id": "M100200300",
        "merchant_private_key": "keys/bank/merchant_private.pem",
        "bank_public_key": "keys/bank/bank_public.pem",
    }
    config = BankConfig.model_validate(good)
    assert config.base_url == "http://127.0.0.1:8080/sim/bank"
    assert (config.timeout_ms, config.max_attempts) == (5000, 2)
    for bad in (
        {**good, "unknown": 1},
        {**good, "base_url": "ftp://bank"},
        {**good, "base_url": "http://bank/x?y=1"},
        {k: v for k, v in good.items() if k != "merchant_id"},
        {**good, "timeout_ms": 0},
    ):
        with pytest.raises(ValidationError):
            BankConfig.model_validate(bad)


def test_the_simulated_bank_remembers_nonces_for_its_window_only() -> None:
    window = NonceWindow(900.0)
    assert window.use("n1", 0.0) and window.use("n2", 100.0)
    assert not window.use("n1", 899.0)  # a replay inside the window
    assert window.use("n1", 900.0)  # forgotten once the window has passed: fresh again
    assert not window.use("n2", 999.0)
    assert window.use("n2", 1000.0)
    # old nonces are dropped as time passes, not kept forever
    for i in range(1000):
        window.use(f"burst-{i}", 2000.0 + i / 1000)
    assert len(window) == 1000  # the burst only: n1 and n2 (last used at 900, 1000) left
    window.use("later", 4000.0)
    assert len(window) == 1
