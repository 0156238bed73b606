"""The Alipay open API (public-key mode, RSA2) as used for face-to-face QR payments: pure and
I/O-free, shared by the adapter (the gateway's side) and the simulator (Alipay's side).

What the real channel does
--------------------------

- **One endpoint**, `https://openapi.alipay.com/gateway.do`. Every call is a set of form (or
  query-string) parameters: the common ones `app_id`, `method`, `format=JSON`,
  `charset=utf-8`, `sign_type=RSA2`, `timestamp` ("yyyy-MM-dd HH:mm:ss", China time),
  `version=1.0`, optionally `notify_url`, plus `biz_content` (the method's own parameters as a
  JSON object) and `sign`.
- **Request signature (RSA2)**: SHA256withRSA (RSASSA-PKCS1-v1_5) with the application's
  private key over `k1=v1&k2=v2&...`: every parameter except `sign` whose value is not empty,
  sorted by key, values raw (not URL-encoded). The signature is standard base64.
- **Responses** are JSON `{"<method with '.' replaced by '_'>_response": {...}, "sign": "..."}`.
  The signature is made with Alipay's private key over the *exact text* of the response node as
  it appears in the body, so a verifier must cut that substring out of the body (re-serialising
  the parsed JSON would not reproduce it). `extract_response` does this with a real JSON scanner
  (python-alipay-sdk counts braces, which a `}` inside a string value would fool).
- **Codes**: `code` 10000 success; 20000 service unavailable (`isp.unknow-error`, sic); 20001
  auth token; 40001 missing argument; 40002 invalid argument (e.g. `isv.invalid-signature`);
  40003 conditions; 40004 business failure with a `sub_code` such as `ACQ.TRADE_NOT_EXIST`;
  40005 call limited; 40006 insufficient permissions. HTTP status is 200 for all of them.
- **Asynchronous notification**: a form POST (`application/x-www-form-urlencoded;
  charset=utf-8`) to `notify_url` with `notify_type=trade_status_sync`, `notify_id`,
  `notify_time`, `app_id`, `trade_no`, `out_trade_no`, `trade_status`, amounts in yuan, and
  `sign_type` / `sign`. Verification drops `sign` and `sign_type`, sorts and joins the rest
  (non-empty values) and verifies with Alipay's public key. Refunds come as the same
  notification on the same trade, with `out_biz_no` (the refund's `out_request_no`),
  `refund_fee` (the trade's *total* refunded so far) and `gmt_refund`; a full refund shows
  `trade_status=TRADE_CLOSED`. The merchant answers the plain text `success`; anything else
  and Alipay sends it again after 4m, 10m, 10m, 1h, 2h, 6h and 15h.
- **Precreate** creates a pre-order and returns `qr_code`; the real Alipay only creates the
  *trade* when a buyer scans the code, so until then `alipay.trade.query` and
  `alipay.trade.close` answer `ACQ.TRADE_NOT_EXIST`. `map_response` therefore reads
  `ACQ.TRADE_NOT_EXIST` as WAITING on a query (keep polling, as Alipay's face-to-face demo does)
  and as SUCCEEDED on a close (there is nothing left to close; the QR expires at
  `time_expire`). The simulator creates the trade at precreate (see `simulator`).
- **Statements**: `alipay.data.dataservice.bill.downloadurl.query` (`bill_type=trade`,
  `bill_date`) returns a short-lived `bill_download_url`; the file is a zip of GBK CSVs whose
  detail file has `#` comment lines before and after a table of the day's trades and refunds.
  `adapters.alipay.bill` reads that table line by line.

Amounts travel as yuan strings with two decimals and are converted exactly with
`adapters.money` (never floats).
"""

from __future__ import annotations

import codecs
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.asymmetric import rsa

# Names imported "as" themselves are re-exported: the flow and SDK suites
# (tests/integration/adapters) read them through this module.
from adapters.base import (
    ChannelResult,
    Decision,
    NextAction,
    Notification,
    NotificationKind,
    NotificationRejected,
    Outcome,
)
from adapters.chinatime import CHINA_TZ
from adapters.chinatime import china_date as china_date
from adapters.kernel.calls import Call, ChannelRules
from adapters.kernel.crypto import load_private_key as load_private_key
from adapters.kernel.crypto import load_public_key as load_public_key
from adapters.kernel.crypto import rsa_sign, rsa_verify
from adapters.kernel.transport import Failure
from adapters.money import yuan_to_fen

