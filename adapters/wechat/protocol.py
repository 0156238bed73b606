"""WeChat Pay API v3 (native payments), the wire protocol: pure, I/O-free, shared by the adapter
and the simulator so that it is written once.

What the real channel does (https://pay.weixin.qq.com/doc/v3/merchant/):

- Requests are JSON over HTTPS to `https://api.mch.weixin.qq.com/v3/...`, signed by the merchant
  with its API certificate's private key (RSASSA-PKCS1-v1_5, SHA-256) in one header::

      Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",timestamp="…",
                     serial_no="…",signature="…"

  over the five lines `METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`, where URL is the path and query
  as sent (`/v3/pay/transactions/out-trade-no/A1?mchid=1900000109`) and BODY the exact bytes
  (empty for GET). `serial_no` names the merchant certificate (hex).
- Responses (and notifications) are signed by WeChat Pay with its *platform* private key over
  `TIMESTAMP\\nNONCE\\nBODY\\n`, in the headers `Wechatpay-Timestamp`, `Wechatpay-Nonce`,
  `Wechatpay-Signature`, `Wechatpay-Serial` (the platform certificate's serial) and
  `Wechatpay-Signature-Type: WECHATPAY2-SHA256-RSA2048`. The merchant verifies them with the
  platform certificate and rejects timestamps more than five minutes off.
- Errors are HTTP 4xx/5xx with `{"code": "PARAM_ERROR", "message": "…"}`.
- Notifications are JSON envelopes whose `resource` is encrypted with the merchant's APIv3 key
  (AEAD_AES_256_GCM: the 32-byte key, a 12-character nonce, `associated_data` as AAD,
  base64(ciphertext || tag)). The merchant answers 200/204 (accepted) or 4xx/5xx with
  `{"code": "FAIL", "message": "…"}`, and WeChat Pay sends again on its schedule
  (15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h).
- The trade bill (`GET /v3/bill/tradebill`) gives a download URL plus a SHA1 of the file; the
  file is CSV whose every field is prefixed with a backtick, with a header row and two totals
  rows at the end, amounts in yuan.

Convention of this project: the signed URL is the path *below the API root* (`/v3/...`). At
the real channel the root is the domain root, so this is exactly the real rule; our simulator is
mounted at `/sim/wechat`, and it verifies against the path below that prefix, which is also
what the real `wechatpayv3` SDK signs when pointed at it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import re
import secrets
import string
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.base import (
    ChannelResult,
    Decision,
    NextAction,
    Outcome,
    StatementKind,
    StatementLine,
)
from adapters.money import fen_to_yuan

# ---- constants ---------------------------------------------------------------------------

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
"""The `Authorization` scheme and the `Wechatpay-Signature-Type` value."""

CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
"""WeChat Pay's times (success_time, time_expire, bill dates) are in China time (UTC+8)."""

TIMESTAMP_WINDOW_S = 300
"""A signed request, response or notification whose timestamp is further than this from the
receiver's clock is refused (the real API refuses requests beyond five minutes and tells
merchants to do the same)."""

NOTIFY_SCHEDULE_S: tuple[float, ...] = (
    15,
    15,
    30,
    180,
    600,
    1200,
    1800,
    1800,
    1800,
    3600,
    10800,
    10800,
    10800,
    21600,
    21600,
)
"""The real notification retry schedule after the first attempt (15s/15s/30s/3m/10m/20m/30m/
30m/30m/60m/3h/3h/3h/6h/6h): the simulator scales it by `notify_time_scale`."""

HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_SERIAL = "Wechatpay-Serial"
HEADER_SIGNATURE_TYPE = "Wechatpay-Signature-Type"

PATH_NATIVE = "/v3/pay/transactions/native"
PATH_QUERY = "/v3/pay/transactions/out-trade-no/{out_trade_no}"
PATH_QUERY_BY_ID = "/v3/pay/transactions/id/{transaction_id}"
PATH_CLOSE = "/v3/pay/transactions/out-trade-no/{out_trade_no}/close"
PATH_REFUND = "/v3/refund/domestic/refunds"
PATH_REFUND_QUERY = "/v3/refund/domestic/refunds/{out_refund_no}"
PATH_TRADEBILL = "/v3/bill/tradebill"
PATH_BILLDOWNLOAD = "/v3/billdownload/file"
PATH_CERTIFICATES = "/v3/certificates"

ALGORITHM_AES_GCM = "AEAD_AES_256_GCM"

EVENT_TRANSACTION_SUCCESS = "TRANSACTION.SUCCESS"
EVENT_REFUND_SUCCESS = "REFUND.SUCCESS"
EVENT_REFUND_ABNORMAL = "REFUND.ABNORMAL"
EVENT_REFUND_CLOSED = "REFUND.CLOSED"

ACK_FAIL_BODY = b'{"code":"FAIL","message":"\xe5\xa4\xb1\xe8\xb4\xa5"}'
"""`{"code":"FAIL","message":"失败"}`, the merchant's answer to a notification it refuses."""

OUT_TRADE_NO_RE = re.compile(r"[0-9A-Za-z_\-|*]{6,32}")
"""out_trade_no: 6 to 32 digits, letters and `_-|*`, unique per merchant."""
OUT_REFUND_NO_RE = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
"""out_refund_no: 1 to 64 digits, letters and `_-|*@`, unique per merchant."""

