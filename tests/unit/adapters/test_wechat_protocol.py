"""The WeChat Pay v3 protocol: signatures against fixed vectors made with the committed dev
keys (RSASSA-PKCS1-v1_5 is deterministic), cross-checked with the real `wechatpayv3` SDK's own
functions; AEAD_AES_256_GCM; the error table and result mapping; amounts and the trade bill."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from wechatpayv3 import utils as sdk

from adapters.base import Decision, Outcome, StatementKind
from adapters.chinatime import china_date
from adapters.kernel import crypto
from adapters.kernel.calls import Call
from adapters.wechat import bill, envelope
from adapters.wechat import protocol as p

KEYS = Path(__file__).resolve().parents[3] / "config" / "keys" / "wechat"
MERCHANT_KEY = crypto.load_private_key((KEYS / "apiclient_key.pem").read_bytes())
MERCHANT_CERT = x509.load_pem_x509_certificate((KEYS / "apiclient_cert.pem").read_bytes())
PLATFORM_KEY = crypto.load_private_key((KEYS / "platform_key.pem").read_bytes())
PLATFORM_CERT = x509.load_pem_x509_certificate((KEYS / "platform_cert.pem").read_bytes())
PLATFORM_SERIAL = envelope.serial_hex(PLATFORM_CERT.serial_number)
PLATFORM = {PLATFORM_CERT.serial_number: crypto.certificate_key(PLATFORM_CERT)}
APIV3 = (KEYS / "apiv3_key.txt").read_text().strip().encode()

BODY = (
    b'{"appid":"wxd678efh567hg6787","mchid":"1900000109","description":"Order A1001",'
    b'"out_trade_no":"pay_A1001_1","notify_url":"https://gw.example/notify/wechat",'
    b'"amount":{"total":1999,"currency":"CNY"}}'
)
NONCE = "593BEC0C930BF1AFEB40B4A08C8FB242"
TS = "1700000000"
REQUEST_SIGNATURE = (
    "dlkZ0udIZhk8u19YJOSo2OBp0+93uJe/gHBJKjsgIa7XNaLidoi+v9S+JLRs1Fd+3Hre0yrYt5DSu4I2oB/0vhG5JRMf"
    "j97WJbclJKgFFEzqOjgPliZwaYsNIaUakr+4fVvRRcw0j4Xc4AbHmx5OTo8QOAATPwlGwNoU2uz/gilG7oe9CqZtE8KC"
    "s/elWSsi2DliAN31N0nCx7//uGAjXP+AYWGU8VAOTq1bWb11qd+w613gKSr7TA4IZl3yeEfOdsqk/4pUQc5/sla8/SNi"
    "jvvN2HArPnQLt5h5sfoP9LqTuURYiEjwgOXYOQ6k++gMzHKgx07+z9p2mb5bPSS2Zg=="
)
RESPONSE_BODY = b'{"code_url":"weixin://wxpay/bizpayurl?pr=p4lpSuKzz"}'
RESPONSE_NONCE = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
RESPONSE_SIGNATURE = (
    "cFIVk3O2UoV+aNrCCRAHRy+9wlvUwEZFS+nG9XgjPk/OvvE/Ata8kHhnzQs37np0RjK/6vCBfWs9TaCRH7TJW43LX+A9"
    "kfsvOSJXmjv7mVN7+xNSfVY0vjza0IbOhSj6i9/FpnoH1JNusx+rNYmCLRJVOPa2pSmWTa03OALI7ZLR7CYAjM178gGV"
    "nwP21ebjoZkm2EPIdP0zrY2xkSwoVUDyKp1GI+YjVi7npm4Qnywyk5j84iA+Nwu3LBQN4es5cA6HXDxA6dtqv44Q0vXh"
    "5BoaDnMeNQbw+ZAt/e0EFSP9f8dNmgd5p2wj5CXvI4+otziooMeyTfv8iTq+CaaVhg=="
)
AEAD_NONCE = "fdasflkja484"
AEAD_PLAIN = '{"out_trade_no":"pay_A1001_1","trade_state":"SUCCESS"}'
AEAD_CIPHERTEXT = (
    "m4jbDCAafvvXGsIrcZ0skjHLS/+ggV5X5eJxcCDTokUEFZQYfl1T8jfxwTSKdfPXLAm7m+x4XygWhJM5NEtvFBpF6Pap"
    "KQ=="
)


# ---- request signatures ------------------------------------------------------------------


def test_request_signature_fixed_vector() -> None:
    message = envelope.request_message("POST", "/v3/pay/transactions/native", TS, NONCE, BODY)
    assert message == b"POST\n/v3/pay/transactions/native\n" + TS.encode() + b"\n" + (
        NONCE.encode() + b"\n" + BODY + b"\n"
    )
    assert crypto.rsa_sign(MERCHANT_KEY, message) == REQUEST_SIGNATURE
    public = crypto.certificate_key(MERCHANT_CERT)
    assert crypto.rsa_verify(public, message, REQUEST_SIGNATURE)
    tampered = message.replace(b"1999", b"1998")
    assert not crypto.rsa_verify(public, tampered, REQUEST_SIGNATURE)
    assert not crypto.rsa_verify(public, message, "not base64!")


def test_authorization_header_round_trip_and_matches_the_sdk() -> None:
    header = envelope.build_authorization(
        mchid="1900000109",
        serial_no="ABC123",
        private_key=MERCHANT_KEY,
        method="POST",
        url="/v3/pay/transactions/native",
        body=BODY,
        timestamp=int(TS),
        nonce=NONCE,
    )
    assert header.startswith("WECHATPAY2-SHA256-RSA2048 mchid=")
    auth = envelope.parse_authorization(header)
    assert (auth.mchid, auth.serial_no, auth.timestamp, auth.nonce_str) == (
        "1900000109",
        "ABC123",
        TS,
        NONCE,
    )
    assert auth.signature == REQUEST_SIGNATURE
    # The SDK builds the header with its own code (its own parameter order): same message
    # rule, so our parser reads it and the signature verifies.
    sdk_header = sdk.build_authorization(
        "/v3/pay/transactions/native",
        "POST",
        "1900000109",
        "ABC123",
        MERCHANT_KEY,
        data=BODY.decode(),
        nonce_str=NONCE,
    )
    sdk_auth = envelope.parse_authorization(sdk_header)
    message = envelope.request_message(
        "POST", "/v3/pay/transactions/native", sdk_auth.timestamp, NONCE, BODY
    )
    assert crypto.rsa_verify(crypto.certificate_key(MERCHANT_CERT), message, sdk_auth.signature)


@pytest.mark.parametrize(
    "header",
    [
        "",
        'Bearer mchid="1"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="1",serial_no="A"',
        'WECHATPAY2-SHA256-RSA2048 mchid="1",nonce_str="n",timestamp="x",serial_no="A",'
        'signature="s"',
        "WECHATPAY2-SHA256-RSA2048 mchid=1",
    ],
)
def test_malformed_authorization_is_refused(header: str) -> None:
    with pytest.raises(envelope.SignatureError):
        envelope.parse_authorization(header)


# ---- response / notification signatures ----------------------------------------------------


def _headers(signature: str = RESPONSE_SIGNATURE, serial: str = PLATFORM_SERIAL) -> dict[str, str]:
    return {
        "Wechatpay-Timestamp": TS,
        "Wechatpay-Nonce": RESPONSE_NONCE,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": envelope.SCHEMA,
    }


def test_response_signature_fixed_vector() -> None:
    headers = envelope.sign_headers(
        PLATFORM_KEY, PLATFORM_SERIAL, RESPONSE_BODY, timestamp=int(TS), nonce=RESPONSE_NONCE
    )
    assert headers == _headers()
    assert (
        envelope.verify_headers(headers, RESPONSE_BODY, PLATFORM, now=int(TS) + 10)
        == PLATFORM_SERIAL
    )
    # The SDK's own verification agrees.
    assert sdk.rsa_verify(
        TS,
        RESPONSE_NONCE,
        RESPONSE_BODY.decode(),
        RESPONSE_SIGNATURE,
        PLATFORM[PLATFORM_CERT.serial_number],
    )


def test_response_signature_rejections() -> None:
    now = int(TS)
    with pytest.raises(envelope.SignatureError, match="does not verify"):
        envelope.verify_headers(
            _headers(), RESPONSE_BODY.replace(b"p4l", b"p5l"), PLATFORM, now=now
        )
    with pytest.raises(envelope.SignatureError, match="unknown"):
        envelope.verify_headers(_headers(serial="0123ABCD"), RESPONSE_BODY, PLATFORM, now=now)
    with pytest.raises(envelope.SignatureError, match="window"):
        envelope.verify_headers(_headers(), RESPONSE_BODY, PLATFORM, now=now + 301)
    missing = _headers()
    del missing["Wechatpay-Signature"]
    with pytest.raises(envelope.SignatureError, match="missing"):
        envelope.verify_headers(missing, RESPONSE_BODY, PLATFORM, now=now)
    # Header names are matched without regard to case; serials likewise.
    lower = {k.lower(): v for k, v in _headers(serial=PLATFORM_SERIAL.lower()).items()}
    assert envelope.verify_headers(lower, RESPONSE_BODY, PLATFORM, now=now)


# ---- AEAD_AES_256_GCM ----------------------------------------------------------------------


def test_aes_gcm_fixed_vector_and_sdk_decrypts_it() -> None:
    assert envelope.aes_gcm_encrypt(APIV3, AEAD_NONCE, "transaction", AEAD_PLAIN) == AEAD_CIPHERTEXT
    assert envelope.aes_gcm_decrypt(APIV3, AEAD_NONCE, "transaction", AEAD_CIPHERTEXT) == AEAD_PLAIN
    assert sdk.aes_decrypt(AEAD_NONCE, AEAD_CIPHERTEXT, "transaction", APIV3.decode()) == AEAD_PLAIN
    with pytest.raises(envelope.DecryptError):
        envelope.aes_gcm_decrypt(APIV3, AEAD_NONCE, "refund", AEAD_CIPHERTEXT)  # other AAD
    with pytest.raises(envelope.DecryptError):
        envelope.aes_gcm_decrypt(b"x" * 32, AEAD_NONCE, "transaction", AEAD_CIPHERTEXT)
    with pytest.raises(envelope.DecryptError):
        envelope.aes_gcm_decrypt(APIV3, AEAD_NONCE, "transaction", "!!!")


def test_notification_round_trip() -> None:
    resource = {"mchid": "1900000109", "out_trade_no": "o1", "trade_state": "SUCCESS"}
    body = envelope.build_notification(
        apiv3_key=APIV3,
        event_id="EV-1",
        create_time=datetime(2024, 5, 1, 1, 2, 3, tzinfo=UTC),
        event_type=p.EVENT_TRANSACTION_SUCCESS,
        summary="支付成功",
        original_type="transaction",
        resource=resource,
    )
    opened = envelope.open_notification(body, APIV3)
    assert opened.event_id == "EV-1" and opened.event_type == "TRANSACTION.SUCCESS"
    assert opened.resource == resource
    assert b'"create_time":"2024-05-01T09:02:03+08:00"' in body
    with pytest.raises(envelope.DecryptError):
        envelope.open_notification(body, b"y" * 32)
    with pytest.raises(ValueError):
        envelope.open_notification(b"[]", APIV3)


# ---- ids, times, amounts -----------------------------------------------------------------


def test_out_trade_no_rules() -> None:
    assert p.out_trade_no_for("pay_0123456789abcdefghjkmnpq", 1) == "pay_0123456789abcdefghjkmnpq_1"
    long = p.out_trade_no_for("pay_" + "x" * 40, 12)
    assert len(long) <= 32 and long.endswith("_12") and p.OUT_TRADE_NO_RE.fullmatch(long)
    assert long == p.out_trade_no_for("pay_" + "x" * 40, 12)  # stable
    assert long != p.out_trade_no_for("pay_" + "y" * 40, 12)
    assert p.OUT_TRADE_NO_RE.fullmatch(p.out_trade_no_for("p", 1))  # too short -> digest
    assert p.out_refund_no_for("re_abc") == "re_abc"
    assert p.OUT_REFUND_NO_RE.fullmatch(p.out_refund_no_for("re/with/slashes"))


def test_times_are_china_time() -> None:
    moment = datetime(2024, 1, 31, 17, 30, tzinfo=UTC)
    assert envelope.format_time(moment) == "2024-02-01T01:30:00+08:00"
    assert envelope.parse_time("2024-02-01T01:30:00+08:00") == moment
    assert china_date(moment) == date(2024, 2, 1)
    with pytest.raises(ValueError):
        envelope.parse_time("2024-02-01T01:30:00")


def test_serials() -> None:
    assert len(PLATFORM_SERIAL) == 40 and set(PLATFORM_SERIAL) <= set("0123456789ABCDEF")
    assert envelope.serial_int(PLATFORM_SERIAL.lower()) == PLATFORM_CERT.serial_number
    with pytest.raises(ValueError):
        envelope.serial_int("XYZ")


@pytest.mark.parametrize(
    ("text", "fen"),
    [("0.01", 1), ("19.99", 1999), ("-0.12", -12), ("1.00000", 100), ("0.00500", 1), ("12", 1200)],
)
def test_bill_amounts(text: str, fen: int) -> None:
    assert bill.yuan(text) == fen


@given(st.integers(min_value=-(10**11), max_value=10**11))
def test_fen_text_round_trips(fen: int) -> None:
    assert bill.yuan(bill.fen_text(fen)) == fen


def test_bad_bill_amount() -> None:
    with pytest.raises(bill.StatementError):
        bill.yuan("1,00")


# ---- the error table and result mapping --------------------------------------------------


def test_every_real_code_is_in_the_table() -> None:
    assert set(p.ERROR_HTTP_STATUS) <= set(p.ERROR_TABLE)
    assert p.ERROR_TABLE[p.SYSTEM_ERROR] is Decision.FAILOVER
    assert p.ERROR_TABLE[p.PARAM_ERROR] is Decision.FINAL
    assert p.ERROR_TABLE[p.MALFORMED_RESPONSE] is Decision.RETRY
    # answers that never came are the kernel's to judge, under WeChat's codes
    own = {p.TIMEOUT, p.CONNECTION_REFUSED, p.CONNECTION_ERROR, p.INVALID_SIGNATURE}
    assert own <= set(p.RULES.failure_codes.values())
    assert not own & set(p.ERROR_TABLE)
    assert p.decision_for("SOMETHING_NEW", 503) is Decision.FAILOVER
    assert p.decision_for("SOMETHING_NEW", 400) is Decision.FINAL


@pytest.mark.parametrize(
    ("op", "code", "status", "outcome", "decision"),
    [
        (Call.CREATE, p.SYSTEM_ERROR, 500, Outcome.SYSTEM_ERROR, Decision.FAILOVER),
        (Call.CREATE, p.FREQUENCY_LIMITED, 429, Outcome.SYSTEM_ERROR, Decision.FAILOVER),
        (Call.CREATE, p.SIGN_ERROR, 401, Outcome.SYSTEM_ERROR, Decision.FAILOVER),
        (Call.CREATE, p.PARAM_ERROR, 400, Outcome.FAILED, Decision.FINAL),
        (Call.CREATE, p.ORDERPAID, 400, Outcome.FAILED, Decision.FINAL),
        (Call.CREATE, p.MALFORMED_RESPONSE, 200, Outcome.UNKNOWN, Decision.RETRY),
        (Call.CREATE, p.METHOD_NOT_SUPPORTED, None, Outcome.SYSTEM_ERROR, Decision.FAILOVER),
        (Call.QUERY, p.ORDER_NOT_EXIST, 404, Outcome.FAILED, Decision.FINAL),
        (Call.QUERY, p.SYSTEM_ERROR, 500, Outcome.UNKNOWN, Decision.RETRY),
        (Call.CLOSE, p.ORDERPAID, 400, Outcome.FAILED, Decision.FINAL),
        (Call.CLOSE, p.ORDER_CLOSED, 400, Outcome.SUCCEEDED, Decision.FINAL),
        (Call.CLOSE, p.SYSTEM_ERROR, 500, Outcome.UNKNOWN, Decision.RETRY),
        (Call.REFUND, p.NOT_ENOUGH, 403, Outcome.FAILED, Decision.FINAL),
        (Call.REFUND, p.SYSTEM_ERROR, 500, Outcome.UNKNOWN, Decision.RETRY),
        (Call.REFUND, p.FREQUENCY_LIMITED, 429, Outcome.SYSTEM_ERROR, Decision.RETRY),
        (Call.REFUND_QUERY, p.RESOURCE_NOT_EXISTS, 404, Outcome.FAILED, Decision.FINAL),
    ],
)
def test_error_mapping(
    op: Call, code: str, status: int | None, outcome: Outcome, decision: Decision
) -> None:
    result = p.map_error(op, status, code, "message")
    assert (result.outcome, result.decision, result.channel_code) == (outcome, decision, code)
    assert result.channel_message == "message"


def _transaction(state: str, **extra: object) -> dict[str, object]:
    return {
        "out_trade_no": "o1",
        "trade_state": state,
        "amount": {"total": 1999, "currency": "CNY"},
        **extra,
    }


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("SUCCESS", Outcome.SUCCEEDED),
        ("REFUND", Outcome.SUCCEEDED),
        ("NOTPAY", Outcome.WAITING),
        ("USERPAYING", Outcome.WAITING),
        ("CLOSED", Outcome.FAILED),
        ("REVOKED", Outcome.FAILED),
        ("PAYERROR", Outcome.FAILED),
        ("SOMETHING", Outcome.UNKNOWN),
    ],
)
def test_transaction_mapping(state: str, outcome: Outcome) -> None:
    result = p.map_transaction(_transaction(state))
    assert result.outcome is outcome
    if outcome is not Outcome.UNKNOWN:
        assert result.channel_code == state and result.amount == 1999


def test_paid_transaction_carries_trade_no_and_time() -> None:
    result = p.map_transaction(
        _transaction(
            "SUCCESS",
            transaction_id="4200000000202401010000000001",
            success_time="2024-01-01T10:00:00+08:00",
        )
    )
    assert result.channel_trade_no == "4200000000202401010000000001"
    assert result.paid_at == datetime(2024, 1, 1, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "status", "outcome"),
    [
        ("status", "SUCCESS", Outcome.SUCCEEDED),
        ("refund_status", "SUCCESS", Outcome.SUCCEEDED),
        ("status", "PROCESSING", Outcome.WAITING),
        ("status", "ABNORMAL", Outcome.FAILED),
        ("status", "CLOSED", Outcome.FAILED),
        ("status", "??", Outcome.UNKNOWN),
    ],
)
def test_refund_mapping(field: str, status: str, outcome: Outcome) -> None:
    result = p.map_refund({field: status, "refund_id": "50001", "amount": {"refund": 400}})
    assert result.outcome is outcome
    if outcome is not Outcome.UNKNOWN:
        assert (result.amount, result.channel_trade_no) == (400, "50001")


def test_create_mapping() -> None:
    result = p.map_create({"code_url": "weixin://wxpay/bizpayurl?pr=abc"})
    assert result.outcome is Outcome.WAITING and result.next_action is not None
    assert (result.next_action.type, result.next_action.url) == (
        "qr_code",
        "weixin://wxpay/bizpayurl?pr=abc",
    )
    assert p.map_create({}).outcome is Outcome.UNKNOWN


# ---- the trade bill ----------------------------------------------------------------------


def _bill() -> str:
    w = bill.BillWriter()
    paid = datetime(2024, 3, 1, 2, 0, tzinfo=UTC)
    lines = [
        w.header(),
        w.payment(
            bill.BillPayment(
                paid_at=paid,
                appid="wx1",
                mchid="1900000109",
                transaction_id="4200000001",
                out_trade_no="pay_1_1",
                openid="oABC",
                trade_state="SUCCESS",
                amount=1999,
                description="Order, with a comma",
            )
        ),
        w.refund(
            bill.BillRefund(
                refunded_at=paid + timedelta(hours=1),
                appid="wx1",
                mchid="1900000109",
                transaction_id="4200000001",
                out_trade_no="pay_1_1",
                openid="oABC",
                refund_id="5000001",
                out_refund_no="re_1",
                refund=500,
                refund_status="SUCCESS",
                description="Order",
            )
        ),
        *w.totals(),
    ]
    return "\r\n".join(lines) + "\r\n"


def test_bill_is_in_the_real_format() -> None:
    text = _bill()
    rows = text.splitlines()
    assert rows[0].startswith("交易时间,公众账号ID,商户号")
    assert rows[1].startswith("`2024-03-01 10:00:00,`wx1,`1900000109,")
    assert rows[-2].startswith("总交易单数,")
    assert rows[-1] == "`2,`19.99,`5.00,`0.00,`0.09,`19.99,`5.00"


def test_bill_parses_into_statement_lines() -> None:
    payment, refund = bill.parse_bill(("\ufeff" + _bill()).splitlines(keepends=True))
    assert payment.kind is StatementKind.PAYMENT
    assert (payment.channel_order_id, payment.channel_trade_no, payment.amount) == (
        "pay_1_1",
        "4200000001",
        1999,
    )
    assert (payment.status, payment.fee) == ("success", 12)
    assert payment.occurred_at == datetime(2024, 3, 1, 2, 0, tzinfo=UTC)
    assert refund.kind is StatementKind.REFUND
    assert (refund.channel_refund_id, refund.amount, refund.status, refund.fee) == (
        "re_1",
        500,
        "success",
        -3,
    )


def test_bill_totals_must_agree() -> None:
    lines = _bill().splitlines()
    lines[-1] = lines[-1].replace("`2,", "`3,", 1)
    with pytest.raises(bill.StatementError, match="rows"):
        list(bill.parse_bill(lines))
    lines = _bill().splitlines()
    del lines[-2:]
    with pytest.raises(bill.StatementError, match="totals"):
        list(bill.parse_bill(lines))
    with pytest.raises(bill.StatementError):
        list(bill.parse_bill(["not,a,bill"]))