# ---- constants ---------------------------------------------------------------------------

GATEWAY_PATH = "/gateway.do"
"""The one API endpoint, relative to the channel's base URL (`https://openapi.alipay.com`)."""

CHARSET = "utf-8"
SIGN_TYPE = "RSA2"
VERSION = "1.0"
FORMAT = "JSON"

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
"""Alipay's clock: every timestamp on the wire is China time (`CHINA_TZ`), without an offset."""

PRECREATE = "alipay.trade.precreate"
QUERY = "alipay.trade.query"
CLOSE = "alipay.trade.close"
REFUND = "alipay.trade.refund"
REFUND_QUERY = "alipay.trade.fastpay.refund.query"
BILL_URL_QUERY = "alipay.data.dataservice.bill.downloadurl.query"
METHODS = (PRECREATE, QUERY, CLOSE, REFUND, REFUND_QUERY, BILL_URL_QUERY)

PRODUCT_CODE_F2F = "FACE_TO_FACE_PAYMENT"

# trade_status values
WAIT_BUYER_PAY = "WAIT_BUYER_PAY"
TRADE_SUCCESS = "TRADE_SUCCESS"
TRADE_FINISHED = "TRADE_FINISHED"
TRADE_CLOSED = "TRADE_CLOSED"
TRADE_STATUSES = (WAIT_BUYER_PAY, TRADE_SUCCESS, TRADE_FINISHED, TRADE_CLOSED)

REFUND_SUCCESS = "REFUND_SUCCESS"

NOTIFY_TYPE = "trade_status_sync"
NOTIFY_SCHEDULE_S: tuple[float, ...] = (240, 600, 600, 3600, 7200, 21600, 54000)
"""Alipay's retry schedule for an unacknowledged notification: 4m, 10m, 10m, 1h, 2h, 6h, 15h
(eight notifications in about 25 hours)."""

ACK_SUCCESS = b"success"
ACK_FAILURE = b"failure"

# codes
CODE_SUCCESS = "10000"
CODE_UNAVAILABLE = "20000"
CODE_AUTH = "20001"
CODE_MISSING = "40001"
CODE_INVALID = "40002"
CODE_CONDITIONS = "40003"
CODE_BUSINESS = "40004"
CODE_LIMITED = "40005"
CODE_PERMISSIONS = "40006"

CODE_MESSAGES: Mapping[str, str] = {
    CODE_SUCCESS: "Success",
    CODE_UNAVAILABLE: "Service Currently Unavailable",
    CODE_AUTH: "Insufficient Token Permissions",
    CODE_MISSING: "Missing Required Arguments",
    CODE_INVALID: "Invalid Arguments",
    CODE_CONDITIONS: "Insufficient Conditions",
    CODE_BUSINESS: "Business Failed",
    CODE_LIMITED: "Call Limited",
    CODE_PERMISSIONS: "Insufficient Permissions",
}

INVALID_SIGNATURE = "INVALID_SIGNATURE"
"""Our own `channel_code` for a response whose signature is missing or does not verify."""

# sub codes used by both sides
SUB_UNKNOWN_ERROR = "isp.unknow-error"  # sic, as Alipay spells it
SUB_SYSTEM_ERROR = "ACQ.SYSTEM_ERROR"
SUB_INVALID_PARAMETER = "ACQ.INVALID_PARAMETER"
SUB_TRADE_NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
SUB_TRADE_HAS_SUCCESS = "ACQ.TRADE_HAS_SUCCESS"
SUB_TRADE_HAS_CLOSE = "ACQ.TRADE_HAS_CLOSE"
SUB_TRADE_HAS_FINISHED = "ACQ.TRADE_HAS_FINISHED"
SUB_TRADE_STATUS_ERROR = "ACQ.TRADE_STATUS_ERROR"
SUB_CONTEXT_INCONSISTENT = "ACQ.CONTEXT_INCONSISTENT"
SUB_TOTAL_FEE_EXCEED = "ACQ.TOTAL_FEE_EXCEED"
SUB_REFUND_AMT_NOT_EQUAL_TOTAL = "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
SUB_REFUND_FEE_ERR = "ACQ.REASON_TRADE_REFUND_FEE_ERR"
SUB_DISCORDANT_REPEAT_REQUEST = "ACQ.DISCORDANT_REPEAT_REQUEST"
SUB_SELLER_BALANCE_NOT_ENOUGH = "ACQ.SELLER_BALANCE_NOT_ENOUGH"
SUB_BILL_NOT_EXIST = "isp.bill_not_exist"

