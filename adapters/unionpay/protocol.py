"""The UnionPay online gateway protocol (银联全渠道 5.1.0, signMethod 01), pure and I/O-free.

Shared by the adapter (the merchant's side) and the simulator (UnionPay's side).

Transactions used for merchant-presented QR payments (the "申请二维码" flow of 5.1.0: the
merchant asks UnionPay for a consumption QR code, shows it, the payer scans it with a UnionPay
app and pays; UnionPay then notifies the merchant's ``backUrl``):

=====================  ====================================  ==========================
what                   endpoint                              txnType / txnSubType
=====================  ====================================  ==========================
apply for a QR code    ``/gateway/api/backTransReq.do``      01 / 07, bizType 000000
refund (退货)          ``/gateway/api/backTransReq.do``      04 / 00, ``origQryId``
undo (消费撤销)        ``/gateway/api/backTransReq.do``      31 / 00, ``origQryId``
status query           ``/gateway/api/queryTrans.do``        00 / 00, ``orderId`` + ``txnTime``
reconciliation file    ``/gateway/api/fileTransReq.do``      76 / 01, ``settleDate`` MMDD
=====================  ====================================  ==========================

Wire format. Requests are ``application/x-www-form-urlencoded`` (UTF-8). Synchronous responses
are a *non-encoded* ``k=v&k=v`` string that the official SDKs parse with a small state machine
(values may contain ``=``, newlines and ``&`` inside ``{...}`` or ``[...]``): `parse_message`
is that parser. Notifications are ordinary URL-encoded form POSTs to ``backUrl``, acknowledged
by HTTP 200 (UnionPay retries otherwise).

Signature (signMethod 01, 5.1.0): every field but ``signature``, sorted by key, joined as
``k=v&...`` (blank values included when verifying; the SDK drops blank fields from a request
before signing it); the lower-case hex SHA-256 of that UTF-8 string is signed, as ASCII bytes,
with SHA256withRSA (PKCS#1 v1.5); the result is base64. Requests carry ``certId``, the decimal
serial number of the merchant's signing certificate. Responses and notifications carry the
signer's certificate in ``signPubKeyCert`` (PEM, CRLF line ends); the merchant checks that it is
owned by UnionPay (the third ``@``-separated part of its CN is ``中国银联股份有限公司``; the SDK's
``ifValidateCNName=false`` test mode also accepts ``00040000:SIGN``), that it is within its
validity, and that it chains to UnionPay's middle and root certificates, before verifying the
signature with it (`CertificateVerifier`). This algorithm was checked against a real production
UnionPay QR notification published in an SDK demo: it verifies with the PEM's CRLF line ends
and not with LF ones, which is why the simulator sends CRLF.

Times (``txnTime`` YYYYMMDDhhmmss, ``traceTime`` MMDDhhmmss, ``settleDate`` MMDD) are China
time (UTC+8). Amounts (``txnAmt``) are integers of fen.

The reconciliation file's format is in `adapters.unionpay.statement`.

Response codes (respCode, and origRespCode in queries): 00 success (A6 partial success);
03 / 04 / 05 still processing or unknown: query again; 34 no such transaction; the others are
errors, mapped in `ERROR_TABLE`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import parse_qsl, urlencode

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

# china_now is imported "as" itself, re-exported: the flow suite
# (tests/integration/adapters) reads it through this module.
from adapters.base import ChannelResult, Decision, NextAction, Outcome
from adapters.chinatime import CHINA_TZ
from adapters.chinatime import china_now as china_now
from adapters.kernel.calls import Call, ChannelRules
from adapters.kernel.crypto import rsa_sign, rsa_verify
from adapters.kernel.transport import Failure

# ---- constants ------------------------------------------------------------------------------

VERSION: Final = "5.1.0"
ENCODING: Final = "UTF-8"
SIGN_METHOD_RSA: Final = "01"
CURRENCY_CNY: Final = "156"
ACCESS_TYPE_MERCHANT: Final = "0"
"""accessType 0: a merchant connected directly (1: acquirer, 2: platform merchant)."""
CHANNEL_TYPE_INTERNET: Final = "07"
CHANNEL_TYPE_MOBILE: Final = "08"
BIZ_TYPE_QR: Final = "000000"
"""bizType of the QR-code products (the B2C web gateway is 000201)."""

TXN_QUERY: Final = "00"
TXN_CONSUME: Final = "01"
TXN_REFUND: Final = "04"
TXN_UNDO: Final = "31"
TXN_FILE: Final = "76"
SUB_DEFAULT: Final = "00"
SUB_QR_APPLY: Final = "07"
"""txnSubType 07 of a consumption: apply for a consumption QR code (申请消费二维码)."""
SUB_FILE_SETTLE: Final = "01"
FILE_TYPE_SETTLE: Final = "00"

BACK_TRANS_PATH: Final = "/gateway/api/backTransReq.do"
QUERY_PATH: Final = "/gateway/api/queryTrans.do"
FILE_PATH: Final = "/gateway/api/fileTransReq.do"

UNIONPAY_CN_NAME: Final = "中国银联股份有限公司"
TEST_CN_NAME: Final = "00040000:SIGN"

SUCCESS: Final = "00"
PARTIAL_SUCCESS: Final = "A6"
NOT_FOUND: Final = "34"
DUPLICATE: Final = "12"
BAD_SIGNATURE: Final = "11"
SYSTEM_FAILURE: Final = "96"
BUSY_CODES: Final = frozenset({"02", "06", "96"})
"""Closed, busy, malfunction: nothing was done; a query or a download may be asked again."""
PROCESSING_CODES: Final = frozenset({"03", "04", "05"})
"""Timed out inside UnionPay / status unknown / accepted: the result is not known yet."""

ORDER_ID_RE: Final = re.compile(r"^[0-9A-Za-z]{8,40}$")
"""orderId: 8 to 40 letters and digits (no ``-`` or ``_``)."""
TXN_TIME_RE: Final = re.compile(r"^[0-9]{14}$")
AMOUNT_RE: Final = re.compile(r"^[1-9][0-9]{0,11}$")

RESP_MESSAGES: Final[Mapping[str, str]] = {
    "00": "成功[0000000]",
    "A6": "部分成功",
    "01": "交易失败。详情请咨询95516",
    "02": "系统未开放或暂时关闭，请稍后再试",
    "03": "交易通讯超时，请发起查询交易",
    "04": "交易状态未明，请查询对账结果",
    "05": "交易已受理，请稍后查询交易结果",
    "06": "系统繁忙，请稍后再试",
    "10": "报文格式错误",
    "11": "验证签名失败",
    "12": "重复交易",
    "13": "报文交易要素缺失",
    "30": "交易未通过，请尝试使用其他银联卡支付或联系95516",
    "31": "商户状态不正确",
    "32": "无此交易权限",
    "33": "交易金额超限",
    "34": "查无此交易",
    "35": "原交易不存在或状态不正确",
    "36": "与原交易信息不符",
    "37": "已超过最大查询次数或操作过于频繁",
    "38": "银联风险受限",
    "39": "交易不在受理时间范围内",
    "45": "原交易已被撤销或冲正",
    "60": "交易失败，详情请咨询您的发卡行",
    "61": "输入的卡号无效，请确认后输入",
    "62": "交易失败，发卡银行不支持该商户",
    "63": "卡状态不正确",
    "64": "卡上的余额不足",
    "96": "系统故障，请稍后再试",
    "98": "文件不存在",
    "99": "通用错误",
}

ERROR_TABLE: Final[Mapping[str, Decision]] = {
    # the request was refused by the platform itself: nothing exists at UnionPay, another
    # channel may take the payment
    "02": Decision.FAILOVER,  # system closed
    "06": Decision.FAILOVER,  # system busy
    "10": Decision.FAILOVER,  # malformed message (our integration with this channel)
    "11": Decision.FAILOVER,  # signature refused (our certificate at this channel)
    "13": Decision.FAILOVER,  # missing elements
    "31": Decision.FAILOVER,  # merchant status incorrect
    "32": Decision.FAILOVER,  # no permission for this transaction
    "33": Decision.FAILOVER,  # amount over this channel's limit
    "39": Decision.FAILOVER,  # outside the acceptance hours
    "96": Decision.FAILOVER,  # system malfunction (the simulator's injected error)
    "99": Decision.FAILOVER,  # generic platform error
    # not known yet: ask again (query), never elsewhere
    "03": Decision.RETRY,
    "04": Decision.RETRY,
    "05": Decision.RETRY,
    "37": Decision.RETRY,  # too many queries / too frequent
    # definitive answers for this payment or refund
    "01": Decision.FINAL,  # transaction failed
    "12": Decision.FINAL,  # duplicate orderId: the first one stands
    "30": Decision.FINAL,  # declined
    "34": Decision.FINAL,  # no such transaction
    "35": Decision.FINAL,  # original missing or in the wrong state
    "36": Decision.FINAL,  # does not match the original
    "38": Decision.FINAL,  # UnionPay risk control
    "45": Decision.FINAL,  # original undone or reversed
    "60": Decision.FINAL,
    "61": Decision.FINAL,
    "62": Decision.FINAL,
    "63": Decision.FINAL,
    "64": Decision.FINAL,
    "98": Decision.FINAL,  # no such file
}
"""respCode -> what the gateway may do. Codes not listed are FINAL (a definitive refusal is the
safe reading of an answer we do not know: nothing is retried or created elsewhere)."""


RULES = ChannelRules(
    # Only queries and statements are repeated after an attempt that may have acted: UnionPay
    # refuses a repeated orderId (respCode 12), so a repeated create could never return the QR
    # code, nor a repeated refund or undo its answer. Their UNKNOWN outcome is settled by a
    # query instead (and a refund or undo answered 12 is settled by one at once).
    repeatable=frozenset({Call.QUERY, Call.REFUND_QUERY, Call.STATEMENT}),
    failure_codes={
        Failure.NOT_SENT: "CONNECTION_FAILED",
        Failure.HTTP_REFUSED: "HTTP_STATUS",
        Failure.HTTP_UNAVAILABLE: "HTTP_STATUS",
        Failure.TIMEOUT: "NO_ANSWER",
        Failure.DROPPED: "NO_ANSWER",
        Failure.HTTP_ERROR: "HTTP_5XX",
        Failure.BAD_SIGNATURE: "INVALID_SIGNATURE",
        Failure.BAD_ANSWER: "MALFORMED_RESPONSE",
    },
)
"""What the adapter kernel asks of this channel."""


def decision_for(code: str) -> Decision:
    return ERROR_TABLE.get(code, Decision.FINAL)


def resp_message(code: str) -> str:
    return RESP_MESSAGES.get(code, "交易失败")


# ---- amounts and times ----------------------------------------------------------------------


def format_amount(fen: int) -> str:
    """txnAmt: an integer of fen, no decimal point. 1999 -> "1999"."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0 or fen >= 10**12:
        raise ValueError(f"txnAmt must be a positive integer of fen below 10^12, got {fen!r}")
    return str(fen)