DESCRIPTION_MAX = 127
"""description: at most 127 characters."""


class TradeState(enum.StrEnum):
    """`trade_state` of a payment (query and notification)."""

    SUCCESS = "SUCCESS"  # 支付成功
    REFUND = "REFUND"  # 转入退款 (paid, then refunded in part or in full)
    NOTPAY = "NOTPAY"  # 未支付
    CLOSED = "CLOSED"  # 已关闭
    REVOKED = "REVOKED"  # 已撤销 (payment-code payments only)
    USERPAYING = "USERPAYING"  # 用户支付中 (payment-code payments only)
    PAYERROR = "PAYERROR"  # 支付失败


TRADE_STATE_DESC: Mapping[str, str] = {
    TradeState.SUCCESS: "支付成功",
    TradeState.REFUND: "转入退款",
    TradeState.NOTPAY: "订单未支付",
    TradeState.CLOSED: "订单已关闭",
    TradeState.REVOKED: "已撤销",
    TradeState.USERPAYING: "用户支付中",
    TradeState.PAYERROR: "支付失败",
}


class RefundStatus(enum.StrEnum):
    """`status` of a refund (`refund_status` in the refund notification)."""

    SUCCESS = "SUCCESS"  # 退款成功
    CLOSED = "CLOSED"  # 退款关闭
    PROCESSING = "PROCESSING"  # 退款处理中
    ABNORMAL = "ABNORMAL"  # 退款异常 (e.g. the payer's card was closed; handled by hand)


class Op(enum.StrEnum):
    """The calls the adapter makes; the same answer means different things for each."""

    CREATE = "create"
    QUERY = "query"
    CLOSE = "close"
    REFUND = "refund"
    REFUND_QUERY = "refund_query"
    STATEMENT = "statement"


# ---- error codes -------------------------------------------------------------------------

# Codes of the real API (HTTP status, meaning).
SYSTEM_ERROR = "SYSTEM_ERROR"  # 500 系统错误: "retry with the same parameters"
BANK_ERROR = "BANK_ERROR"  # 500 银行系统异常: "retry with the same parameters"
FREQUENCY_LIMITED = "FREQUENCY_LIMITED"  # 429 频率超限
SIGN_ERROR = "SIGN_ERROR"  # 401 签名错误
PARAM_ERROR = "PARAM_ERROR"  # 400 参数错误
INVALID_REQUEST = "INVALID_REQUEST"  # 400 does not meet the API's business rules
MCH_NOT_EXISTS = "MCH_NOT_EXISTS"  # 400 商户号不存在
APPID_MCHID_NOT_MATCH = "APPID_MCHID_NOT_MATCH"  # 400
NO_AUTH = "NO_AUTH"  # 403 商户无权限
RULE_LIMIT = "RULE_LIMIT"  # 403 业务规则限制
TRADE_ERROR = "TRADE_ERROR"  # 403 交易错误
ACCOUNT_ERROR = "ACCOUNT_ERROR"  # 403 账号异常
OUT_TRADE_NO_USED = "OUT_TRADE_NO_USED"  # 403 商户订单号重复 (same id, other parameters)
ORDERPAID = "ORDERPAID"  # 400 订单已支付
ORDER_CLOSED = "ORDER_CLOSED"  # 400 订单已关闭
ORDER_NOT_EXIST = "ORDER_NOT_EXIST"  # 404 订单不存在
RESOURCE_NOT_EXISTS = "RESOURCE_NOT_EXISTS"  # 404 (refunds) 订单/退款单不存在
NOT_ENOUGH = "NOT_ENOUGH"  # 403 (refunds) 商户余额不足
USER_ACCOUNT_ABNORMAL = "USER_ACCOUNT_ABNORMAL"  # 403 (refunds) 用户账户异常
NO_STATEMENT_EXIST = "NO_STATEMENT_EXIST"  # 400 (bills) 账单文件不存在
STATEMENT_CREATING = "STATEMENT_CREATING"  # 400 (bills) 账单生成中

# Codes of our own, for answers that carry none.
INVALID_SIGNATURE = "INVALID_SIGNATURE"
"""A response or notification whose signature is missing, unknown or wrong."""
TIMEOUT = "TIMEOUT"
"""No answer within the call's budget: the request may have acted."""
CONNECTION_REFUSED = "CONNECTION_REFUSED"
"""The connection could not be made: nothing was sent."""
CONNECTION_ERROR = "CONNECTION_ERROR"
"""The connection broke after the request was sent: it may have acted."""
MALFORMED_RESPONSE = "MALFORMED_RESPONSE"
"""A signed answer we cannot read."""
METHOD_NOT_SUPPORTED = "METHOD_NOT_SUPPORTED"
"""A payment method this channel does not offer (only `wechat_qr`); nothing was sent."""