SUB_MESSAGES: Mapping[str, str] = {
    SUB_UNKNOWN_ERROR: "系统繁忙",
    SUB_SYSTEM_ERROR: "系统错误",
    SUB_INVALID_PARAMETER: "参数无效",
    SUB_TRADE_NOT_EXIST: "交易不存在",
    SUB_TRADE_HAS_SUCCESS: "交易已被支付",
    SUB_TRADE_HAS_CLOSE: "交易已经关闭",
    SUB_TRADE_HAS_FINISHED: "交易已完结",
    SUB_TRADE_STATUS_ERROR: "交易状态不合法",
    SUB_CONTEXT_INCONSISTENT: "交易信息被篡改",
    SUB_TOTAL_FEE_EXCEED: "订单金额超过限额",
    SUB_REFUND_AMT_NOT_EQUAL_TOTAL: "撤销或退款金额与订单金额不一致",
    SUB_REFUND_FEE_ERR: "退款金额无效",
    SUB_DISCORDANT_REPEAT_REQUEST: "不一致的请求",
    SUB_SELLER_BALANCE_NOT_ENOUGH: "卖家余额不足",
    SUB_BILL_NOT_EXIST: "账单不存在",
    "isv.missing-method": "缺少方法名参数",
    "isv.invalid-method": "不存在的方法名",
    "isv.invalid-format": "无效数据格式",
    "isv.missing-signature": "缺少签名参数",
    "isv.missing-signature-type": "缺少签名类型参数",
    "isv.invalid-signature": "无效签名",
    "isv.invalid-signature-type": "无效签名类型",
    "isv.missing-app-id": "缺少AppID参数",
    "isv.invalid-app-id": "无效的AppID参数",
    "isv.missing-timestamp": "缺少时间戳参数",
    "isv.invalid-timestamp": "非法的时间戳参数",
    "isv.invalid-charset": "字符集错误",
}

# ---- error table -------------------------------------------------------------------------

ERROR_TABLE: Mapping[str, Decision] = {
    # public codes (used when the sub_code is not listed below)
    CODE_UNAVAILABLE: Decision.RETRY,  # service unavailable: nothing done, ask again
    CODE_AUTH: Decision.FAILOVER,  # this channel's credentials are wrong
    CODE_MISSING: Decision.FAILOVER,  # refused at the door: nothing created here
    CODE_INVALID: Decision.FAILOVER,
    CODE_CONDITIONS: Decision.FAILOVER,  # the application's state does not allow the call
    CODE_BUSINESS: Decision.FINAL,
    CODE_LIMITED: Decision.RETRY,  # rate limited: back off and ask again
    CODE_PERMISSIONS: Decision.FAILOVER,
    # 20000 details
    SUB_UNKNOWN_ERROR: Decision.RETRY,
    "aop.unknow-error": Decision.RETRY,
    "aop.ACQ.SYSTEM_ERROR": Decision.RETRY,
    # security-mechanism errors: this channel's configuration (keys, app id) is at fault
    "aop.invalid-auth-token": Decision.FAILOVER,
    "aop.auth-token-time-out": Decision.FAILOVER,
    "isv.missing-method": Decision.FAILOVER,
    "isv.invalid-method": Decision.FAILOVER,
    "isv.invalid-format": Decision.FAILOVER,
    "isv.missing-signature": Decision.FAILOVER,
    "isv.missing-signature-type": Decision.FAILOVER,
    "isv.missing-signature-key": Decision.FAILOVER,
    "isv.invalid-signature": Decision.FAILOVER,
    "isv.invalid-signature-type": Decision.FAILOVER,
    "isv.missing-app-id": Decision.FAILOVER,
    "isv.invalid-app-id": Decision.FAILOVER,
    "isv.missing-timestamp": Decision.FAILOVER,
    "isv.invalid-timestamp": Decision.FAILOVER,
    "isv.invalid-charset": Decision.FAILOVER,
    "isv.invalid-app-state": Decision.FAILOVER,
    "isv.insufficient-isv-permissions": Decision.FAILOVER,
    # 40004 business failures
    SUB_SYSTEM_ERROR: Decision.RETRY,  # "system error: call again with the same parameters"
    SUB_INVALID_PARAMETER: Decision.FINAL,
    "ACQ.ACCESS_FORBIDDEN": Decision.FAILOVER,  # this merchant account may not do this
    "ACQ.PARTNER_ERROR": Decision.FAILOVER,  # app id / partner mismatch: configuration
    SUB_TOTAL_FEE_EXCEED: Decision.FAILOVER,  # this account's limit; another channel may take it
    "ACQ.EXIST_FORBIDDEN_WORD": Decision.FINAL,
    SUB_CONTEXT_INCONSISTENT: Decision.FINAL,
    SUB_TRADE_HAS_SUCCESS: Decision.FINAL,
    SUB_TRADE_HAS_CLOSE: Decision.FINAL,
    SUB_TRADE_HAS_FINISHED: Decision.FINAL,
    SUB_TRADE_NOT_EXIST: Decision.FINAL,
    SUB_TRADE_STATUS_ERROR: Decision.FINAL,
    SUB_REFUND_AMT_NOT_EQUAL_TOTAL: Decision.FINAL,
    SUB_REFUND_FEE_ERR: Decision.FINAL,
    "ACQ.REFUND_FEE_ERROR": Decision.FINAL,
    SUB_DISCORDANT_REPEAT_REQUEST: Decision.FINAL,
    SUB_SELLER_BALANCE_NOT_ENOUGH: Decision.FINAL,
    "ACQ.REASON_TRADE_BEEN_FREEZEN": Decision.FINAL,
    "ACQ.TRADE_NOT_ALLOW_REFUND": Decision.FINAL,
    SUB_BILL_NOT_EXIST: Decision.FINAL,
}
"""Alipay code or sub_code -> what the gateway may do after it. A sub_code entry wins over its
code's entry; an unlisted code is RETRY for 2xxxx (service side) and FINAL otherwise.
`map_response` turns the decision into an outcome per call: at precreate RETRY and FAILOVER
both mean nothing was created (SYSTEM_ERROR + FAILOVER)."""


