"""The Alipay wire protocol, pure: RSA2 signatures against fixed vectors made with the committed
development keys, response-node extraction, amounts, the error table, result mapping,
notifications and the bill format. No network."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.alipay import bill
from adapters.alipay import protocol as p
from adapters.base import Decision, NotificationKind, NotificationRejected, Outcome, StatementKind
from adapters.chinatime import china_date
from adapters.kernel.crypto import load_private_key, load_public_key

KEYS = Path(__file__).resolve().parents[3] / "config" / "keys" / "alipay"
APP_PRIVATE = load_private_key((KEYS / "app_private_key.pem").read_bytes())
APP_PUBLIC = load_public_key((KEYS / "app_public_key.pem").read_bytes())
ALIPAY_PRIVATE = load_private_key((KEYS / "alipay_private_key.pem").read_bytes())
ALIPAY_PUBLIC = load_public_key((KEYS / "alipay_public_key.pem").read_bytes())

VECTOR_PARAMS = {
    "app_id": "2021000000000001",
    "method": "alipay.trade.query",
    "format": "JSON",
    "charset": "utf-8",
    "sign_type": "RSA2",
    "timestamp": "2026-01-02 03:04:05",
    "version": "1.0",
    "biz_content": '{"out_trade_no":"pay_abc_1"}',
    "notify_url": "",
}
VECTOR_CONTENT = (
    'app_id=2021000000000001&biz_content={"out_trade_no":"pay_abc_1"}&charset=utf-8'
    "&format=JSON&method=alipay.trade.query&sign_type=RSA2&timestamp=2026-01-02 03:04:05"
    "&version=1.0"
)
# SHA256withRSA (PKCS#1 v1.5, deterministic) of VECTOR_CONTENT with the committed app key
VECTOR_SIGNATURE = (
    "rlLxPWgPuig/h4//N2hcCc1gZSwmm+/nDgN5iK7j82cO2JmDD1IgwTCUvKscsLQ04XiWmknrTeq0L1izqcBjqvQ+"
    "KGxlbVh/FriD0Hs/sM8eWxRJmHi37MM7UV9p3jsKoCNWZqUwj3fdooE1/GZbJumHXtBGt8ofeo8OI+BZeMyaLLpU"
    "lxGMfze5t0/34Fma5eHaMzyecb0l/Fys//nxxI+9UlZgRNyFZ5KxGnAIkk1G1M+Osoz7Z1HOx+xoODsb2Tg6FDrD"
    "e1uqUliKRHuSLmgDV8GXzchkJlpoQuXqwnI0HSmuFtdG7bu7iWuUg8TkfurQX0b/e4rtVECQMpX5Ow=="
)
# a response as the committed Alipay dev key signs it
VECTOR_RESPONSE = (
    '{"alipay_trade_precreate_response":{"code":"10000","msg":"Success",'
    '"out_trade_no":"pay_abc_1","qr_code":"https://qr.alipay.com/bax03431"},'
    '"sign":"nFF6ERhgK8abNCOgv/jNco2HP8lYxcoNRN5rYRjKlXKTef4be8u+9A4JNVdtt891CDN5yYDsw1onUHZt'
    "uCKn6xzwXUrqSzZ5tlOeMLToeVnARtaBzyawk56DkiEDwYT6nlfST8fkeQWA8qwVI5JoxR+Z6dm2ahzJK4WLQhCs"
    "HZJa85k/oX6iQaC9X4WtfVCEPEJpwd7dQ5/wb60sBRIgK6smWKN1ovdJ3GjaaGubgTYaoL/HE9ARziG4x+O8tzge"
    "SFVW3o3kkD+ud7abQam4EizbdhI1xaM5XKRDj2q76TvtjKwwSDx7nI7nhQ+WQ/kEZk9kK3zm4rBGcMA1FK8B4g=="
    '"}'
)


# ---- signatures ----------------------------------------------------------------------------


def test_request_sign_content_sorts_drops_empty_and_sign() -> None:
    assert p.request_sign_content({**VECTOR_PARAMS, "sign": "xyz"}) == VECTOR_CONTENT


def test_fixed_vector_signature() -> None:
    assert p.sign(VECTOR_CONTENT, APP_PRIVATE) == VECTOR_SIGNATURE
    assert p.sign_request(VECTOR_PARAMS, APP_PRIVATE)["sign"] == VECTOR_SIGNATURE
    assert p.verify(VECTOR_CONTENT, VECTOR_SIGNATURE, APP_PUBLIC)


def test_tampered_message_or_signature_fails() -> None:
    assert not p.verify(
        VECTOR_CONTENT.replace("pay_abc_1", "pay_abc_2"), VECTOR_SIGNATURE, APP_PUBLIC
    )
    flipped = ("A" if VECTOR_SIGNATURE[0] != "A" else "B") + VECTOR_SIGNATURE[1:]
    assert not p.verify(VECTOR_CONTENT, flipped, APP_PUBLIC)
    assert not p.verify(VECTOR_CONTENT, "not base64!", APP_PUBLIC)
    # the right signature under the wrong key
    assert not p.verify(VECTOR_CONTENT, VECTOR_SIGNATURE, ALIPAY_PUBLIC)


def test_verify_request_checks_every_parameter() -> None:
    signed = p.sign_request(VECTOR_PARAMS, APP_PRIVATE)
    assert p.verify_request(signed, APP_PUBLIC)
    assert not p.verify_request({**signed, "timestamp": "2026-01-02 03:04:06"}, APP_PUBLIC)
    # sign_type is covered by a request signature
    assert not p.verify_request({**signed, "sign_type": "RSA"}, APP_PUBLIC)
    # an empty value does not count, a new non-empty one does
    assert p.verify_request({**signed, "return_url": ""}, APP_PUBLIC)
    assert not p.verify_request({**signed, "return_url": "x"}, APP_PUBLIC)
    assert not p.verify_request({k: v for k, v in signed.items() if k != "sign"}, APP_PUBLIC)


def test_bare_base64_keys_as_the_console_shows_them() -> None:
    def bare(name: str) -> bytes:
        lines = (KEYS / name).read_text().strip().splitlines()
        return "".join(lines[1:-1]).encode()

    private = load_private_key(bare("app_private_key.pem"))
    public = load_public_key(bare("app_public_key.pem"))
    assert p.sign(VECTOR_CONTENT, private) == VECTOR_SIGNATURE
    assert p.verify(VECTOR_CONTENT, VECTOR_SIGNATURE, public)
    with pytest.raises(ValueError):
        load_public_key(b"not a key")


@settings(max_examples=20, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
        st.text(min_size=0, max_size=30),
        max_size=6,
    )
)
def test_request_signature_roundtrip(params: dict[str, str]) -> None:
    params = {k: v for k, v in params.items() if k != "sign"}
    signed = p.sign_request(params, APP_PRIVATE)
    assert p.verify_request(signed, APP_PUBLIC)


def test_notification_signature_excludes_sign_type() -> None:
    fields = {"notify_id": "n1", "out_trade_no": "pay_1", "total_amount": "19.99", "subject": ""}
    signed = p.sign_notification(fields, ALIPAY_PRIVATE)
    assert signed["sign_type"] == "RSA2"
    assert (
        p.notification_sign_content(signed) == "notify_id=n1&out_trade_no=pay_1&total_amount=19.99"
    )
    assert p.verify_notification(signed, ALIPAY_PUBLIC)
    assert p.verify_notification(
        {k: v for k, v in signed.items() if k != "sign_type"}, ALIPAY_PUBLIC
    )
    assert not p.verify_notification({**signed, "total_amount": "0.01"}, ALIPAY_PUBLIC)
    assert not p.verify_notification({**signed, "sign_type": "RSA"}, ALIPAY_PUBLIC)
    assert not p.verify_notification(
        {k: v for k, v in signed.items() if k != "sign"}, ALIPAY_PUBLIC
    )
    # signed by someone else
    forged = p.sign_notification(fields, APP_PRIVATE)
    assert not p.verify_notification(forged, ALIPAY_PUBLIC)


# ---- requests and responses -----------------------------------------------------------------


def test_build_request_has_the_common_parameters() -> None:
    moment = datetime(2026, 1, 1, 20, 30, 0, tzinfo=UTC)  # 04:30 next day in China
    params = p.build_request(
        "2021000000000001",
        p.PRECREATE,
        {"out_trade_no": "pay_1", "total_amount": "19.99", "subject": "订单"},
        moment,
        "https://gw.example/notify/alipay",
    )
    assert params["timestamp"] == "2026-01-02 04:30:00"
    assert params["format"] == "JSON"
    assert params["charset"] == "utf-8"
    assert params["sign_type"] == "RSA2"
    assert params["version"] == "1.0"
    assert params["method"] == "alipay.trade.precreate"
    assert params["notify_url"] == "https://gw.example/notify/alipay"
    assert json.loads(params["biz_content"]) == {
        "out_trade_no": "pay_1",
        "total_amount": "19.99",
        "subject": "订单",
    }
    assert "订单" in params["biz_content"]  # raw UTF-8, as the official SDKs send it


def test_response_key() -> None:
    assert p.response_key("alipay.trade.fastpay.refund.query") == (
        "alipay_trade_fastpay_refund_query_response"
    )


def test_fixed_response_vector_verifies() -> None:
    envelope = p.extract_response(VECTOR_RESPONSE, p.PRECREATE)
    assert envelope.name == "alipay_trade_precreate_response"
    assert envelope.node["qr_code"] == "https://qr.alipay.com/bax03431"
    assert envelope.verify(ALIPAY_PUBLIC)
    assert not envelope.verify(APP_PUBLIC)
    tampered = VECTOR_RESPONSE.replace("bax03431", "bax03432")
    assert not p.extract_response(tampered, p.PRECREATE).verify(ALIPAY_PUBLIC)


def test_extract_response_uses_the_exact_node_text() -> None:
    # pretty-printed, braces inside strings, a nested list, the sign before the node
    node_text = (
        '{ "code" : "10000", "msg":"Success", "sub_msg":"a } b { c",\n'
        '  "fund_bill_list":[{"amount":"1.00","fund_channel":"ALIPAYACCOUNT"}],'
        ' "subject":"\\u8ba2\\u5355" }'
    )
    sig = p.sign(node_text, ALIPAY_PRIVATE)
    body = f'{{ "sign" : "{sig}",\n "alipay_trade_query_response" : {node_text} }}'
    envelope = p.extract_response(body, p.QUERY)
    assert envelope.node_text == node_text
    assert envelope.node["subject"] == "订单"
    assert envelope.verify(ALIPAY_PUBLIC)
    # re-serialising the node would not match the signature
    reserialised = json.dumps(envelope.node, separators=(",", ":"))
    assert not p.verify(reserialised, sig, ALIPAY_PUBLIC)


def test_extract_response_error_response_and_garbage() -> None:
    body = '{"error_response":{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-method"}}'
    envelope = p.extract_response(body, p.QUERY)
    assert envelope.name == "error_response"
    assert envelope.sign is None
    assert not envelope.verify(ALIPAY_PUBLIC)
    for garbage in ("", "[]", "<html>502</html>", '{"other_response":{}}', '{"a":1,'):
        with pytest.raises(p.ResponseFormatError):
            p.extract_response(garbage, p.QUERY)


def test_encode_response_roundtrip() -> None:
    node = {
        "code": "40004",
        "msg": "Business Failed",
        "sub_code": "ACQ.TRADE_NOT_EXIST",
        "sub_msg": "交易不存在",
    }
    body = p.encode_response(p.response_key(p.QUERY), node, ALIPAY_PRIVATE)
    assert "交易不存在" in body  # UTF-8, not \\u escapes, as Alipay sends
    envelope = p.extract_response(body, p.QUERY)
    assert envelope.node == node
    assert envelope.verify(ALIPAY_PUBLIC)
    unsigned = p.encode_response("error_response", node, None)
    assert '"sign"' not in unsigned


# ---- amounts and times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fen"),
    [("19.99", 1999), ("0.01", 1), ("19.9", 1990), ("19", 1900), ("100000000.00", 10_000_000_000)],
)
def test_amount_of(text: str, fen: int) -> None:
    assert p.amount_of({"total_amount": text}, "total_amount") == fen


@pytest.mark.parametrize("bad", ["1.999", "-1.00", "1e3", "", "abc"])
def test_amount_of_rejects(bad: str) -> None:
    if bad == "":
        assert p.amount_of({"x": bad}, "x") is None
        return
    with pytest.raises(ValueError):
        p.amount_of({"x": bad}, "x")


def test_amount_of_refuses_floats() -> None:
    with pytest.raises(ValueError):
        p.amount_of({"x": 19.99}, "x")
    assert p.amount_of({}, "x") is None


@given(st.integers(min_value=0, max_value=10**11))
def test_yuan_roundtrip_through_signed_yuan(fen: int) -> None:
    assert p.amount_of({"x": bill.signed_yuan(fen)}, "x") == fen


def test_times_are_china_time() -> None:
    moment = datetime(2026, 3, 1, 16, 0, 0, 123456, tzinfo=UTC)
    assert p.format_time(moment) == "2026-03-02 00:00:00"
    assert p.format_time_ms(moment) == "2026-03-02 00:00:00.123"
    parsed = p.parse_time("2026-03-02 00:00:00")
    assert parsed == moment.replace(microsecond=0)
    assert p.parse_time("2026-03-02 00:00:00.123") == moment.replace(microsecond=123000)
    assert china_date(moment) == date(2026, 3, 2)
    with pytest.raises(ValueError):
        p.parse_time("2026-03-02T00:00:00")


# ---- error table ------------------------------------------------------------------------------


def test_error_table_covers_the_documented_codes() -> None:
    expected = {
        "20000": Decision.RETRY,
        "20001": Decision.FAILOVER,
        "40001": Decision.FAILOVER,
        "40002": Decision.FAILOVER,
        "40004": Decision.FINAL,
        "ACQ.SYSTEM_ERROR": Decision.RETRY,
        "ACQ.TRADE_NOT_EXIST": Decision.FINAL,
        "ACQ.TRADE_HAS_SUCCESS": Decision.FINAL,
        "ACQ.TRADE_HAS_CLOSE": Decision.FINAL,
        "ACQ.INVALID_PARAMETER": Decision.FINAL,
        "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL": Decision.FINAL,
        "ACQ.SELLER_BALANCE_NOT_ENOUGH": Decision.FINAL,
        "ACQ.TRADE_STATUS_ERROR": Decision.FINAL,
        "isv.invalid-signature": Decision.FAILOVER,
        "isp.unknow-error": Decision.RETRY,
    }
    for code, decision in expected.items():
        assert p.ERROR_TABLE[code] is decision, code


def test_decision_for_prefers_the_sub_code() -> None:
    assert p.decision_for("40004", "ACQ.SYSTEM_ERROR") is Decision.RETRY
    assert p.decision_for("40004", "ACQ.SOMETHING_NEW") is Decision.FINAL
    assert p.decision_for("20000", None) is Decision.RETRY
    assert p.decision_for("29999", None) is Decision.RETRY
    assert p.decision_for("49999", None) is Decision.FINAL
    assert p.is_retryable_answer({"code": "20000", "sub_code": "isp.unknow-error"})
    assert p.is_retryable_answer({"code": "40004", "sub_code": "ACQ.SYSTEM_ERROR"})
    assert not p.is_retryable_answer({"code": "40004", "sub_code": "ACQ.TRADE_NOT_EXIST"})
    assert not p.is_retryable_answer({"code": "10000"})


# ---- result mapping ---------------------------------------------------------------------------


def fail(code: str, sub: str | None = None) -> dict[str, str]:
    node = {"code": code, "msg": p.CODE_MESSAGES.get(code, "x")}
    if sub:
        node.update(sub_code=sub, sub_msg=p.SUB_MESSAGES.get(sub, sub))
    return node


@pytest.mark.parametrize(
    ("call", "node", "outcome", "decision", "code"),
    [
        (
            p.ApiCall.PRECREATE,
            fail("20000", "isp.unknow-error"),
            Outcome.SYSTEM_ERROR,
            Decision.FAILOVER,
            "isp.unknow-error",
        ),
        (
            p.ApiCall.PRECREATE,
            fail("40004", "ACQ.SYSTEM_ERROR"),
            Outcome.SYSTEM_ERROR,
            Decision.FAILOVER,
            "ACQ.SYSTEM_ERROR",
        ),
        (
            p.ApiCall.PRECREATE,
            fail("40002", "isv.invalid-signature"),
            Outcome.SYSTEM_ERROR,
            Decision.FAILOVER,
            "isv.invalid-signature",
        ),
        (
            p.ApiCall.PRECREATE,
            fail("40004", "ACQ.TOTAL_FEE_EXCEED"),
            Outcome.SYSTEM_ERROR,
            Decision.FAILOVER,
            "ACQ.TOTAL_FEE_EXCEED",
        ),
        (
            p.ApiCall.PRECREATE,
            fail("40004", "ACQ.INVALID_PARAMETER"),
            Outcome.FAILED,
            Decision.FINAL,
            "ACQ.INVALID_PARAMETER",
        ),
        (
            p.ApiCall.PRECREATE,
            fail("40004", "ACQ.TRADE_HAS_CLOSE"),
            Outcome.FAILED,
            Decision.FINAL,
            "ACQ.TRADE_HAS_CLOSE",
        ),
        (
            p.ApiCall.PRECREATE,
            fail("40004", "ACQ.TRADE_HAS_SUCCESS"),
            Outcome.UNKNOWN,
            Decision.RETRY,
            "ACQ.TRADE_HAS_SUCCESS",
        ),
        (
            p.ApiCall.QUERY,
            fail("40004", "ACQ.TRADE_NOT_EXIST"),
            Outcome.WAITING,
            Decision.RETRY,
            "ACQ.TRADE_NOT_EXIST",
        ),
        (
            p.ApiCall.QUERY,
            fail("20000", "isp.unknow-error"),
            Outcome.UNKNOWN,
            Decision.RETRY,
            "isp.unknow-error",
        ),
        (
            p.ApiCall.CLOSE,
            fail("40004", "ACQ.TRADE_NOT_EXIST"),
            Outcome.SUCCEEDED,
            Decision.FINAL,
            "ACQ.TRADE_NOT_EXIST",
        ),
        (
            p.ApiCall.CLOSE,
            fail("40004", "ACQ.TRADE_STATUS_ERROR"),
            Outcome.FAILED,
            Decision.FINAL,
            "ACQ.TRADE_STATUS_ERROR",
        ),
        (p.ApiCall.CLOSE, fail("20000"), Outcome.UNKNOWN, Decision.RETRY, "20000"),
        (
            p.ApiCall.REFUND,
            fail("40004", "ACQ.SELLER_BALANCE_NOT_ENOUGH"),
            Outcome.FAILED,
            Decision.FINAL,
            "ACQ.SELLER_BALANCE_NOT_ENOUGH",
        ),
        (
            p.ApiCall.REFUND,
            fail("40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"),
            Outcome.FAILED,
            Decision.FINAL,
            "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
        ),
        (
            p.ApiCall.REFUND,
            fail("40004", "ACQ.SYSTEM_ERROR"),
            Outcome.UNKNOWN,
            Decision.RETRY,
            "ACQ.SYSTEM_ERROR",
        ),
        (
            p.ApiCall.REFUND_QUERY,
            fail("40004", "ACQ.TRADE_NOT_EXIST"),
            Outcome.FAILED,
            Decision.FINAL,
            "ACQ.TRADE_NOT_EXIST",
        ),
        (p.ApiCall.REFUND_QUERY, fail("20000"), Outcome.UNKNOWN, Decision.RETRY, "20000"),
    ],
)
def test_map_failures(
    call: p.ApiCall, node: dict[str, str], outcome: Outcome, decision: Decision, code: str
) -> None:
    result = p.map_response(call, node)
    assert (result.outcome, result.decision, result.channel_code) == (outcome, decision, code)
    assert result.channel_message


def test_map_precreate_success() -> None:
    result = p.map_response(
        p.ApiCall.PRECREATE,
        {"code": "10000", "msg": "Success", "out_trade_no": "o", "qr_code": "https://q/1"},
    )
    assert result.outcome is Outcome.WAITING
    assert result.next_action is not None
    assert (result.next_action.type, result.next_action.url) == ("qr_code", "https://q/1")
    with pytest.raises(ValueError):
        p.map_response(p.ApiCall.PRECREATE, {"code": "10000", "msg": "Success"})


def query_node(status: str, paid: bool) -> dict[str, str]:
    node = {
        "code": "10000",
        "msg": "Success",
        "trade_no": "2026010122001400000000000001",
        "out_trade_no": "o",
        "trade_status": status,
        "total_amount": "19.99",
    }
    if paid:
        node["send_pay_date"] = "2026-01-01 12:00:00"
    return node


@pytest.mark.parametrize(
    ("status", "paid", "outcome"),
    [
        ("WAIT_BUYER_PAY", False, Outcome.WAITING),
        ("TRADE_SUCCESS", True, Outcome.SUCCEEDED),
        ("TRADE_FINISHED", True, Outcome.SUCCEEDED),
        ("TRADE_CLOSED", False, Outcome.FAILED),
        ("TRADE_CLOSED", True, Outcome.SUCCEEDED),  # paid, then fully refunded
    ],
)
def test_map_query(status: str, paid: bool, outcome: Outcome) -> None:
    result = p.map_response(p.ApiCall.QUERY, query_node(status, paid))
    assert result.outcome is outcome
    assert result.channel_code == status
    assert result.amount == 1999
    assert result.channel_trade_no == "2026010122001400000000000001"
    if paid:
        assert result.paid_at == datetime(2026, 1, 1, 4, 0, tzinfo=UTC)


def test_map_query_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        p.map_response(p.ApiCall.QUERY, query_node("PAID", False))
    with pytest.raises(ValueError):
        p.map_response(
            p.ApiCall.QUERY, {**query_node("TRADE_SUCCESS", True), "total_amount": "19.999"}
        )


def test_map_refund_and_refund_query() -> None:
    ok = {
        "code": "10000",
        "msg": "Success",
        "trade_no": "t",
        "fund_change": "Y",
        "refund_fee": "5.00",
        "send_back_fee": "3.00",
    }
    result = p.map_response(p.ApiCall.REFUND, ok)
    assert (result.outcome, result.amount) == (Outcome.SUCCEEDED, 300)
    repeat = p.map_response(p.ApiCall.REFUND, {**ok, "fund_change": "N"})
    assert repeat.outcome is Outcome.WAITING
    found = p.map_response(
        p.ApiCall.REFUND_QUERY,
        {
            "code": "10000",
            "msg": "Success",
            "refund_amount": "3.00",
            "refund_status": "REFUND_SUCCESS",
        },
    )
    assert (found.outcome, found.amount, found.channel_code) == (
        Outcome.SUCCEEDED,
        300,
        "REFUND_SUCCESS",
    )
    # older answers carry no refund_status: a refund_amount means success
    legacy = p.map_response(
        p.ApiCall.REFUND_QUERY, {"code": "10000", "msg": "Success", "refund_amount": "3.00"}
    )
    assert legacy.outcome is Outcome.SUCCEEDED
    missing = p.map_response(
        p.ApiCall.REFUND_QUERY, {"code": "10000", "msg": "Success", "out_trade_no": "o"}
    )
    assert (missing.outcome, missing.decision) == (Outcome.FAILED, Decision.RETRY)


# ---- notifications ----------------------------------------------------------------------------


def notification_fields(**changes: str) -> dict[str, str]:
    fields = {
        "notify_type": "trade_status_sync",
        "notify_id": "ac05099524730693a8b330c5ecf72da9786",
        "notify_time": "2026-01-01 12:00:05",
        "app_id": "2021000000000001",
        "charset": "utf-8",
        "version": "1.0",
        "trade_no": "2026010122001400000000000001",
        "out_trade_no": "pay_1",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "19.99",
        "receipt_amount": "19.99",
        "gmt_payment": "2026-01-01 12:00:00",
    }
    fields.update(changes)
    return fields


def test_notification_payment_success() -> None:
    notification = p.notification_from_fields(notification_fields())
    assert notification.kind is NotificationKind.PAYMENT
    assert notification.channel_order_id == "pay_1"
    result = notification.result
    assert (result.outcome, result.amount, result.channel_trade_no) == (
        Outcome.SUCCEEDED,
        1999,
        "2026010122001400000000000001",
    )
    assert result.paid_at == datetime(2026, 1, 1, 4, 0, tzinfo=UTC)


def test_notification_closed_and_refund() -> None:
    closed = p.notification_from_fields(notification_fields(trade_status="TRADE_CLOSED"))
    assert closed.kind is NotificationKind.PAYMENT
    assert closed.result.outcome is Outcome.FAILED
    refund = p.notification_from_fields(
        notification_fields(
            trade_status="TRADE_CLOSED",
            out_biz_no="re_1",
            refund_fee="19.99",
            gmt_refund="2026-01-02 10:00:00.123",
        )
    )
    assert refund.kind is NotificationKind.REFUND
    assert refund.channel_refund_id == "re_1"
    assert refund.result.outcome is Outcome.SUCCEEDED
    assert refund.result.raw["refund_fee"] == "19.99"


@pytest.mark.parametrize(
    "changes",
    [
        {"notify_type": "other"},
        {"trade_status": "PAID"},
        {"out_trade_no": ""},
        {"total_amount": "19.999"},
    ],
)
def test_notification_rejects(changes: dict[str, str]) -> None:
    with pytest.raises(NotificationRejected):
        p.notification_from_fields(notification_fields(**changes))


def test_parse_form() -> None:
    assert p.parse_form(b"a=1&b=%E8%AE%A2%E5%8D%95&c=") == {"a": "1", "b": "订单", "c": ""}
    assert p.parse_form(b"charset=gbk&b=%B6%A9%B5%A5") == {"charset": "gbk", "b": "订单"}
    with pytest.raises(ValueError):
        p.parse_form(b"a=1&a=2")
    with pytest.raises(ValueError):
        p.parse_form("a=订单".encode())
    with pytest.raises(ValueError):
        p.parse_form(b"charset=nope&a=1")
    with pytest.raises(ValueError):
        p.parse_form(b"a=%FF")


# ---- bills ------------------------------------------------------------------------------------


def bill_text(*rows: list[str]) -> list[str]:
    return [
        "#支付宝业务明细查询\r\n",
        "#账号：[20881021778468800156]\r\n",
        bill.BILL_LIST_START + "\r\n",
        ",".join(bill.BILL_COLUMNS) + "\r\n",
        *(bill.bill_row(r) for r in rows),
        bill.BILL_LIST_END + "\r\n",
        "#交易合计：1笔，退款合计：1笔\r\n",
    ]


def row(
    trade_no: str, order: str, kind: str, amount: str, refund_no: str = "", fee: str = "-0.12"
) -> list[str]:
    values = [""] * len(bill.BILL_COLUMNS)
    values[0], values[1], values[2], values[3] = trade_no, order, kind, "Order, with a comma"
    values[4] = values[5] = "2026-01-01 12:00:00"
    values[11] = values[12] = amount
    values[21] = refund_no
    values[22] = fee
    return values


def test_bill_parser_reads_payments_and_refunds() -> None:
    parser = bill.BillParser()
    lines = bill_text(
        row("T1", "pay_1", "交易", "19.99"),
        row("T1", "pay_1", "退款", "-5.00", refund_no="re_1", fee="0.03"),
        row("T2", "pay_2", "TRADE_CLOSED", "1.00"),
    )
    lines.append("1,2,3 after the end are ignored\r\n")
    parsed = [x for x in map(parser.feed, lines) if x is not None]
    assert parser.done
    payment, refund, odd = parsed
    assert (payment.kind, payment.channel_order_id, payment.channel_trade_no) == (
        StatementKind.PAYMENT,
        "pay_1",
        "T1",
    )
    assert (payment.amount, payment.status, payment.fee) == (1999, "succeeded", 12)
    assert payment.occurred_at == datetime(2026, 1, 1, 4, 0, tzinfo=UTC)
    assert (refund.kind, refund.amount, refund.channel_refund_id, refund.fee) == (
        StatementKind.REFUND,
        500,
        "re_1",
        3,
    )
    assert (odd.kind, odd.status) == (StatementKind.PAYMENT, "trade_closed")


def test_bill_parser_refuses_another_file() -> None:
    with pytest.raises(ValueError):
        bill.BillParser().feed("a,b,c\r\n")


class _GbkZipInfo(zipfile.ZipInfo):
    """Alipay's zips store GBK member names without the UTF-8 flag."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:
        return self.filename.encode("gbk"), self.flag_bits & ~0x800


def test_zip_bill_as_the_real_channel_serves_it() -> None:
    detail = "".join(bill_text(row("T1", "pay_1", "交易", "19.99"))).encode("gbk")
    summary = "#支付宝业务汇总查询\r\n".encode("gbk")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in (
            ("20881021778468800156_20260101_业务明细(汇总).csv", summary),
            ("20881021778468800156_20260101_业务明细.csv", detail),
        ):
            archive.writestr(_GbkZipInfo(name), data)
    buffer.seek(0)
    parser = bill.BillParser()
    parsed = [x for x in map(parser.feed, bill.iter_zip_bill_lines(buffer)) if x is not None]
    assert [(x.channel_order_id, x.amount) for x in parsed] == [("pay_1", 1999)]


def test_signed_yuan() -> None:
    assert bill.signed_yuan(-12) == "-0.12"
    assert bill.signed_yuan(1999) == "19.99"
    assert bill.signed_yuan(0) == "0.00"
    assert timedelta(seconds=sum(p.NOTIFY_SCHEDULE_S)) == timedelta(hours=24, minutes=24)