ERROR_HTTP_STATUS: Mapping[str, int] = {
    SYSTEM_ERROR: 500,
    BANK_ERROR: 500,
    FREQUENCY_LIMITED: 429,
    SIGN_ERROR: 401,
    PARAM_ERROR: 400,
    INVALID_REQUEST: 400,
    MCH_NOT_EXISTS: 400,
    APPID_MCHID_NOT_MATCH: 400,
    NO_AUTH: 403,
    RULE_LIMIT: 403,
    TRADE_ERROR: 403,
    ACCOUNT_ERROR: 403,
    OUT_TRADE_NO_USED: 403,
    ORDERPAID: 400,
    ORDER_CLOSED: 400,
    ORDER_NOT_EXIST: 404,
    RESOURCE_NOT_EXISTS: 404,
    NOT_ENOUGH: 403,
    USER_ACCOUNT_ABNORMAL: 403,
    NO_STATEMENT_EXIST: 400,
    STATEMENT_CREATING: 400,
}
"""The HTTP status the real API answers each code with (the simulator uses it)."""

ERROR_TABLE: Mapping[str, Decision] = {
    # Transient, or this channel cannot serve us now: nothing usable was created, so a
    # payment may go elsewhere. (SYSTEM_ERROR / BANK_ERROR on create may leave an order at
    # WeChat, but its code_url never reached anyone, so nobody can pay it; it expires.)
    SYSTEM_ERROR: Decision.FAILOVER,
    BANK_ERROR: Decision.FAILOVER,
    FREQUENCY_LIMITED: Decision.FAILOVER,
    CONNECTION_REFUSED: Decision.FAILOVER,
    METHOD_NOT_SUPPORTED: Decision.FAILOVER,
    # Our credentials or contract at this channel are wrong: the operator must act, but
    # another channel may serve the payment meanwhile.
    SIGN_ERROR: Decision.FAILOVER,
    MCH_NOT_EXISTS: Decision.FAILOVER,
    APPID_MCHID_NOT_MATCH: Decision.FAILOVER,
    NO_AUTH: Decision.FAILOVER,
    # Definitive answers about this order / refund.
    PARAM_ERROR: Decision.FINAL,
    INVALID_REQUEST: Decision.FINAL,
    RULE_LIMIT: Decision.FINAL,
    TRADE_ERROR: Decision.FINAL,
    ACCOUNT_ERROR: Decision.FINAL,
    OUT_TRADE_NO_USED: Decision.FINAL,
    ORDERPAID: Decision.FINAL,
    ORDER_CLOSED: Decision.FINAL,
    ORDER_NOT_EXIST: Decision.FINAL,
    RESOURCE_NOT_EXISTS: Decision.FINAL,
    NOT_ENOUGH: Decision.FINAL,
    USER_ACCOUNT_ABNORMAL: Decision.FINAL,
    NO_STATEMENT_EXIST: Decision.FINAL,
    # Ask the same channel again later; never fail over (the call may have acted).
    STATEMENT_CREATING: Decision.RETRY,
    INVALID_SIGNATURE: Decision.RETRY,
    TIMEOUT: Decision.RETRY,
    CONNECTION_ERROR: Decision.RETRY,
    MALFORMED_RESPONSE: Decision.RETRY,
}
"""Channel code -> what the gateway may do. FAILOVER applies to creating a payment; for the
other calls (which must stay at the channel that holds the order) it reads as RETRY."""

MAY_HAVE_ACTED = frozenset({SYSTEM_ERROR, BANK_ERROR, TIMEOUT, CONNECTION_ERROR})
"""Codes after which a refund or close may or may not have happened (WeChat's own guidance for
SYSTEM_ERROR is to retry with the same parameters)."""


# ---- small helpers -----------------------------------------------------------------------

_NONCE_ALPHABET = string.ascii_uppercase + string.digits


def new_nonce(length: int = 32) -> str:
    """A random nonce_str (the SDKs use 32 upper-case letters and digits)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def new_aead_nonce() -> str:
    """The 12-character nonce of AEAD_AES_256_GCM resources (used as its UTF-8 bytes)."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12))


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON, as the real API and our simulator send it."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def format_time(moment: datetime) -> str:
    """RFC 3339 in China time, as WeChat writes times: `2018-06-08T10:34:56+08:00`."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(CHINA_TZ).replace(microsecond=0).isoformat()


def parse_time(text: str) -> datetime:
    """`2018-06-08T10:34:56+08:00` -> an aware datetime. Raises ValueError."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without offset: {text!r}")
    return moment


def china_date(moment: datetime) -> date:
    """The China (UTC+8) calendar day of a moment: the day a bill files it under."""
    return moment.astimezone(CHINA_TZ).date()


def serial_hex(serial_number: int) -> str:
    """A certificate serial the way WeChat writes it: upper-case hex, 40 digits for the usual
    160-bit serials (`5157F09EFDC096DE15EBE81A47057A7232F1B8E1`)."""
    return f"{serial_number:040X}"


def serial_int(text: str) -> int:
    """`5157F0…` -> int, for comparison regardless of case and leading zeros. Raises
    ValueError."""
    if not text or not all(c in string.hexdigits for c in text):
        raise ValueError(f"not a hex serial: {text!r}")
    return int(text, 16)


def out_trade_no_for(payment_id: str, seq: int) -> str:
    """The out_trade_no for attempt `seq` of a payment: `<payment id>_<seq>` when WeChat's
    rule (6-32 of `[0-9A-Za-z_-|*]`) allows it, else a stable digest of the payment id."""
    candidate = f"{payment_id}_{seq}"
    if OUT_TRADE_NO_RE.fullmatch(candidate):
        return candidate
    suffix = f"_{seq}"
    digest = base64.b32encode(hashlib.sha256(payment_id.encode()).digest()).decode().lower()
    return digest[: 32 - len(suffix)] + suffix