def decision_for(code: str, sub_code: str | None = None) -> Decision:
    if sub_code and sub_code in ERROR_TABLE:
        return ERROR_TABLE[sub_code]
    if code in ERROR_TABLE:
        return ERROR_TABLE[code]
    return Decision.RETRY if code.startswith("2") else Decision.FINAL


def is_retryable_answer(node: Mapping[str, Any]) -> bool:
    """An answer that says "nothing was done, ask again" (20000, ACQ.SYSTEM_ERROR, 40005)."""
    code = str(node.get("code", ""))
    if code == CODE_SUCCESS:
        return False
    sub = node.get("sub_code")
    return decision_for(code, sub if isinstance(sub, str) else None) is Decision.RETRY


# ---- keys and signatures -----------------------------------------------------------------


def sign(content: str, key: rsa.RSAPrivateKey) -> str:
    """RSA2 over the UTF-8 bytes of `content` (the kernel's SHA256withRSA). Content first, as
    the SDKs' `sign(content)` and the suites that pin it against them."""
    return rsa_sign(key, content.encode("utf-8"))


def verify(content: str, signature: str, key: rsa.RSAPublicKey) -> bool:
    return rsa_verify(key, content.encode("utf-8"), signature)


def _join_sorted(params: Mapping[str, str], exclude: frozenset[str]) -> str:
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in exclude and params[k])


def request_sign_content(params: Mapping[str, str]) -> str:
    """What a request's signature covers: every non-empty parameter but `sign`, sorted by key
    (`sign_type` is included), values raw."""
    return _join_sorted(params, frozenset({"sign"}))


def notification_sign_content(params: Mapping[str, str]) -> str:
    """What a notification's signature covers: every non-empty parameter but `sign` and
    `sign_type`, sorted by key, values raw (URL-decoded)."""
    return _join_sorted(params, frozenset({"sign", "sign_type"}))


def sign_request(params: Mapping[str, str], key: rsa.RSAPrivateKey) -> dict[str, str]:
    signed = dict(params)
    signed["sign"] = sign(request_sign_content(params), key)
    return signed


def verify_request(params: Mapping[str, str], key: rsa.RSAPublicKey) -> bool:
    signature = params.get("sign")
    return bool(signature) and verify(request_sign_content(params), signature or "", key)


def sign_notification(params: Mapping[str, str], key: rsa.RSAPrivateKey) -> dict[str, str]:
    signed = dict(params)
    signed["sign_type"] = SIGN_TYPE
    signed["sign"] = sign(notification_sign_content(signed), key)
    return signed