def parse_amount(text: str) -> int:
    """ "1999" -> 1999. Raises ValueError on decimals, signs, leading zeros or blanks."""
    if not isinstance(text, str) or not AMOUNT_RE.match(text):
        raise ValueError(f"not a txnAmt of fen: {text!r}")
    return int(text)


def format_txn_time(moment: datetime) -> str:
    """YYYYMMDDhhmmss in China time."""
    return moment.astimezone(CHINA_TZ).strftime("%Y%m%d%H%M%S")


def parse_txn_time(text: str) -> datetime:
    if not TXN_TIME_RE.match(text):
        raise ValueError(f"not a YYYYMMDDhhmmss time: {text!r}")
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=CHINA_TZ)


def parse_trace_time(trace_time: str, reference: datetime) -> datetime | None:
    """traceTime (MMDDhhmmss, China time) has no year: take the first such moment not before
    `reference` minus a day (the order's txnTime), which handles the turn of a year."""
    if not re.fullmatch(r"[0-9]{10}", trace_time or ""):
        return None
    ref = reference.astimezone(CHINA_TZ)
    for year in (ref.year, ref.year + 1):
        try:
            moment = datetime.strptime(f"{year}{trace_time}", "%Y%m%d%H%M%S").replace(
                tzinfo=CHINA_TZ
            )
        except ValueError:
            continue
        if moment >= ref - timedelta(days=1):
            return moment
    return None