def out_refund_no_for(refund_id: str) -> str:
    """The out_refund_no for a refund (1-64 of `[0-9A-Za-z_-|*@]`)."""
    if OUT_REFUND_NO_RE.fullmatch(refund_id):
        return refund_id
    return base64.b32encode(hashlib.sha256(refund_id.encode()).digest()).decode().lower()[:52]


# ---- keys and certificates (parsing only; the callers read the files) ---------------------


def load_private_key(pem: bytes) -> RSAPrivateKey:
    """An RSA private key from PEM (PKCS#8 `BEGIN PRIVATE KEY`, as the merchant's
    apiclient_key.pem). Raises ValueError."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("not an RSA private key")
    if key.key_size < 2048:
        raise ValueError("RSA keys must have at least 2048 bits")
    return key


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, each with an RSA public key. Raises ValueError."""
    certs = x509.load_pem_x509_certificates(pem)
    for cert in certs:
        if not isinstance(cert.public_key(), RSAPublicKey):
            raise ValueError("certificate does not hold an RSA public key")
    return certs


def certificate_key(cert: x509.Certificate) -> RSAPublicKey:
    key = cert.public_key()
    if not isinstance(key, RSAPublicKey):
        raise ValueError("certificate does not hold an RSA public key")
    return key


def certificate_cn(cert: x509.Certificate) -> str | None:
    """The subject CN (on a merchant API certificate: the mchid)."""
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else None
    return value if isinstance(value, str) else None


# ---- signatures --------------------------------------------------------------------------


class SignatureError(ValueError):
    """A signature that is missing, malformed, from an unknown certificate, stale or wrong."""


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """`METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`, the message a merchant signs."""
    head = f"{method.upper()}\n{url}\n{timestamp}\n{nonce}\n".encode()
    return head + body + b"\n"


def response_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """`TIMESTAMP\\nNONCE\\nBODY\\n`, the message WeChat Pay signs on answers and notifications."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def rsa_sign(private_key: RSAPrivateKey, message: bytes) -> str:
    """RSASSA-PKCS1-v1_5 with SHA-256, standard base64 (deterministic for a given key)."""
    signature = private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def rsa_verify(public_key: RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parts of a `WECHATPAY2-SHA256-RSA2048` Authorization header."""

    mchid: str
    nonce_str: str
    timestamp: str
    serial_no: str
    signature: str


_AUTH_PARAM = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*(?:,|$)')


