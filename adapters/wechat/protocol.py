"""WeChat Pay API v3 (native payments), the wire protocol: pure, I/O-free, shared by the adapter
and the simulator so that it is written once. This module holds the API (paths, states, the
codes table, ids, mapping answers to results); `adapters.wechat.envelope` what wraps every
message (signatures, AES-GCM, notification envelopes); `adapters.wechat.bill` the trade bill.

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
import enum
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

# Names imported "as" themselves are re-exported: the flow and SDK suites
# (tests/integration/adapters) read them through this module.
from adapters.base import ChannelResult, Decision, NextAction, Outcome
from adapters.chinatime import CHINA_TZ as CHINA_TZ
from adapters.chinatime import china_date as china_date
from adapters.kernel.calls import Call, ChannelRules
from adapters.kernel.transport import Failure
from adapters.wechat.bill import parse_bill as parse_bill
from adapters.wechat.envelope import SCHEMA as SCHEMA
from adapters.wechat.envelope import build_notification as build_notification
from adapters.wechat.envelope import format_time as format_time
from adapters.wechat.envelope import parse_time
from adapters.wechat.envelope import serial_hex as serial_hex
from adapters.wechat.envelope import sign_headers as sign_headers

# ---- constants ---------------------------------------------------------------------------

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

PATH_NATIVE = "/v3/pay/transactions/native"
PATH_QUERY = "/v3/pay/transactions/out-trade-no/{out_trade_no}"
PATH_QUERY_BY_ID = "/v3/pay/transactions/id/{transaction_id}"
PATH_CLOSE = "/v3/pay/transactions/out-trade-no/{out_trade_no}/close"
PATH_REFUND = "/v3/refund/domestic/refunds"
PATH_REFUND_QUERY = "/v3/refund/domestic/refunds/{out_refund_no}"
PATH_TRADEBILL = "/v3/bill/tradebill"
PATH_BILLDOWNLOAD = "/v3/billdownload/file"
PATH_CERTIFICATES = "/v3/certificates"

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
HTTP_5XX = "HTTP_5XX"
"""A 5xx without WeChat Pay's signature (a proxy in front of it): the request may have acted."""
HTTP_STATUS = "HTTP_STATUS"
"""Another status without WeChat Pay's signature (not 401, which is SIGN_ERROR): refused
before reaching WeChat Pay."""

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
    MALFORMED_RESPONSE: Decision.RETRY,
}
"""Channel code -> what the gateway may do. FAILOVER applies to creating a payment; for the
other calls (which must stay at the channel that holds the order) it reads as RETRY. Answers
that never came (timeouts, refused connections, bad signatures) are the adapter kernel's to
judge, with the codes of `RULES`."""

MAY_HAVE_ACTED = frozenset({SYSTEM_ERROR, BANK_ERROR})
"""Codes after which a refund or close may or may not have happened (WeChat's own guidance for
SYSTEM_ERROR is to retry with the same parameters)."""

BUSY_STATUSES = frozenset({429, *range(500, 600)})
"""HTTP statuses of WeChat's signed "try again" answers (SYSTEM_ERROR, BANK_ERROR,
FREQUENCY_LIMITED, ...): asked again where the call allows it."""

RULES = ChannelRules(
    # Every call is safe to repeat: a native order repeated with the same out_trade_no and the
    # same parameters is answered with the same code_url (we resend the identical body); a
    # refund is idempotent by out_refund_no ("同一退款单号多次请求只退一笔"); closing a closed
    # order answers 204 again; queries and bills change nothing.
    repeatable=frozenset(Call),
    failure_codes={
        Failure.NOT_SENT: CONNECTION_REFUSED,
        Failure.HTTP_REFUSED: HTTP_STATUS,
        Failure.HTTP_UNAVAILABLE: FREQUENCY_LIMITED,
        Failure.TIMEOUT: TIMEOUT,
        Failure.DROPPED: CONNECTION_ERROR,
        Failure.HTTP_ERROR: HTTP_5XX,
        Failure.BAD_SIGNATURE: INVALID_SIGNATURE,
        Failure.BAD_ANSWER: MALFORMED_RESPONSE,
    },
)
"""What the adapter kernel asks of this channel."""


# ---- ids ---------------------------------------------------------------------------------


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
            currency=_str(amount.get("currency")) if isinstance(amount, Mapping) else None,
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
            currency=_str(amount.get("currency")) if isinstance(amount, Mapping) else None,
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
    call: Call, http_status: int | None, code: str, message: str | None = None
) -> ChannelResult:
    """An error answer (or an answer our own checks refuse, MALFORMED_RESPONSE) -> result, per
    call.

    - create: FAILOVER codes -> SYSTEM_ERROR + FAILOVER; FINAL codes -> FAILED + FINAL;
      RETRY codes (a malformed answer) -> UNKNOWN + RETRY (never fail over: the order may
      exist and its code_url may have been shown).
    - close: ORDER_CLOSED -> SUCCEEDED (it is closed); ORDERPAID and other FINAL codes ->
      FAILED with the code (the caller should query); anything else -> UNKNOWN + RETRY.
    - query / refund query: FINAL codes (ORDER_NOT_EXIST, RESOURCE_NOT_EXISTS, …) -> FAILED;
      anything else -> UNKNOWN + RETRY.
    - refund: FINAL codes -> FAILED; codes that may have acted (SYSTEM_ERROR, BANK_ERROR) ->
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

    if call is Call.CREATE:
        if decision is Decision.FAILOVER:
            return result(Outcome.SYSTEM_ERROR, Decision.FAILOVER)
        if decision is Decision.FINAL:
            return result(Outcome.FAILED, Decision.FINAL)
        return result(Outcome.UNKNOWN, Decision.RETRY)
    if call is Call.CLOSE and code == ORDER_CLOSED:
        return result(Outcome.SUCCEEDED, Decision.FINAL)
    if decision is Decision.FINAL:
        return result(Outcome.FAILED, Decision.FINAL)
    if call is Call.REFUND and decision is Decision.FAILOVER and code not in MAY_HAVE_ACTED:
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