def verify_notification(params: Mapping[str, str], key: rsa.RSAPublicKey) -> bool:
    signature = params.get("sign")
    if not signature:
        return False
    sign_type = params.get("sign_type")
    if sign_type and sign_type != SIGN_TYPE:
        return False
    return verify(notification_sign_content(params), signature, key)


# ---- times -------------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """An aware datetime as Alipay writes it: "yyyy-MM-dd HH:mm:ss" in China time."""
    return moment.astimezone(CHINA_TZ).strftime(TIME_FORMAT)


def format_time_ms(moment: datetime) -> str:
    """`yyyy-MM-dd HH:mm:ss.SSS` (China time), as in `gmt_refund`."""
    china = moment.astimezone(CHINA_TZ)
    return china.strftime(TIME_FORMAT) + f".{china.microsecond // 1000:03d}"


def parse_time(text: str) -> datetime:
    """Alipay's "yyyy-MM-dd HH:mm:ss[.SSS]" (China time) as an aware datetime. ValueError."""
    text = text.strip()
    head, _, frac = text.partition(".")
    moment = datetime.strptime(head, TIME_FORMAT).replace(tzinfo=CHINA_TZ)
    if frac:
        if not frac.isdigit() or len(frac) > 6:
            raise ValueError(f"bad fraction of a second in {text!r}")
        moment = moment.replace(microsecond=int(frac.ljust(6, "0")))
    return moment


# ---- requests and responses --------------------------------------------------------------


def response_key(method: str) -> str:
    """`alipay.trade.query` -> `alipay_trade_query_response`."""
    return method.replace(".", "_") + "_response"


def build_request(
    app_id: str,
    method: str,
    biz_content: Mapping[str, Any],
    now: datetime,
    notify_url: str | None = None,
) -> dict[str, str]:
    """The unsigned parameters of one call (sign them with `sign_request`)."""
    params = {
        "app_id": app_id,
        "method": method,
        "format": FORMAT,
        "charset": CHARSET,
        "sign_type": SIGN_TYPE,
        "timestamp": format_time(now),
        "version": VERSION,
        "biz_content": json.dumps(biz_content, ensure_ascii=False, separators=(",", ":")),
    }
    if notify_url:
        params["notify_url"] = notify_url
    return params


def encode_response(name: str, node: Mapping[str, Any], key: rsa.RSAPrivateKey | None) -> str:
    """A response body: `{"<name>":<node>,"sign":"..."}`, signed over the node's exact text
    (unsigned when `key` is None, as Alipay's `error_response` to an unknown method)."""
    node_text = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
    body = "{" + json.dumps(name) + ":" + node_text
    if key is not None:
        body += ',"sign":' + json.dumps(sign(node_text, key))
    return body + "}"


class ResponseFormatError(ValueError):
    """The body is not an Alipay response envelope."""


@dataclass(frozen=True, slots=True)
class ResponseEnvelope:
    name: str
    """The node's key: `<method>_response`, or `error_response`."""
    node: dict[str, Any]
    node_text: str
    """The node exactly as it appears in the body: what the signature covers."""
    sign: str | None

    def verify(self, key: rsa.RSAPublicKey) -> bool:
        return bool(self.sign) and verify(self.node_text, self.sign or "", key)


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, index: int) -> int:
    match = _WS.match(text, index)
    return match.end() if match else index


def _top_level_spans(text: str) -> dict[str, tuple[int, int]]:
    """The [start, end) span of each top-level member's value in a JSON object text."""
    i = _skip_ws(text, 0)
    if text[i : i + 1] != "{":
        raise ResponseFormatError("the body is not a JSON object")
    spans: dict[str, tuple[int, int]] = {}
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "}":
        return spans
    try:
        while True:
            if text[i : i + 1] != '"':
                raise ResponseFormatError("expected a member name")
            name, i = _DECODER.raw_decode(text, i)
            i = _skip_ws(text, i)
            if text[i : i + 1] != ":":
                raise ResponseFormatError("expected ':'")
            i = _skip_ws(text, i + 1)
            _, end = _DECODER.raw_decode(text, i)
            spans[name] = (i, end)
            i = _skip_ws(text, end)
            if text[i : i + 1] == ",":
                i = _skip_ws(text, i + 1)
                continue
            if text[i : i + 1] == "}":
                return spans
            raise ResponseFormatError("expected ',' or '}'")
    except json.JSONDecodeError as exc:
        raise ResponseFormatError(f"bad JSON: {exc}") from None