def build_authorization(
    *,
    mchid: str,
    serial_no: str,
    private_key: RSAPrivateKey,
    method: str,
    url: str,
    body: bytes,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """The merchant's Authorization header for one request (`url` = path and query)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce_str = nonce or new_nonce()
    signature = rsa_sign(private_key, request_message(method, url, ts, nonce_str, body))
    return (
        f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce_str}",timestamp="{ts}",'
        f'serial_no="{serial_no}",signature="{signature}"'
    )


def parse_authorization(header: str) -> Authorization:
    """Parse an Authorization header (parameters in any order). Raises SignatureError."""
    scheme, _, params = header.strip().partition(" ")
    if scheme != SCHEMA:
        raise SignatureError("unsupported authorization scheme")
    values: dict[str, str] = {}
    pos = 0
    params = params.strip()
    while pos < len(params):
        match = _AUTH_PARAM.match(params, pos)
        if match is None:
            raise SignatureError("malformed authorization parameters")
        values[match.group(1)] = match.group(2)
        pos = match.end()
    try:
        auth = Authorization(
            mchid=values["mchid"],
            nonce_str=values["nonce_str"],
            timestamp=values["timestamp"],
            serial_no=values["serial_no"],
            signature=values["signature"],
        )
    except KeyError as exc:
        raise SignatureError(f"authorization lacks {exc.args[0]}") from None
    if not auth.timestamp.isdigit():
        raise SignatureError("authorization timestamp is not a number")
    return auth


def check_timestamp(timestamp: str, now: float | None = None) -> None:
    """Raises SignatureError when `timestamp` (unix seconds) is outside the window."""
    if not timestamp.isdigit():
        raise SignatureError("timestamp is not a number")
    clock = time.time() if now is None else now
    if abs(clock - int(timestamp)) > TIMESTAMP_WINDOW_S:
        raise SignatureError("timestamp outside the allowed window")


def sign_headers(
    private_key: RSAPrivateKey,
    serial_no: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """WeChat Pay's signature headers for an answer or a notification body."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce_str = nonce or new_nonce()
    return {
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce_str,
        HEADER_SIGNATURE: rsa_sign(private_key, response_message(ts, nonce_str, body)),
        HEADER_SERIAL: serial_no,
        HEADER_SIGNATURE_TYPE: SCHEMA,
    }


def has_signature(headers: Mapping[str, str]) -> bool:
    lower = {k.lower() for k in headers}
    return HEADER_SIGNATURE.lower() in lower


def verify_headers(
    headers: Mapping[str, str],
    body: bytes,
    platform_keys: Mapping[int, RSAPublicKey],
    *,
    now: float | None = None,
) -> str:
    """Verify WeChat Pay's signature on an answer or a notification. `platform_keys` maps
    platform certificate serials (as int) to their public keys. Returns the serial used.
    Raises SignatureError."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = lower[HEADER_TIMESTAMP.lower()]
        nonce = lower[HEADER_NONCE.lower()]
        signature = lower[HEADER_SIGNATURE.lower()]
        serial = lower[HEADER_SERIAL.lower()]
    except KeyError as exc:
        raise SignatureError(f"missing header {exc.args[0]}") from None
    sig_type = lower.get(HEADER_SIGNATURE_TYPE.lower(), SCHEMA)
    if sig_type != SCHEMA:
        raise SignatureError(f"unsupported signature type {sig_type!r}")
    try:
        key = platform_keys.get(serial_int(serial))
    except ValueError:
        key = None
    if key is None:
        raise SignatureError("unknown platform certificate serial")
    check_timestamp(timestamp, now)
    if not rsa_verify(key, response_message(timestamp, nonce, body), signature):
        raise SignatureError("signature does not verify")
    return serial


# ---- AEAD_AES_256_GCM --------------------------------------------------------------------


class DecryptError(ValueError):
    """A resource that does not decrypt with the APIv3 key (wrong key or tampered)."""


def aes_gcm_encrypt(apiv3_key: bytes, nonce: str, associated_data: str, plaintext: str) -> str:
    """base64(ciphertext || tag), as WeChat Pay encrypts notification resources and
    certificates with the merchant's APIv3 key."""
    if len(apiv3_key) != 32:
        raise ValueError("the APIv3 key must be 32 bytes")
    sealed = AESGCM(apiv3_key).encrypt(
        nonce.encode(), plaintext.encode("utf-8"), associated_data.encode()
    )
    return base64.b64encode(sealed).decode("ascii")


def aes_gcm_decrypt(apiv3_key: bytes, nonce: str, associated_data: str, ciphertext: str) -> str:
    """Raises DecryptError."""
    if len(apiv3_key) != 32:
        raise DecryptError("the APIv3 key must be 32 bytes")
    try:
        sealed = base64.b64decode(ciphertext, validate=True)
        plain = AESGCM(apiv3_key).decrypt(nonce.encode(), sealed, associated_data.encode())
        return plain.decode("utf-8")
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise DecryptError("resource does not decrypt") from exc


# ---- notifications -----------------------------------------------------------------------


def build_notification(
    *,
    apiv3_key: bytes,
    event_id: str,
    create_time: datetime,
    event_type: str,
    summary: str,
    original_type: str,
    resource: Mapping[str, Any],
    nonce: str | None = None,
) -> bytes:
    """The body of a notification, its resource encrypted with the APIv3 key."""
    aead_nonce = nonce or new_aead_nonce()
    plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
    envelope = {
        "id": event_id,
        "create_time": format_time(create_time),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": ALGORITHM_AES_GCM,
            "ciphertext": aes_gcm_encrypt(apiv3_key, aead_nonce, original_type, plaintext),
            "associated_data": original_type,
            "nonce": aead_nonce,
        },
    }
    return dumps(envelope)


@dataclass(frozen=True, slots=True)
class OpenedNotification:
    event_id: str
    event_type: str
    resource: Mapping[str, Any]