# ---- order ids ------------------------------------------------------------------------------

_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_ID_BODY_LEN = 24
_ID_TIME_LEN = 10


def attempt_order_id(payment_id: str, seq: int) -> str:
    """The orderId of attempt `seq` of a payment: the payment id without its ``_`` (orderId
    allows letters and digits only) and the attempt number on two digits:
    ``pay_01jd...x_1`` -> ``pay01jd...x01`` (29 characters for the gateway's ids)."""
    if not 1 <= seq <= 99:
        raise ValueError(f"attempt number out of range: {seq}")
    order_id = re.sub(r"[^0-9A-Za-z]", "", payment_id) + f"{seq:02d}"
    if not ORDER_ID_RE.match(order_id):
        raise ValueError(f"cannot make a UnionPay orderId of {payment_id!r}")
    return order_id


def refund_order_id(refund_id: str) -> str:
    """A refund is a transaction with its own orderId: ``re_01jd...`` -> ``re01jd...``."""
    order_id = re.sub(r"[^0-9A-Za-z]", "", refund_id)
    if not ORDER_ID_RE.match(order_id):
        raise ValueError(f"cannot make a UnionPay orderId of {refund_id!r}")
    return order_id


def undo_order_id(order_id: str) -> str:
    """The orderId of the undo (31) that closes `order_id`: the order id and ``C``. The
    gateway's ids are lower case, so the upper-case suffix cannot collide with one of them."""
    return (order_id if len(order_id) < 40 else order_id[:39]) + "C"