def extract_response(body: str, method: str) -> ResponseEnvelope:
    """Find the method's response node (or `error_response`) and its exact text in a body."""
    spans = _top_level_spans(body)
    name = response_key(method)
    if name not in spans:
        if "error_response" not in spans:
            raise ResponseFormatError(f"no {name} in the response")
        name = "error_response"
    start, end = spans[name]
    node_text = body[start:end]
    node = json.loads(node_text)
    if not isinstance(node, dict):
        raise ResponseFormatError(f"{name} is not an object")
    signature: str | None = None
    if "sign" in spans:
        s_start, s_end = spans["sign"]
        value = json.loads(body[s_start:s_end])
        signature = value if isinstance(value, str) else None
    return ResponseEnvelope(name=name, node=node, node_text=node_text, sign=signature)


# ---- result mapping ----------------------------------------------------------------------


class ApiCall(enum.StrEnum):
    PRECREATE = PRECREATE
    QUERY = QUERY
    CLOSE = CLOSE
    REFUND = REFUND
    REFUND_QUERY = REFUND_QUERY
    BILL_URL_QUERY = BILL_URL_QUERY

    @property
    def call(self) -> Call:
        """The interface's call this method serves."""
        return _CALLS[self]


_CALLS: Mapping[ApiCall, Call] = {
    ApiCall.PRECREATE: Call.CREATE,
    ApiCall.QUERY: Call.QUERY,
    ApiCall.CLOSE: Call.CLOSE,
    ApiCall.REFUND: Call.REFUND,
    ApiCall.REFUND_QUERY: Call.REFUND_QUERY,
    ApiCall.BILL_URL_QUERY: Call.STATEMENT,
}

RULES = ChannelRules(
    # Every call is safe to repeat: precreate is idempotent by out_trade_no (a repeat with the
    # same amount and subject returns the same qr_code; another is ACQ.CONTEXT_INCONSISTENT);
    # a refund by out_request_no (Alipay's own guidance after a timeout or a system error is to
    # call again with the same out_request_no); closing twice is harmless; queries change
    # nothing.
    repeatable=frozenset(Call),
    failure_codes={
        Failure.NOT_SENT: "CONNECT_ERROR",
        Failure.HTTP_REFUSED: "HTTP_ERROR",
        Failure.HTTP_UNAVAILABLE: "HTTP_ERROR",
        Failure.TIMEOUT: "TIMEOUT",
        Failure.DROPPED: "CONNECTION_DROPPED",
        Failure.HTTP_ERROR: "HTTP_ERROR",
        Failure.BAD_SIGNATURE: INVALID_SIGNATURE,
        Failure.BAD_ANSWER: "BAD_RESPONSE",
    },
    # gateway.do answers every call that reached the open platform with HTTP 200 ("HTTP status
    # is 200 for all of them", above), so another status comes from in front of it; but a 5xx
    # there (a 502 or 504 from a proxy that passed the request on) may come after the platform
    # acted, so it is judged like any channel's unsigned 5xx.
)
"""What the adapter kernel asks of this channel."""


def amount_of(node: Mapping[str, Any], name: str) -> int | None:
    """A yuan field in minor units, None when absent. ValueError when malformed."""
    value = node.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a yuan string, got {value!r}")
    return yuan_to_fen(value)


def _time_of(node: Mapping[str, Any], name: str) -> datetime | None:
    value = node.get(name)
    if not isinstance(value, str) or not value:
        return None
    return parse_time(value)


def _str(node: Mapping[str, Any], name: str) -> str | None:
    value = node.get(name)
    return value if isinstance(value, str) and value else None