def open_notification(body: bytes, apiv3_key: bytes) -> OpenedNotification:
    """Parse a (signature-verified) notification body and decrypt its resource. Raises
    ValueError (DecryptError for a resource that does not decrypt)."""
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("notification body is not JSON") from exc
    if not isinstance(envelope, dict):
        raise ValueError("notification body is not an object")
    if envelope.get("resource_type") != "encrypt-resource":
        raise ValueError("unexpected resource_type")
    resource = envelope.get("resource")
    if not isinstance(resource, dict):
        raise ValueError("notification has no resource")
    if resource.get("algorithm") != ALGORITHM_AES_GCM:
        raise ValueError("unsupported resource algorithm")
    nonce, ciphertext = resource.get("nonce"), resource.get("ciphertext")
    associated = resource.get("associated_data") or ""
    if not isinstance(nonce, str) or not isinstance(ciphertext, str):
        raise ValueError("resource lacks nonce or ciphertext")
    if not isinstance(associated, str):
        raise ValueError("associated_data is not a string")
    plain = aes_gcm_decrypt(apiv3_key, nonce, associated, ciphertext)
    try:
        data = json.loads(plain)
    except json.JSONDecodeError as exc:
        raise ValueError("decrypted resource is not JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("decrypted resource is not an object")
    event_type = envelope.get("event_type")
    event_id = envelope.get("id")
    if not isinstance(event_type, str) or not isinstance(event_id, str):
        raise ValueError("notification lacks id or event_type")
    return OpenedNotification(event_id=event_id, event_type=event_type, resource=data)


# ---- mapping answers to ChannelResult ------------------------------------------------------


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def map_create(data: Mapping[str, Any]) -> ChannelResult:
    """200 from `POST /v3/pay/transactions/native`: `{"code_url": …}` -> WAITING with a QR
    next action."""
    code_url = _str(data.get("code_url"))
    if code_url is None:
        return ChannelResult(
            Outcome.UNKNOWN, Decision.RETRY, MALFORMED_RESPONSE, "no code_url", raw=data
        )
    return ChannelResult(
        Outcome.WAITING,
        Decision.FINAL,
        channel_code="SUCCESS",
        next_action=NextAction(type="qr_code", url=code_url),
        raw=data,
    )


def map_transaction(data: Mapping[str, Any]) -> ChannelResult:
    """A transaction (query answer or decrypted TRANSACTION.* resource) -> result.

    SUCCESS and REFUND (paid, then refunded) -> SUCCEEDED with transaction_id, amount.total and
    success_time; NOTPAY / USERPAYING -> WAITING; CLOSED / REVOKED / PAYERROR -> FAILED."""
    state = data.get("trade_state")
    desc = _str(data.get("trade_state_desc"))
    amount = data.get("amount")
    total = _int(amount.get("total")) if isinstance(amount, Mapping) else None
    trade_no = _str(data.get("transaction_id"))
    if state in (TradeState.SUCCESS, TradeState.REFUND):
        return ChannelResult(
            Outcome.SUCCEEDED,
            Decision.FINAL,
            channel_code=str(state),
            channel_message=desc,
            channel_trade_no=trade_no,
            amount=total,
            paid_at=_time(data.get("success_time")),
            raw=data,
        )
    if state in (TradeState.NOTPAY, TradeState.USERPAYING):
        return ChannelResult(
            Outcome.WAITING, Decision.FINAL, str(state), desc, trade_no, amount=total, raw=data
        )
    if state in (TradeState.CLOSED, TradeState.REVOKED, TradeState.PAYERROR):
        return ChannelResult(
            Outcome.FAILED, Decision.FINAL, str(state), desc, trade_no, amount=total, raw=data
        )
    return ChannelResult(
        Outcome.UNKNOWN,
        Decision.RETRY,
        MALFORMED_RESPONSE,
        f"unexpected trade_state {state!r}",
        raw=data,
    )


def map_refund(data: Mapping[str, Any]) -> ChannelResult:
    """A refund (answer to create / query: `status`; decrypted REFUND.* resource:
    `refund_status`) -> result. SUCCESS -> SUCCEEDED (refund_id, amount.refund, success_time);
    PROCESSING -> WAITING; ABNORMAL / CLOSED -> FAILED."""
    status = data.get("status", data.get("refund_status"))
    amount = data.get("amount")
    refund = _int(amount.get("refund")) if isinstance(amount, Mapping) else None
    refund_id = _str(data.get("refund_id"))
    if status == RefundStatus.SUCCESS:
        return ChannelResult(
            Outcome.SUCCEEDED,
            Decision.FINAL,
            str(status),
            channel_trade_no=refund_id,
            amount=refund,
            paid_at=_time(data.get("success_time")),
            raw=data,
        )
    if status == RefundStatus.PROCESSING:
        return ChannelResult(
            Outcome.WAITING, Decision.FINAL, str(status), None, refund_id, amount=refund, raw=data
        )
    if status in (RefundStatus.ABNORMAL, RefundStatus.CLOSED):
        return ChannelResult(
            Outcome.FAILED, Decision.FINAL, str(status), None, refund_id, amount=refund, raw=data
        )
    return ChannelResult(
        Outcome.UNKNOWN,
        Decision.RETRY,
        MALFORMED_RESPONSE,
        f"unexpected refund status {status!r}",
        raw=data,
    )


def decision_for(code: str, http_status: int | None = None) -> Decision:
    """The table's decision, or by HTTP status for codes it does not know."""
    found = ERROR_TABLE.get(code)
    if found is not None:
        return found
    if http_status is not None and (http_status >= 500 or http_status == 429):
        return Decision.FAILOVER
    return Decision.FINAL


def map_error(
    op: Op, http_status: int | None, code: str, message: str | None = None
) -> ChannelResult:
    """An error answer (or a transport failure, with our own code) -> result, per call.

    - create: FAILOVER codes -> SYSTEM_ERROR + FAILOVER; FINAL codes -> FAILED + FINAL;
      RETRY codes (timeout, dropped connection, bad signature) -> UNKNOWN + RETRY (never fail
      over: the order may exist and its code_url may have been shown).
    - close: ORDER_CLOSED -> SUCCEEDED (it is closed); ORDERPAID and other FINAL codes ->
      FAILED with the code (the caller should query); anything else -> UNKNOWN + RETRY.
    - query / refund query: FINAL codes (ORDER_NOT_EXIST, RESOURCE_NOT_EXISTS, …) -> FAILED;
      anything else -> UNKNOWN + RETRY.
    - refund: FINAL codes -> FAILED; codes that may have acted (SYSTEM_ERROR, timeout, …) ->
      UNKNOWN + RETRY; other transient codes (nothing happened) -> SYSTEM_ERROR + RETRY.
    """
    decision = decision_for(code, http_status)
    raw: dict[str, Any] = {"code": code}
    if http_status is not None:
        raw["http_status"] = http_status
    if message:
        raw["message"] = message

    def result(outcome: Outcome, dec: Decision) -> ChannelResult:
        return ChannelResult(outcome, dec, channel_code=code, channel_message=message, raw=raw)

    if op is Op.CREATE:
        if decision is Decision.FAILOVER:
            return result(Outcome.SYSTEM_ERROR, Decision.FAILOVER)
        if decision is Decision.FINAL:
            return result(Outcome.FAILED, Decision.FINAL)
        return result(Outcome.UNKNOWN, Decision.RETRY)
    if op is Op.CLOSE and code == ORDER_CLOSED:
        return result(Outcome.SUCCEEDED, Decision.FINAL)
    if decision is Decision.FINAL:
        return result(Outcome.FAILED, Decision.FINAL)
    if op is Op.REFUND and decision is Decision.FAILOVER and code not in MAY_HAVE_ACTED:
        return result(Outcome.SYSTEM_ERROR, Decision.RETRY)
    return result(Outcome.UNKNOWN, Decision.RETRY)


def error_code_of(body: bytes) -> tuple[str | None, str | None]:
    """`{"code": …, "message": …}` of an error answer, or (None, None)."""
    try:
        data = json.loads(body) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    return _str(data.get("code")), _str(data.get("message"))


# ---- the trade bill ----------------------------------------------------------------------

BILL_HEADER: tuple[str, ...] = (
    "交易时间",
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    "微信订单号",
    "商户订单号",
    "用户标识",
    "交易类型",
    "交易状态",
    "付款银行",
    "货币种类",
    "应结订单金额",
    "代金券金额",
    "微信退款单号",
    "商户退款单号",
    "退款金额",
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    "手续费",
    "费率",
    "订单金额",
    "申请退款金额",
    "费率备注",
)
"""Columns of the ALL trade bill (交易账单, bill_type=ALL), in the real order."""

BILL_TOTALS_HEADER: tuple[str, ...] = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)

