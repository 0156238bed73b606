"""The UnionPay 5.1.0 wire protocol: signatures against fixed vectors, the signer-certificate
checks, the SDK's response parser, amounts, ids, the error table and result mapping. No
network."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from adapters.base import Decision, Outcome, StatementKind
from adapters.chinatime import CHINA_TZ
from adapters.unionpay import devkeys, statement
from adapters.unionpay import protocol as p

KEYS = Path(__file__).resolve().parents[3] / "config" / "keys" / "unionpay"


def _key(name: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((KEYS / name).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((KEYS / name).read_bytes())


MERCHANT_KEY = _key("merchant_sign_key.pem")
MERCHANT_CERT = _cert("merchant_sign_cert.pem")
UNIONPAY_KEY = _key("unionpay_sign_key.pem")
UNIONPAY_CERT = _cert("unionpay_sign_cert.pem")
ROOT = _cert("root_ca.pem")
MIDDLE = _cert("middle_ca.pem")

REQUEST = {
    "version": "5.1.0",
    "encoding": "UTF-8",
    "signMethod": "01",
    "txnType": "01",
    "txnSubType": "07",
    "bizType": "000000",
    "channelType": "08",
    "accessType": "0",
    "merId": "777290000000001",
    "orderId": "pay01jd8x0000abcdefghjkmnpq01",
    "txnTime": "20250102030405",
    "txnAmt": "1999",
    "currencyCode": "156",
    "backUrl": "https://gw.example/notify/unionpay",
    "certId": "1234567890",
}
REQUEST_SIGNING_STRING = (
    "accessType=0&backUrl=https://gw.example/notify/unionpay&bizType=000000&certId=1234567890"
    "&channelType=08&currencyCode=156&encoding=UTF-8&merId=777290000000001"
    "&orderId=pay01jd8x0000abcdefghjkmnpq01&signMethod=01&txnAmt=1999&txnSubType=07"
    "&txnTime=20250102030405&txnType=01&version=5.1.0"
)
REQUEST_DIGEST = b"06cf29dd6fa25d5556805632c97785f9dc63525ca18585ea726f86aad5b4c13a"
# SHA256withRSA over the hex digest with the committed dev merchant key (PKCS#1 v1.5 is
# deterministic); the same value comes out of
#   printf %s "$STRING" | sha256sum | cut -c1-64 | tr -d '\n' \
#     | openssl dgst -sha256 -sign merchant_sign_key.pem | base64 -w0
REQUEST_SIGNATURE = (
    "mnfIqmBKpQ0ZgvAvP16wWEQQwhK4ZjAHWkbnWfAMbAhj404FFYnOh5CSroGxrQSG8dZqRpxv9km03NPsqiFC4HxH"
    "Hby0F8vNShzDhyyUpQCD2NG4Fwo+1FCcrmqcC5gZxNRwi9jaNzSsepKeYwnbkpKrNYgThQSO9qK6WEEYEIBEChJT"
    "Ixzad+6i5hSYOvlxn57O2tqyfm/ltyhmLqdXZx4B1e941PXCWFfuOc+++p4DkzH2sc1nWcux90nXZUfduEtI0S1m"
    "gbH1XRTvQs+9/6WTBClN4ZDfAqDJSiSOp8Ut6kHmSZIoIJmUXNAuUHOi8h68Es1NS1oWKFXyqiUlcQ=="
)


def _public(cert: x509.Certificate) -> rsa.RSAPublicKey:
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


# ---- signatures -----------------------------------------------------------------------------


def test_signing_string_sorts_and_leaves_out_the_signature() -> None:
    assert p.signing_string(REQUEST) == REQUEST_SIGNING_STRING
    assert p.signing_string(REQUEST | {"signature": "xyz"}) == REQUEST_SIGNING_STRING
    # blanks are part of what is verified
    assert p.signing_string({"b": "", "a": "1"}) == "a=1&b="
    assert p.signed_digest(REQUEST) == REQUEST_DIGEST


def test_fixed_vector_with_the_dev_merchant_key() -> None:
    assert p.sign(MERCHANT_KEY, REQUEST) == REQUEST_SIGNATURE
    signed = REQUEST | {"signature": REQUEST_SIGNATURE}
    assert p.verify(_public(MERCHANT_CERT), signed)
    assert not p.verify(_public(MERCHANT_CERT), signed | {"txnAmt": "1998"})
    assert not p.verify(_public(MERCHANT_CERT), signed | {"extra": "x"})
    assert not p.verify(_public(UNIONPAY_CERT), signed)  # another key
    assert not p.verify(_public(MERCHANT_CERT), signed | {"signature": "not base64!"})
    assert not p.verify(_public(MERCHANT_CERT), REQUEST)  # no signature at all


def test_sign_request_drops_blanks_and_sets_the_cert_id() -> None:
    cert_id = p.cert_id(MERCHANT_CERT)
    assert cert_id == str(MERCHANT_CERT.serial_number) and cert_id.isdigit()
    signed = p.sign_request(REQUEST | {"reqReserved": "", "certId": "old"}, MERCHANT_KEY, cert_id)
    assert "reqReserved" not in signed
    assert signed["certId"] == cert_id
    assert p.verify(_public(MERCHANT_CERT), signed)


def _verifier(**kwargs: object) -> p.CertificateVerifier:
    return p.CertificateVerifier(ROOT, MIDDLE, **kwargs)  # type: ignore[arg-type]


def _unionpay_message(**extra: str) -> dict[str, str]:
    fields = {"version": "5.1.0", "signMethod": "01", "respCode": "00", "orderId": "x"} | extra
    return p.sign_with_cert(fields, UNIONPAY_KEY, p.cert_pem(UNIONPAY_CERT))


def test_unionpay_messages_verify_through_the_chain() -> None:
    message = _unionpay_message(respMsg="成功[0000000]")
    assert message["signPubKeyCert"].startswith("-----BEGIN CERTIFICATE-----\r\n")
    verifier = _verifier()
    verifier.verify_message(message)
    verifier.verify_message(message)  # the cached certificate
    with pytest.raises(p.SignatureError, match="does not match"):
        verifier.verify_message(message | {"respCode": "01"})
    with pytest.raises(p.SignatureError, match="no signature"):
        verifier.verify_message({k: v for k, v in message.items() if k != "signature"})
    with pytest.raises(p.SignatureError, match="signMethod"):
        verifier.verify_message(message | {"signMethod": "11"})
    with pytest.raises(p.SignatureError, match="PEM"):
        verifier.verify_message(message | {"signPubKeyCert": "garbage"})


def _self_signed(cn: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return key, devkeys.issue(name, key, name, key, ca=False, days=30)


def test_a_signer_outside_the_chain_is_refused() -> None:
    key, cert = _self_signed("041@8310000000000001@中国银联股份有限公司@00000002")
    forged = p.sign_with_cert({"signMethod": "01", "respCode": "00"}, key, p.cert_pem(cert))
    assert p.verify(_public(cert), forged)  # well signed, by an untrusted certificate
    with pytest.raises(p.SignatureError, match="chain"):
        _verifier().verify_message(forged)


def test_a_signer_not_owned_by_unionpay_is_refused() -> None:
    key, cert = _self_signed("041@8310000000000001@某某科技有限公司@00000002")
    forged = p.sign_with_cert({"signMethod": "01"}, key, p.cert_pem(cert))
    with pytest.raises(p.SignatureError, match="not owned by UnionPay"):
        _verifier().verify_message(forged)
    assert p.cn_owner(UNIONPAY_CERT) == "中国银联股份有限公司"
    assert p.cn_owner(cert) == "某某科技有限公司"


def test_validity_is_checked_on_every_use() -> None:
    now = [datetime.now(UTC)]
    verifier = _verifier(clock=lambda: now[0])
    message = _unionpay_message()
    verifier.verify_message(message)
    now[0] = UNIONPAY_CERT.not_valid_after_utc + timedelta(days=1)
    assert now[0] < MIDDLE.not_valid_after_utc
    with pytest.raises(p.SignatureError, match="validity"):
        verifier.verify_message(message)  # cached, but expired now
    with pytest.raises(p.SignatureError, match="validity"):
        _verifier(clock=lambda: now[0]).verify_message(message)


def _hierarchy(leaf_cn: str) -> tuple[p.CertificateVerifier, Callable[[], dict[str, str]]]:
    """A throwaway root -> middle -> leaf hierarchy (to test what the dev set cannot)."""
    root_key, middle_key, leaf_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)
    )
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t root")])
    middle_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t middle")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, leaf_cn)])
    root = devkeys.issue(root_name, root_key, root_name, root_key, ca=True, days=10)
    middle = devkeys.issue(middle_name, middle_key, root_name, root_key, ca=True, days=10)
    leaf = devkeys.issue(leaf_name, leaf_key, middle_name, middle_key, ca=False, days=10)

    def message() -> dict[str, str]:
        return p.sign_with_cert({"signMethod": "01", "a": "b"}, leaf_key, p.cert_pem(leaf))

    verifier = p.CertificateVerifier(root, middle)
    return verifier, message


def test_the_test_environment_signer_needs_validate_cn_off() -> None:
    verifier, message = _hierarchy("041@Z12@00040000:SIGN@00000001")
    with pytest.raises(p.SignatureError, match="not owned"):
        verifier.verify_message(message())
    relaxed = p.CertificateVerifier(verifier._root, verifier._middle, validate_cn=False)
    relaxed.verify_message(message())


def test_the_middle_must_come_from_the_root() -> None:
    _, other_root = _self_signed("someone")
    with pytest.raises(ValueError):
        p.CertificateVerifier(other_root, MIDDLE)
    with pytest.raises(ValueError):
        p.CertificateVerifier(ROOT, UNIONPAY_CERT)  # not a CA, not issued by the root


# ---- wire format ----------------------------------------------------------------------------


def test_parse_message_follows_the_sdk_parser() -> None:
    pem = p.cert_pem(UNIONPAY_CERT)
    text = (
        "respCode=00&respMsg=成功[0000000]&signature=ab+/cd==&signPubKeyCert="
        + pem
        + "&riskRateInfo={commodityName=茶&commodityUrl=https://x/?a=1}&empty=&reserved=[a&b]"
    )
    fields = p.parse_message(text)
    assert fields == {
        "respCode": "00",
        "respMsg": "成功[0000000]",
        "signature": "ab+/cd==",
        "signPubKeyCert": pem,
        "riskRateInfo": "{commodityName=茶&commodityUrl=https://x/?a=1}",
        "empty": "",
        "reserved": "[a&b]",
    }
    assert p.parse_message("") == {}
    with pytest.raises(ValueError):
        p.parse_message("=x")
    with pytest.raises(ValueError):
        p.parse_message("a=1&dangling")
    with pytest.raises(ValueError):
        p.encode_message({"respMsg": "a&b"})


_VALUE = st.text(
    alphabet=st.characters(exclude_characters="&{}[]", exclude_categories=["Cs"]),
    max_size=40,
)


@given(st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,15}", fullmatch=True), _VALUE))
def test_encode_then_parse_message_is_identity(fields: dict[str, str]) -> None:
    assert p.parse_message(p.encode_message(fields)) == fields


def test_form_round_trip_and_duplicates() -> None:
    fields = {"orderDesc": "茶 & 点心 = 1+1", "backUrl": "https://x/n?a=1&b=2", "blank": ""}
    body = p.encode_form(fields)
    assert body.isascii()
    assert p.parse_form(body) == fields
    with pytest.raises(ValueError):
        p.parse_form(b"a=1&a=2")
    with pytest.raises(UnicodeDecodeError):
        p.parse_form(b"\xff")


# ---- amounts, times, ids --------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10**12 - 1))
def test_amount_round_trip(fen: int) -> None:
    assert p.parse_amount(p.format_amount(fen)) == fen


def test_amounts_are_integer_fen() -> None:
    assert p.format_amount(1999) == "1999"
    assert p.parse_amount("1") == 1
    for bad in ("19.99", "-1", "", "0", "01", " 1", "1e3", "１"):
        with pytest.raises(ValueError):
            p.parse_amount(bad)
    for wrong in (0, -5, 10**12, True, 19.99):
        with pytest.raises(ValueError):
            p.format_amount(wrong)  # type: ignore[arg-type]


def test_times_are_china_time() -> None:
    moment = datetime(2025, 1, 1, 16, 30, 5, tzinfo=UTC)
    assert p.format_txn_time(moment) == "20250102003005"
    assert p.parse_txn_time("20250102003005") == moment
    with pytest.raises(ValueError):
        p.parse_txn_time("2025010200300")
    # traceTime has no year: after the turn of the year it belongs to the next one
    reference = p.parse_txn_time("20241231235900")
    assert p.parse_trace_time("0101000100", reference) == datetime(
        2025, 1, 1, 0, 1, tzinfo=CHINA_TZ
    )
    assert p.parse_trace_time("1231235930", reference) == datetime(
        2024, 12, 31, 23, 59, 30, tzinfo=CHINA_TZ
    )
    assert p.parse_trace_time("bad", reference) is None


def _gateway_id(prefix: str, moment: datetime) -> str:
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    millis = int(moment.timestamp() * 1000)
    head = "".join(alphabet[(millis >> (5 * i)) & 31] for i in reversed(range(10)))
    return f"{prefix}_{head}abcdefghjkmnpq"


def test_order_ids_and_their_txn_time() -> None:
    created = datetime(2025, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
    payment_id = _gateway_id("pay", created)
    order_id = p.attempt_order_id(payment_id, 1)
    assert order_id == payment_id.replace("_", "") + "01"
    assert len(order_id) == 29 and p.ORDER_ID_RE.match(order_id)
    assert p.attempt_order_id(payment_id, 12).endswith("12")
    assert p.attempt_txn_time(order_id) == "20250304130607"
    refund_id = p.refund_order_id(_gateway_id("re", created))
    assert refund_id.startswith("re") and len(refund_id) == 26
    assert p.refund_txn_time(refund_id) == "20250304130607"
    assert p.undo_order_id(order_id) == order_id + "C"
    assert len(p.undo_order_id("a" * 40)) == 40
    # ids of another shape carry no time
    assert p.attempt_txn_time("ORDER2025000001") is None
    assert p.refund_txn_time("refund-1") is None
    for bad_seq in (0, 100):
        with pytest.raises(ValueError):
            p.attempt_order_id(payment_id, bad_seq)
    with pytest.raises(ValueError):
        p.refund_order_id("r_1")  # too short for UnionPay


# ---- error table and results ----------------------------------------------------------------


def test_error_table() -> None:
    assert all(len(code) == 2 for code in p.ERROR_TABLE)
    assert p.SUCCESS not in p.ERROR_TABLE and p.PARTIAL_SUCCESS not in p.ERROR_TABLE
    assert set(p.ERROR_TABLE) <= set(p.RESP_MESSAGES)
    for code in ("02", "06", "11", "96", "99"):
        assert p.ERROR_TABLE[code] is Decision.FAILOVER, code
    for code in ("03", "04", "05", "37"):
        assert p.ERROR_TABLE[code] is Decision.RETRY, code
    for code in ("01", "12", "30", "34", "35", "36", "38", "61"):
        assert p.ERROR_TABLE[code] is Decision.FINAL, code
    assert p.decision_for("ZZ") is Decision.FINAL


def test_create_results() -> None:
    ok = p.create_result({"respCode": "00", "qrCode": "https://qr.95516.com/00010000/x"})
    assert ok.outcome is Outcome.WAITING
    assert ok.next_action is not None and ok.next_action.type == "qr_code"
    assert ok.next_action.url == "https://qr.95516.com/00010000/x"
    busy = p.create_result({"respCode": "96", "respMsg": "系统故障"})
    assert (busy.outcome, busy.decision, busy.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "96",
    )
    refused = p.create_result({"respCode": "01"})
    assert (refused.outcome, refused.decision) == (Outcome.FAILED, Decision.FINAL)
    # the order may exist: UNKNOWN, to be queried later (RETRY), as every channel's create
    for code in ("03", "04", "05", "12"):
        unknown = p.create_result({"respCode": code})
        assert (unknown.outcome, unknown.decision) == (Outcome.UNKNOWN, Decision.RETRY)
    no_qr_code = p.create_result({"respCode": "00"})
    assert (no_qr_code.outcome, no_qr_code.decision) == (Outcome.UNKNOWN, Decision.RETRY)


def test_query_results() -> None:
    paid = p.query_result(
        {
            "respCode": "00",
            "origRespCode": "00",
            "queryId": "202501020030051234567",
            "txnAmt": "1999",
            "txnTime": "20250102003005",
            "traceTime": "0102003107",
        }
    )
    assert paid.outcome is Outcome.SUCCEEDED
    assert (paid.channel_trade_no, paid.amount) == ("202501020030051234567", 1999)
    assert paid.paid_at == datetime(2025, 1, 2, 0, 31, 7, tzinfo=CHINA_TZ)
    for orig in ("03", "04", "05"):
        waiting = p.query_result({"respCode": "00", "origRespCode": orig})
        assert (waiting.outcome, waiting.decision) == (Outcome.WAITING, Decision.RETRY)
    failed = p.query_result({"respCode": "00", "origRespCode": "01"})
    assert (failed.outcome, failed.channel_code) == (Outcome.FAILED, "01")
    missing = p.query_result({"respCode": "34"})
    assert (missing.outcome, missing.channel_code) == (Outcome.FAILED, "34")
    busy = p.query_result({"respCode": "06"})
    assert (busy.outcome, busy.decision) == (Outcome.UNKNOWN, Decision.RETRY)
    bad = p.query_result({"respCode": "10"})
    assert bad.outcome is Outcome.UNKNOWN
    assert p.query_result({"respCode": "00"}).outcome is Outcome.UNKNOWN  # no origRespCode


def test_refund_and_notification_results() -> None:
    accepted = p.refund_result({"respCode": "00", "queryId": "q1", "txnAmt": "100"})
    assert (accepted.outcome, accepted.channel_trade_no, accepted.amount) == (
        Outcome.WAITING,
        "q1",
        100,
    )
    assert p.refund_result({"respCode": "12"}).outcome is Outcome.UNKNOWN
    assert p.refund_result({"respCode": "36"}).outcome is Outcome.FAILED
    assert p.refund_result({"respCode": "06"}).outcome is Outcome.SYSTEM_ERROR
    note = p.notification_result({"respCode": "00", "queryId": "q2", "txnAmt": "5"})
    assert (note.outcome, note.channel_trade_no, note.amount) == (Outcome.SUCCEEDED, "q2", 5)
    failed = p.notification_result({"respCode": "01", "queryId": "q3"})
    assert (failed.outcome, failed.channel_code) == (Outcome.FAILED, "01")


# ---- reconciliation file --------------------------------------------------------------------


def test_statement_file_round_trip() -> None:
    rows = [
        statement.StatementRow(
            "01",
            f"pay{i:026d}",
            "",
            f"q{i}",
            "",
            "20250102003005",
            "20250102003107",
            1000 + i,
            3,
            "00",
            "0102",
        )
        for i in range(300)
    ]
    refund = statement.StatementRow(
        "04",
        "re1234567890",
        "pay" + "0" * 26,
        "qr",
        "q0",
        "20250102010000",
        "20250102010203",
        500,
        0,
        "00",
        "0102",
    )
    undo = statement.StatementRow(
        "31", "pay1C", "pay1", "qu", "q1", "20250102010000", "", 700, 0, "01", "0102"
    )
    text = statement.statement_header() + "".join(r.line() for r in [*rows, refund, undo])
    content = statement.pack_file(text)
    lines = list(statement.statement_lines(statement.unpack_file_lines(content, chunk_size=64)))
    assert len(lines) == 302
    first = lines[0]
    assert (first.kind, first.channel_order_id, first.amount, first.fee, first.status) == (
        StatementKind.PAYMENT,
        "pay" + "0" * 26,
        1000,
        3,
        "succeeded",
    )
    assert first.occurred_at == datetime(2025, 1, 2, 0, 31, 7, tzinfo=CHINA_TZ)
    back = lines[300]
    assert (back.kind, back.channel_order_id, back.channel_refund_id, back.amount) == (
        StatementKind.REFUND,
        "pay" + "0" * 26,
        "re1234567890",
        500,
    )
    assert (lines[301].kind, lines[301].status, lines[301].occurred_at) == (
        StatementKind.REFUND,
        "failed",
        None,
    )
    truncated = base64.b64encode(base64.b64decode(content)[:-6]).decode()
    with pytest.raises(ValueError):
        list(statement.unpack_file_lines(truncated))
    with pytest.raises(ValueError):
        statement.statement_line("01,too,few")
    with pytest.raises(ValueError):
        statement.statement_line("77,a,,q,,20250102003005,,1,0,00,0102")