def map_response(call: ApiCall, node: Mapping[str, Any]) -> ChannelResult:
    """What a (verified) response node establishes for one call. Raises ValueError when a
    successful answer is malformed (the caller treats that as UNKNOWN)."""
    code = str(node.get("code", ""))
    if code == CODE_SUCCESS:
        return _map_success(call, node)
    sub = _str(node, "sub_code")
    decision = decision_for(code, sub)
    channel_code = sub or code or None
    message = _str(node, "sub_msg") or _str(node, "msg")
    raw = dict(node)

    def result(outcome: Outcome, decision: Decision = decision) -> ChannelResult:
        return ChannelResult(
            outcome=outcome,
            decision=decision,
            channel_code=channel_code,
            channel_message=message,
            channel_trade_no=_str(node, "trade_no"),
            raw=raw,
        )

    if call is ApiCall.PRECREATE:
        if sub == SUB_TRADE_HAS_SUCCESS:
            return result(Outcome.UNKNOWN, Decision.RETRY)  # already paid: query it
        if decision in (Decision.RETRY, Decision.FAILOVER):
            return result(Outcome.SYSTEM_ERROR, Decision.FAILOVER)
        return result(Outcome.FAILED, Decision.FINAL)
    if call is ApiCall.QUERY:
        if sub == SUB_TRADE_NOT_EXIST:
            # precreated but not scanned yet (the real channel creates the trade on scanning)
            return result(Outcome.WAITING, Decision.RETRY)
        return result(Outcome.UNKNOWN)
    if call is ApiCall.CLOSE:
        if sub in (SUB_TRADE_NOT_EXIST, SUB_TRADE_HAS_CLOSE):
            return result(Outcome.SUCCEEDED)  # nothing payable is left
        if decision is Decision.RETRY:
            return result(Outcome.UNKNOWN)
        return result(Outcome.FAILED)
    if call is ApiCall.REFUND:
        if decision is Decision.RETRY:
            return result(Outcome.UNKNOWN)  # Alipay: retry with the same out_request_no
        return result(Outcome.FAILED)
    if call is ApiCall.REFUND_QUERY:
        if sub == SUB_TRADE_NOT_EXIST:
            return result(Outcome.FAILED, Decision.FINAL)
        return result(Outcome.UNKNOWN)
    return result(Outcome.UNKNOWN if decision is Decision.RETRY else Outcome.FAILED)


def _map_success(call: ApiCall, node: Mapping[str, Any]) -> ChannelResult:
    raw = dict(node)
    trade_no = _str(node, "trade_no")
    if call is ApiCall.PRECREATE:
        qr_code = _str(node, "qr_code")
        if qr_code is None:
            raise ValueError("precreate succeeded without a qr_code")
        return ChannelResult(
            outcome=Outcome.WAITING,
            decision=Decision.FINAL,
            channel_code=CODE_SUCCESS,
            next_action=NextAction(type="qr_code", url=qr_code),
            raw=raw,
        )
    if call is ApiCall.QUERY:
        status = _str(node, "trade_status")
        amount = amount_of(node, "total_amount")
        paid_at = _time_of(node, "send_pay_date")
        common: dict[str, Any] = {
            "channel_code": status,
            "channel_trade_no": trade_no,
            "amount": amount,
            "raw": raw,
        }
        if status in (TRADE_SUCCESS, TRADE_FINISHED):
            return ChannelResult(outcome=Outcome.SUCCEEDED, paid_at=paid_at, **common)
        if status == TRADE_CLOSED:
            if paid_at is not None:
                # paid, then fully refunded: the payment itself did succeed
                return ChannelResult(
                    outcome=Outcome.SUCCEEDED,
                    paid_at=paid_at,
                    channel_message="closed after a full refund",
                    **common,
                )
            return ChannelResult(outcome=Outcome.FAILED, channel_message="trade closed", **common)
        if status == WAIT_BUYER_PAY:
            return ChannelResult(outcome=Outcome.WAITING, **common)
        raise ValueError(f"unknown trade_status {status!r}")
    if call is ApiCall.CLOSE:
        return ChannelResult(
            outcome=Outcome.SUCCEEDED, channel_code=CODE_SUCCESS, channel_trade_no=trade_no, raw=raw
        )
    if call is ApiCall.REFUND:
        fund_change = _str(node, "fund_change")
        if fund_change == "Y":
            return ChannelResult(
                outcome=Outcome.SUCCEEDED,
                channel_code=CODE_SUCCESS,
                channel_trade_no=trade_no,
                amount=amount_of(node, "send_back_fee"),
                raw=raw,
            )
        # N: no money moved by *this* request (e.g. a repeat): confirm with a refund query
        return ChannelResult(
            outcome=Outcome.WAITING,
            decision=Decision.RETRY,
            channel_code=CODE_SUCCESS,
            channel_message=f"fund_change={fund_change}",
            channel_trade_no=trade_no,
            raw=raw,
        )
    if call is ApiCall.REFUND_QUERY:
        refund_status = _str(node, "refund_status")
        refund_amount = amount_of(node, "refund_amount")
        if refund_status == REFUND_SUCCESS or (refund_status is None and refund_amount):
            return ChannelResult(
                outcome=Outcome.SUCCEEDED,
                channel_code=refund_status or CODE_SUCCESS,
                channel_trade_no=trade_no,
                amount=refund_amount,
                paid_at=_time_of(node, "gmt_refund_pay"),
                raw=raw,
            )
        if refund_status is None:
            # Alipay: "no refund data means the refund did not succeed; refund again with the
            # same out_request_no"
            return ChannelResult(
                outcome=Outcome.FAILED,
                decision=Decision.RETRY,
                channel_code="REFUND_NOT_EXIST",
                channel_message="no refund with this out_request_no",
                channel_trade_no=trade_no,
                raw=raw,
            )
        return ChannelResult(
            outcome=Outcome.WAITING,
            channel_code=refund_status,
            channel_trade_no=trade_no,
            raw=raw,
        )
    return ChannelResult(outcome=Outcome.SUCCEEDED, channel_code=CODE_SUCCESS, raw=raw)