BILL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
FEE_RATE = Decimal("0.006")
"""The simulator's fee: 0.60% of the amount (a common WeChat Pay rate), rounded to the fen."""


class StatementError(ValueError):
    """A trade bill that does not parse or whose totals disagree with its rows."""


def yuan(text: str) -> int:
    """A bill amount in yuan (`0.01`, `-0.02`, `1.00000`) -> fen, rounding half up to the fen
    (fees carry more decimals than two). Raises StatementError."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise StatementError(f"not an amount: {text!r}") from None
    if not value.is_finite():
        raise StatementError(f"not an amount: {text!r}")
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fen_text(fen: int) -> str:
    """fen -> yuan text with two decimals, negative allowed (refunded fees)."""
    return ("-" if fen < 0 else "") + fen_to_yuan(abs(fen))


def fee_for(amount: int) -> int:
    return int((Decimal(amount) * FEE_RATE).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def bill_line(fields: Sequence[str]) -> str:
    """One data row: every field prefixed with a backtick (so spreadsheets keep long numbers
    as text); backticks and commas inside a field are not representable and are dropped."""
    return ",".join("`" + f.replace("`", "").replace(",", " ") for f in fields)


def split_bill_line(line: str) -> list[str]:
    """Split a data row into its fields (without the backticks)."""
    line = line.rstrip("\r\n")
    if not line.startswith("`"):
        raise StatementError("data row does not start with a backtick")
    return line[1:].split(",`")


@dataclass(slots=True)
class BillPayment:
    """What the simulator puts in a bill row for a payment."""

    paid_at: datetime
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    trade_state: str
    amount: int
    description: str


@dataclass(slots=True)
class BillRefund:
    refunded_at: datetime
    appid: str
    mchid: str
    transaction_id: str
    out_trade_no: str
    openid: str
    refund_id: str
    out_refund_no: str
    refund: int
    refund_status: str
    description: str


@dataclass(slots=True)
class BillWriter:
    """Renders a trade bill row by row and its totals (used by the simulator)."""

    rows: int = 0
    settlement_total: int = 0
    refund_total: int = 0
    fee_total: int = 0
    order_total: int = 0
    refund_request_total: int = 0

    @staticmethod
    def header() -> str:
        return ",".join(BILL_HEADER)

    def payment(self, p: BillPayment) -> str:
        fee = fee_for(p.amount)
        self.rows += 1
        self.settlement_total += p.amount
        self.order_total += p.amount
        self.fee_total += fee
        return bill_line(
            [
                p.paid_at.astimezone(CHINA_TZ).strftime(BILL_TIME_FORMAT),
                p.appid,
                p.mchid,
                "0",
                "",
                p.transaction_id,
                p.out_trade_no,
                p.openid,
                "NATIVE",
                p.trade_state,
                "OTHERS",
                "CNY",
                fen_text(p.amount),
                "0.00",
                "0",
                "0",
                "0.00",
                "0.00",
                "",
                "",
                p.description,
                "",
                fen_text(fee),
                "0.60%",
                fen_text(p.amount),
                "0.00",
                "",
            ]
        )

    def refund(self, r: BillRefund) -> str:
        fee = -fee_for(r.refund)
        self.rows += 1
        self.refund_total += r.refund
        self.refund_request_total += r.refund
        self.fee_total += fee
        return bill_line(
            [
                r.refunded_at.astimezone(CHINA_TZ).strftime(BILL_TIME_FORMAT),
                r.appid,
                r.mchid,
                "0",
                "",
                r.transaction_id,
                r.out_trade_no,
                r.openid,
                "NATIVE",
                "REFUND",
                "OTHERS",
                "CNY",
                "0.00",
                "0.00",
                r.refund_id,
                r.out_refund_no,
                fen_text(r.refund),
                "0.00",
                "ORIGINAL",
                r.refund_status,
                r.description,
                "",
                fen_text(fee),
                "0.60%",
                "0.00",
                fen_text(r.refund),
                "",
            ]
        )

    def totals(self) -> list[str]:
        return [
            ",".join(BILL_TOTALS_HEADER),
            bill_line(
                [
                    str(self.rows),
                    fen_text(self.settlement_total),
                    fen_text(self.refund_total),
                    "0.00",
                    fen_text(self.fee_total),
                    fen_text(self.order_total),
                    fen_text(self.refund_request_total),
                ]
            ),
        ]


@dataclass(slots=True)
class BillParser:
    """Parses a trade bill line by line into StatementLines, then checks the totals rows.

    Payment rows (交易状态 other than REFUND) give kind=payment, the 商户订单号 as the channel
    order id, the 微信订单号 as the trade no, 订单金额 as the amount and 交易状态 lowered as the
    status (`success`, or `revoked`, …). Refund rows (交易状态 REFUND) give kind=refund, the
    商户退款单号 as the channel refund id, 申请退款金额 as the amount and 退款状态 lowered as the
    status (`success`, `processing`, …). Times are China time.
    """

    columns: dict[str, int] = field(default_factory=dict)
    in_totals: bool = False
    totals: list[str] | None = None
    rows: int = 0
    order_total: int = 0
    refund_request_total: int = 0
    finished: bool = False

    def feed(self, line: str) -> StatementLine | None:
        line = line.lstrip("\ufeff").rstrip("\r\n")
        if not line.strip():
            return None
        if not self.columns:
            names = line.split(",")
            missing = [
                n for n in ("交易时间", "微信订单号", "商户订单号", "交易状态") if n not in names
            ]
            if missing:
                raise StatementError(f"bill header lacks {missing}")
            self.columns = {name: i for i, name in enumerate(names)}
            return None
        if line.startswith(BILL_TOTALS_HEADER[0]):
            self.in_totals = True
            return None
        if self.in_totals:
            if self.totals is not None:
                raise StatementError("more than one totals row")
            self.totals = split_bill_line(line)
            return None
        return self._row(split_bill_line(line))

    def _get(self, fields: list[str], name: str) -> str:
        index = self.columns.get(name)
        if index is None or index >= len(fields):
            return ""
        return fields[index].strip()

    def _row(self, fields: list[str]) -> StatementLine:
        if len(fields) < len(self.columns):
            raise StatementError("bill row has fewer fields than the header")
        try:
            occurred = datetime.strptime(self._get(fields, "交易时间"), BILL_TIME_FORMAT)
        except ValueError:
            raise StatementError("bad 交易时间") from None
        occurred_at = occurred.replace(tzinfo=CHINA_TZ)
        fee_text = self._get(fields, "手续费")
        fee = yuan(fee_text) if fee_text else None
        trade_no = self._get(fields, "微信订单号") or None
        order_id = self._get(fields, "商户订单号")
        state = self._get(fields, "交易状态")
        self.rows += 1
        if state == "REFUND":
            requested = self._get(fields, "申请退款金额") or self._get(fields, "退款金额")
            amount = yuan(requested)
            self.refund_request_total += amount
            return StatementLine(
                kind=StatementKind.REFUND,
                channel_order_id=order_id,
                channel_trade_no=trade_no,
                amount=amount,
                status=self._get(fields, "退款状态").lower(),
                channel_refund_id=self._get(fields, "商户退款单号") or None,
                fee=fee,
                occurred_at=occurred_at,
            )
        total = self._get(fields, "订单金额") or self._get(fields, "应结订单金额")
        amount = yuan(total)
        self.order_total += amount
        return StatementLine(
            kind=StatementKind.PAYMENT,
            channel_order_id=order_id,
            channel_trade_no=trade_no,
            amount=amount,
            status=state.lower(),
            fee=fee,
            occurred_at=occurred_at,
        )

    def finish(self) -> None:
        """Check the totals rows against the rows read. Raises StatementError."""
        self.finished = True
        if not self.columns:
            raise StatementError("empty bill")
        if self.totals is None:
            raise StatementError("bill has no totals row")
        totals = dict(zip(BILL_TOTALS_HEADER, self.totals, strict=False))
        try:
            count = int(totals.get("总交易单数", ""))
        except ValueError:
            raise StatementError("bad 总交易单数") from None
        if count != self.rows:
            raise StatementError(f"bill says {count} rows, has {self.rows}")
        if "订单总金额" in totals and yuan(totals["订单总金额"]) != self.order_total:
            raise StatementError("订单总金额 disagrees with the rows")
        if (
            "申请退款总金额" in totals
            and yuan(totals["申请退款总金额"]) != self.refund_request_total
        ):
            raise StatementError("申请退款总金额 disagrees with the rows")


def parse_bill(lines: Iterable[str]) -> Iterator[StatementLine]:
    """Parse a whole trade bill given line by line (checks totals at the end)."""
    parser = BillParser()
    for line in lines:
        parsed = parser.feed(line)
        if parsed is not None:
            yield parsed
    parser.finish()


def utc_now() -> datetime:
    return datetime.now(UTC)