def id_time(body: str) -> datetime | None:
    """The creation time embedded in a gateway id body (24 characters of Crockford base32, the
    first 10 of which are milliseconds since the epoch), or None when `body` is not one."""
    body = body.lower()
    if len(body) != _ID_BODY_LEN or any(c not in _ID_ALPHABET for c in body):
        return None
    millis = 0
    for char in body[:_ID_TIME_LEN]:
        millis = millis * 32 + _ID_ALPHABET.index(char)
    try:
        moment = datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    if not datetime(2020, 1, 1, tzinfo=UTC) <= moment <= datetime.now(UTC) + timedelta(days=1):
        return None
    return moment


def attempt_txn_time(order_id: str) -> str | None:
    """The txnTime of an attempt made by `attempt_order_id`: the payment's creation time, China
    time, read back from the order id itself (UnionPay keys a transaction by orderId *and*
    txnTime, and the adapter interface passes only the order id to queries)."""
    moment = id_time(order_id[-(_ID_BODY_LEN + 2) : -2]) if len(order_id) > 26 else None
    return format_txn_time(moment) if moment else None


def refund_txn_time(order_id: str) -> str | None:
    """The txnTime of a refund made by `refund_order_id` (the refund's creation time)."""
    moment = id_time(order_id[-_ID_BODY_LEN:]) if len(order_id) > _ID_BODY_LEN else None
    return format_txn_time(moment) if moment else None


# ---- message encoding -----------------------------------------------------------------------


def encode_form(fields: Mapping[str, str]) -> bytes:
    """A request or a notification body (application/x-www-form-urlencoded, UTF-8)."""
    return urlencode(list(fields.items()), encoding="utf-8").encode("ascii")


def parse_form(body: bytes) -> dict[str, str]:
    """Parse a URL-encoded form. Raises ValueError on bad encoding or repeated keys."""
    text = body.decode("utf-8")
    fields: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict"):
        if key in fields:
            raise ValueError(f"field {key!r} given twice")
        fields[key] = value
    return fields


def encode_message(fields: Mapping[str, str]) -> str:
    """A synchronous response body as UnionPay sends it: ``k=v&k=v``, not URL-encoded."""
    for key, value in fields.items():
        if "=" in key or "&" in key or not key:
            raise ValueError(f"bad field name {key!r}")
        if "&" in value and not (value.startswith(("{", "[")) and value.endswith(("}", "]"))):
            raise ValueError(f"field {key!r} has a bare '&' and would not parse")
    return "&".join(f"{key}={fields[key]}" for key in sorted(fields))