# ---- notifications -----------------------------------------------------------------------


def parse_form(body: bytes) -> dict[str, str]:
    """A urlencoded form into a dict, decoded with the charset its own `charset` field names
    (UTF-8 by default). Raises ValueError on duplicates or a bad encoding."""
    text = body.decode("ascii")
    strict = bool(text)
    # a first pass that cannot fail, to learn the charset
    sniff = dict(parse_qsl(text, keep_blank_values=True, encoding="latin-1"))
    charset = sniff.get("charset", CHARSET).strip().lower() or CHARSET
    try:
        codecs.lookup(charset)
    except LookupError:
        raise ValueError(f"unknown charset {charset!r}") from None
    pairs = parse_qsl(
        text, keep_blank_values=True, strict_parsing=strict, encoding=charset, errors="strict"
    )
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise ValueError("duplicate fields")
    return fields


def notification_from_fields(fields: Mapping[str, str]) -> Notification:
    """Reduce a *verified* notification to what the gateway applies. Raises
    NotificationRejected when it is not a trade_status_sync or lacks what we need."""
    if fields.get("notify_type") != NOTIFY_TYPE:
        raise NotificationRejected(f"unexpected notify_type {fields.get('notify_type')!r}")
    out_trade_no = fields.get("out_trade_no")
    status = fields.get("trade_status")
    if not out_trade_no or status not in TRADE_STATUSES:
        raise NotificationRejected("notification without out_trade_no or a known trade_status")
    raw = {k: v for k, v in fields.items() if k != "sign"}
    trade_no = fields.get("trade_no") or None
    try:
        amount = amount_of(fields, "total_amount")
        refund_id = fields.get("out_biz_no") or None
        if refund_id and (fields.get("refund_fee") or fields.get("gmt_refund")):
            # a refund on this trade; refund_fee is the trade's total refunded so far, not
            # this refund's amount, so it is left in `raw`
            return Notification(
                kind=NotificationKind.REFUND,
                channel_order_id=out_trade_no,
                channel_refund_id=refund_id,
                result=ChannelResult(
                    outcome=Outcome.SUCCEEDED,
                    channel_code=REFUND_SUCCESS,
                    channel_trade_no=trade_no,
                    paid_at=_time_of(fields, "gmt_refund"),
                    raw=raw,
                ),
            )
        if status in (TRADE_SUCCESS, TRADE_FINISHED):
            result = ChannelResult(
                outcome=Outcome.SUCCEEDED,
                channel_code=status,
                channel_trade_no=trade_no,
                amount=amount,
                paid_at=_time_of(fields, "gmt_payment"),
                raw=raw,
            )
        elif status == TRADE_CLOSED:
            result = ChannelResult(
                outcome=Outcome.FAILED,
                channel_code=status,
                channel_message="trade closed",
                channel_trade_no=trade_no,
                amount=amount,
                raw=raw,
            )
        else:
            result = ChannelResult(
                outcome=Outcome.WAITING,
                channel_code=status,
                channel_trade_no=trade_no,
                amount=amount,
                raw=raw,
            )
    except ValueError as exc:
        raise NotificationRejected(f"malformed notification: {exc}") from None
    return Notification(kind=NotificationKind.PAYMENT, channel_order_id=out_trade_no, result=result)