def parse_message(text: str) -> dict[str, str]:
    """Parse a synchronous response the way the official SDKs do (``SDKUtil.parseQString``):
    the first ``=`` ends a key; ``&`` ends a value unless inside ``{...}`` or ``[...]``."""
    fields: dict[str, str] = {}
    buf: list[str] = []
    key: str | None = None
    in_key = True
    closing: str | None = None
    for char in text:
        if in_key:
            if char == "=":
                key = "".join(buf)
                buf.clear()
                in_key = False
            else:
                buf.append(char)
            continue
        if closing is not None:
            if char == closing:
                closing = None
        elif char == "{":
            closing = "}"
        elif char == "[":
            closing = "]"
        if char == "&" and closing is None:
            _put(fields, key, buf)
            buf.clear()
            in_key = True
        else:
            buf.append(char)
    if not in_key:
        _put(fields, key, buf)
    elif buf:
        raise ValueError("response ends inside a key")
    return fields


def _put(fields: dict[str, str], key: str | None, buf: list[str]) -> None:
    if not key:
        raise ValueError("empty key in response")
    fields[key] = "".join(buf)


# ---- signatures -----------------------------------------------------------------------------


class SignatureError(Exception):
    """A message's signature or signer certificate did not verify. The text says why (it never
    contains key material)."""


def signing_string(fields: Mapping[str, str]) -> str:
    """Every field but ``signature``, sorted by key, as ``k=v&k=v``."""
    return "&".join(f"{key}={fields[key]}" for key in sorted(fields) if key != "signature")


def signed_digest(fields: Mapping[str, str]) -> bytes:
    """What signMethod 01 signs: the lower-case hex SHA-256 of the signing string, as ASCII."""
    return hashlib.sha256(signing_string(fields).encode("utf-8")).hexdigest().encode("ascii")


def sign(key: rsa.RSAPrivateKey, fields: Mapping[str, str]) -> str:
    """signMethod 01: the kernel's SHA256withRSA over `signed_digest` (key first)."""
    return rsa_sign(key, signed_digest(fields))


def verify(key: rsa.RSAPublicKey, fields: Mapping[str, str]) -> bool:
    """Whether `fields["signature"]` is `key`'s signMethod 01 signature of the fields."""
    return rsa_verify(key, signed_digest(fields), fields.get("signature", ""))


def cert_id(cert: x509.Certificate) -> str:
    """certId: the certificate's serial number in decimal (``getSerialNumber().toString()``)."""
    return str(cert.serial_number)


def cert_pem(cert: x509.Certificate) -> str:
    """A certificate as UnionPay sends it in ``signPubKeyCert``: PEM with CRLF line ends."""
    text = cert.public_bytes(Encoding.PEM).decode("ascii").strip()
    return "\r\n".join(text.splitlines())


def sign_request(
    fields: Mapping[str, str], key: rsa.RSAPrivateKey, signer_cert_id: str
) -> dict[str, str]:
    """A merchant request ready to send: blank fields dropped (the SDK's ``filterBlank``),
    ``certId`` set, ``signature`` added."""
    out = {k: v for k, v in fields.items() if v != "" and k != "signature"}
    out["certId"] = signer_cert_id
    out["signature"] = sign(key, out)
    return out


def sign_with_cert(
    fields: Mapping[str, str], key: rsa.RSAPrivateKey, signer_pem: str
) -> dict[str, str]:
    """A UnionPay response or notification: ``signPubKeyCert`` set, ``signature`` added."""
    out = {k: v for k, v in fields.items() if k != "signature"}
    out["signPubKeyCert"] = signer_pem
    out["signature"] = sign(key, out)
    return out


def cn_owner(cert: x509.Certificate) -> str:
    """The owner part of a UnionPay certificate's CN (``041@<no>@<owner>@<serial>``): the
    third ``@``-separated part, as the SDK's ``getIdentitiesFromCertficate`` reads it."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return ""
    value = names[0].value
    text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    parts = text.split("@")
    return parts[2] if len(parts) > 2 else ""


def _within(cert: x509.Certificate, moment: datetime) -> bool:
    return cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


class CertificateVerifier:
    """Checks UnionPay's signer certificates (``signPubKeyCert``) the way the SDK's
    ``CertUtil.verifyAndGetVerifyPubKey`` does: owner (CN), validity, chain to the trusted
    middle and root certificates; then the message signature with its key.

    Verified certificates are cached by their PEM text (as the SDK does); the validity window
    is checked again on every use.
    """

    _CACHE_SIZE = 32

    def __init__(
        self,
        root: x509.Certificate,
        middle: x509.Certificate,
        *,
        validate_cn: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        try:
            root.verify_directly_issued_by(root)
            middle.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValueError(f"the middle certificate is not issued by the root: {exc}") from exc
        if not _is_ca(root) or not _is_ca(middle):
            raise ValueError("the root and middle certificates must be CA certificates")
        self._root = root
        self._middle = middle
        self._validate_cn = validate_cn
        self._clock = clock or (lambda: datetime.now(UTC))
        self._cache: dict[str, tuple[x509.Certificate, rsa.RSAPublicKey]] = {}

    def signer_key(self, pem: str) -> rsa.RSAPublicKey:
        """The public key of a trusted UnionPay signer certificate. Raises SignatureError."""
        now = self._clock()
        for ca in (self._root, self._middle):
            if not _within(ca, now):
                raise SignatureError("a trusted CA certificate is outside its validity")
        cached = self._cache.get(pem)
        if cached is not None:
            cert, key = cached
            if not _within(cert, now):
                raise SignatureError("signPubKeyCert is outside its validity")
            return key
        if not pem:
            raise SignatureError("no signPubKeyCert")
        try:
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except ValueError as exc:
            raise SignatureError("signPubKeyCert is not a PEM certificate") from exc
        owner = cn_owner(cert)
        allowed = {UNIONPAY_CN_NAME} if self._validate_cn else {UNIONPAY_CN_NAME, TEST_CN_NAME}
        if owner not in allowed:
            raise SignatureError(f"signPubKeyCert is not owned by UnionPay (CN owner {owner!r})")
        if not _within(cert, now):
            raise SignatureError("signPubKeyCert is outside its validity")
        try:
            cert.verify_directly_issued_by(self._middle)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise SignatureError("signPubKeyCert does not chain to the trusted CA") from exc
        public_key = cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureError("signPubKeyCert does not hold an RSA key")
        if len(self._cache) >= self._CACHE_SIZE:
            self._cache.clear()
        self._cache[pem] = (cert, public_key)
        return public_key

    def verify_message(self, fields: Mapping[str, str]) -> None:
        """Verify a response or notification signed by UnionPay. Raises SignatureError."""
        if fields.get("signMethod") != SIGN_METHOD_RSA:
            raise SignatureError(f"unsupported signMethod {fields.get('signMethod')!r}")
        if not fields.get("signature"):
            raise SignatureError("no signature")
        key = self.signer_key(fields.get("signPubKeyCert", ""))
        if not verify(key, fields):
            raise SignatureError("the signature does not match the message")


# ---- results --------------------------------------------------------------------------------


def _amount(fields: Mapping[str, str]) -> int | None:
    try:
        return parse_amount(fields.get("txnAmt", ""))
    except ValueError:
        return None


def _paid_at(fields: Mapping[str, str]) -> datetime | None:
    try:
        reference = parse_txn_time(fields.get("txnTime", ""))
    except ValueError:
        return None
    return parse_trace_time(fields.get("traceTime", ""), reference)


def _message(fields: Mapping[str, str], key: str = "respMsg") -> str | None:
    return fields.get(key) or None


def create_result(fields: Mapping[str, str]) -> ChannelResult:
    """The answer to a QR-code application (01/07). Processing codes and a duplicate come
    back UNKNOWN + RETRY: the order may exist, and only a later query can tell (the status
    sync asks)."""
    code = fields.get("respCode", "")
    raw = dict(fields)
    if code == SUCCESS:
        qr = fields.get("qrCode", "")
        if not qr:
            return ChannelResult(
                Outcome.UNKNOWN, Decision.RETRY, code, "success without a qrCode", raw=raw
            )
        return ChannelResult(
            Outcome.WAITING,
            Decision.FINAL,
            code,
            _message(fields),
            next_action=NextAction("qr_code", qr),
            amount=_amount(fields),
            raw=raw,
        )
    if code in PROCESSING_CODES or code == DUPLICATE:
        return ChannelResult(Outcome.UNKNOWN, Decision.RETRY, code, _message(fields), raw=raw)
    return refusal(code, _message(fields), raw)


def refusal(code: str, message: str | None, raw: Mapping[str, str]) -> ChannelResult:
    """An error answer to a request that changes something: FAILED when ERROR_TABLE says it
    is final, else SYSTEM_ERROR (nothing happened) with the table's decision."""
    decision = decision_for(code)
    if decision is Decision.FINAL:
        return ChannelResult(Outcome.FAILED, Decision.FINAL, code, message, raw=dict(raw))
    return ChannelResult(Outcome.SYSTEM_ERROR, decision, code, message, raw=dict(raw))


def query_result(fields: Mapping[str, str]) -> ChannelResult:
    """The answer to a status query (00) of a payment or a refund: respCode says whether the
    query worked, origRespCode what became of the transaction."""
    code = fields.get("respCode", "")
    raw = dict(fields)
    if code == SUCCESS:
        orig = fields.get("origRespCode", "")
        trade_no = fields.get("queryId") or None
        if orig in (SUCCESS, PARTIAL_SUCCESS):
            return ChannelResult(
                Outcome.SUCCEEDED,
                Decision.FINAL,
                orig,
                _message(fields, "origRespMsg"),
                channel_trade_no=trade_no,
                amount=_amount(fields),
                paid_at=_paid_at(fields),
                raw=raw,
            )
        if not orig:
            return ChannelResult(
                Outcome.UNKNOWN, Decision.RETRY, code, "query answer without origRespCode", raw=raw
            )
        if orig in PROCESSING_CODES:
            return ChannelResult(
                Outcome.WAITING,
                Decision.RETRY,
                orig,
                _message(fields, "origRespMsg"),
                channel_trade_no=trade_no,
                raw=raw,
            )
        return ChannelResult(
            Outcome.FAILED,
            Decision.FINAL,
            orig,
            _message(fields, "origRespMsg"),
            channel_trade_no=trade_no,
            raw=raw,
        )
    if code == NOT_FOUND:
        return ChannelResult(Outcome.FAILED, Decision.FINAL, code, _message(fields), raw=raw)
    decision = Decision.FINAL if decision_for(code) is Decision.FINAL else Decision.RETRY
    return ChannelResult(Outcome.UNKNOWN, decision, code, _message(fields), raw=raw)


def refund_result(fields: Mapping[str, str]) -> ChannelResult:
    """The answer to a refund (04). Refunds are asynchronous: 00 means accepted (WAITING); the
    result comes by notification or query."""
    code = fields.get("respCode", "")
    raw = dict(fields)
    if code == SUCCESS:
        return ChannelResult(
            Outcome.WAITING,
            Decision.RETRY,
            code,
            _message(fields),
            channel_trade_no=fields.get("queryId") or None,
            amount=_amount(fields),
            raw=raw,
        )
    if code in PROCESSING_CODES or code == DUPLICATE:
        return ChannelResult(Outcome.UNKNOWN, Decision.RETRY, code, _message(fields), raw=raw)
    return refusal(code, _message(fields), raw)


def notification_result(fields: Mapping[str, str]) -> ChannelResult:
    """A payment or refund notification: respCode 00 (or A6) is success, anything else a
    failure of that transaction."""
    code = fields.get("respCode", "")
    raw = dict(fields)
    if code in (SUCCESS, PARTIAL_SUCCESS):
        return ChannelResult(
            Outcome.SUCCEEDED,
            Decision.FINAL,
            code,
            _message(fields),
            channel_trade_no=fields.get("queryId") or None,
            amount=_amount(fields),
            paid_at=_paid_at(fields),
            raw=raw,
        )
    return ChannelResult(
        Outcome.FAILED,
        Decision.FINAL,
        code,
        _message(fields),
        channel_trade_no=fields.get("queryId") or None,
        raw=raw,
    )
