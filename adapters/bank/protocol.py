"""The `bank` wire protocol: an acquiring bank's online card gateway with a hosted payment page.

Pure and I/O-free; shared by the adapter (the merchant's side) and the simulator (the bank's
side). Modelled on what Chinese acquiring banks' online card gateways and CyberSource / Adyen
style hosted pages do: JSON over HTTPS, RSA-signed both ways, ISO 8583 response codes.

Transport
---------
All amounts are integers in minor units (fen for CNY), all times RFC 3339 in the bank's local
time (UTC+8, e.g. ``2024-05-01T12:00:00+08:00``). Bodies are UTF-8 JSON, except the statement.

=======  ===================================  ===========================================
POST     ``/api/v1/orders``                   create an order, answer carries ``pay_url``
GET      ``/api/v1/orders/{order_no}``        query an order
POST     ``/api/v1/orders/{order_no}/close``  close an unpaid order
POST     ``/api/v1/refunds``                  refund (all or part of) a paid order
GET      ``/api/v1/refunds/{refund_no}``      query a refund
GET      ``/api/v1/statements/{YYYYMMDD}``    the day's statement, CSV, streamed
=======  ===================================  ===========================================

Paths are relative to the bank's base URL (the simulator's is ``<public url>/sim/bank``); the
signed path is the full path as sent (``/sim/bank/api/v1/orders``).

Signatures
----------
Every message is signed with RSASSA-PKCS1-v1_5 / SHA-256 ("SHA256withRSA", RSA-2048 keys) over
a canonical string of five lines, each ending in ``\\n``::

    LINE1\\nLINE2\\nTIMESTAMP\\nNONCE\\nBODY\\n

- requests (signed with the merchant's key): ``LINE1`` is the HTTP method, ``LINE2`` the path
  and query exactly as sent; headers ``X-Bank-Merchant`` (merchant id), ``X-Bank-Timestamp``
  (unix seconds, within 300 s of the bank's clock), ``X-Bank-Nonce`` (16 to 64 of
  ``[A-Za-z0-9_-]``, used once) and ``X-Bank-Signature`` (standard base64);
- responses (signed with the bank's key): ``LINE1`` is the HTTP status code, ``LINE2`` the
  request's path and query, and the nonce is the request's own nonce echoed back, so a recorded
  answer cannot be replayed to another request; same headers minus ``X-Bank-Merchant``;
- notifications (signed with the bank's key): ``LINE1`` is ``NOTIFY``, ``LINE2`` the merchant id
  the notification is addressed to (the notify URL's path is not signed, so that proxies in
  front of the merchant may rewrite it); a fresh timestamp and nonce on every delivery, the
  timestamp within 300 s of the merchant's clock.

BODY is the exact body bytes (empty for GET). Statements are signed the same way over the whole
CSV file, which the verifier hashes as it streams (see `StreamingVerifier`).

Answers
-------
``{"resp_code": "00", "resp_msg": "Approved", "order": {...}}`` (or ``"refund": {...}``). The
HTTP status follows the code: 200 for business answers (including declines), 400 for ``30``,
401 for ``63``, 404 for ``25``, 409 for ``12`` / ``94``, 500 for ``96``, 503 for ``91``.

Order status: ``CREATED`` (waiting for the card holder), ``PROCESSING`` (authorisation under
way, code ``09``), ``SUCCESS``, ``FAILED`` (declined, or cancelled by the card holder: code
``17``), ``CLOSED`` (closed by the merchant or expired). Refund status: ``PROCESSING``,
``SUCCESS``, ``FAILED``.

Idempotency: the bank keys orders by ``order_no`` and refunds by ``refund_no`` per merchant. A
create or refund repeated with the same parameters returns the existing object (``00``) in its
current state; with different parameters it is refused with ``94`` (duplicate transmission).
Hence the adapter may safely repeat creates and refunds after a timeout. Closing an order
number the bank has never seen reserves it as ``CLOSED``, so a create that arrives late cannot
open it.

Notifications
-------------
After the card holder pays, is declined or cancels, the bank POSTs a signed JSON notification
(``notify_type`` ``PAYMENT``) to the order's ``notify_url``; after a refund, a ``REFUND``
notification to the same URL. The merchant acknowledges with HTTP 200 and ``{"code":
"SUCCESS"}``; anything else and the bank sends it again after 15 s, 1 min, 5 min, 30 min, 1 h
and 6 h (`NOTIFY_RETRY_SCHEDULE_S`). Each delivery is signed afresh, with a fresh timestamp: the
merchant checks the signature, that ``merchant_id`` is its own and that the timestamp is within
``NOTIFICATION_WINDOW_S`` (5 minutes) of its clock, so that a recorded notification cannot be
replayed later; a late one is refused, and the bank's next delivery carries a fresh timestamp.
``notify_id`` is the notification's own id, the same on every delivery of it: the merchant
applies each once.

Statement
---------
CSV (UTF-8, ``\\n`` line ends) of the transactions settled on one day in UTC+8: successful
payments by the day they were paid, successful refunds by the day they completed. Amounts and
fees in yuan with two decimals (as the banks' reconciliation files carry them)::

    record_type,order_no,txn_id,refund_no,refund_txn_id,currency,amount,fee,status,resp_code,trans_time
    PAYMENT,pay_x_1,B2024...,,,CNY,19.99,0.12,SUCCESS,00,2024-05-01T12:00:05+08:00
    REFUND,pay_x_1,B2024...,re_y,R2024...,CNY,5.00,0.00,SUCCESS,00,2024-05-01T13:00:00+08:00
    SUMMARY,2,19.99,5.00,,,,,,,

The fee is 0.6 % of the payment, rounded half up to the fen; refunds carry no fee.

Test cards (hosted page)
------------------------
``4111111111111111`` (the default) approves; ``40000000000000XX`` declines with code ``XX`` for
XX in 05, 14, 51, 54, 61; ``4000000000000009`` stays ``PROCESSING`` briefly, then approves; any
other number failing the Luhn check declines with ``14``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from adapters.base import (
    ChannelResult,
    Decision,
    NextAction,
    Notification,
    NotificationKind,
    Outcome,
    StatementKind,
    StatementLine,
)

# CHINA_TZ is imported "as" itself, re-exported: the flow suite (tests/integration/adapters)
# reads it through this module.
from adapters.chinatime import CHINA_TZ as CHINA_TZ
from adapters.chinatime import china_date, from_rfc3339, to_rfc3339
from adapters.kernel.calls import Call, ChannelRules
from adapters.kernel.crypto import rsa_sign, rsa_verify, rsa_verify_digest
from adapters.kernel.transport import Failure
from adapters.money import fen_to_yuan, yuan_to_fen

# ---- constants ----------------------------------------------------------------------------

HEADER_MERCHANT = "X-Bank-Merchant"
HEADER_TIMESTAMP = "X-Bank-Timestamp"
HEADER_NONCE = "X-Bank-Nonce"
HEADER_SIGNATURE = "X-Bank-Signature"

TIMESTAMP_WINDOW_S = 300
"""How far a request's timestamp may be from the bank's clock."""
NOTIFICATION_WINDOW_S = 300
"""How far a notification's timestamp may be from the merchant's clock."""
NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
ORDER_NO_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

PATH_ORDERS = "/api/v1/orders"
PATH_REFUNDS = "/api/v1/refunds"
PATH_STATEMENTS = "/api/v1/statements"

NOTIFY_LINE = "NOTIFY"
ACK_SUCCESS = "SUCCESS"
NOTIFY_RETRY_SCHEDULE_S: tuple[float, ...] = (15, 60, 300, 1800, 3600, 21600)
"""Delays before each redelivery of an unacknowledged notification."""

FEE_PER_MILLE = 6
"""The bank's merchant discount rate (0.6 %), shown in the statement."""

STATEMENT_COLUMNS: tuple[str, ...] = (
    "record_type",
    "order_no",
    "txn_id",
    "refund_no",
    "refund_txn_id",
    "currency",
    "amount",
    "fee",
    "status",
    "resp_code",
    "trans_time",
)
STATEMENT_SUMMARY = "SUMMARY"

TEST_CARD_APPROVE = "4111111111111111"
TEST_CARD_PROCESSING = "4000000000000009"
DECLINE_CODES: tuple[str, ...] = ("05", "14", "51", "54", "61")
TEST_CARDS_DECLINE: Mapping[str, str] = {f"40000000000000{c}": c for c in DECLINE_CODES}
SUPPORTED_CURRENCIES = frozenset({"CNY", "HKD", "USD"})


class RespCode(enum.StrEnum):
    """The ISO 8583 response codes the bank uses."""

    APPROVED = "00"
    DO_NOT_HONOUR = "05"
    IN_PROGRESS = "09"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    INVALID_CARD_NUMBER = "14"
    CUSTOMER_CANCELLATION = "17"
    RECORD_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    EXCEEDS_LIMIT = "61"
    SECURITY_VIOLATION = "63"
    ISSUER_UNAVAILABLE = "91"
    DUPLICATE_TRANSMISSION = "94"
    SYSTEM_MALFUNCTION = "96"


RESP_MESSAGES: Mapping[str, str] = {
    "00": "Approved",
    "05": "Do not honour",
    "09": "Request in progress",
    "12": "Invalid transaction",
    "13": "Invalid amount",
    "14": "Invalid card number",
    "17": "Customer cancellation",
    "25": "Unable to locate record",
    "30": "Format error",
    "51": "Insufficient funds",
    "54": "Expired card",
    "61": "Exceeds withdrawal amount limit",
    "63": "Security violation",
    "91": "Issuer or switch inoperative",
    "94": "Duplicate transmission",
    "96": "System malfunction",
}

HTTP_STATUS_FOR_CODE: Mapping[str, int] = {
    "30": 400,
    "63": 401,
    "25": 404,
    "12": 409,
    "94": 409,
    "96": 500,
    "91": 503,
}
"""HTTP status the bank answers with for a code (200 for anything not listed)."""

ERROR_TABLE: Mapping[str, Decision] = {
    "00": Decision.FINAL,  # approved
    "09": Decision.RETRY,  # in progress: ask again later
    "05": Decision.FINAL,  # do not honour
    "14": Decision.FINAL,  # invalid card number
    "51": Decision.FINAL,  # insufficient funds
    "54": Decision.FINAL,  # expired card
    "61": Decision.FINAL,  # exceeds limit
    "17": Decision.FINAL,  # the card holder cancelled
    "12": Decision.FINAL,  # invalid transaction for the order's state (e.g. close a paid order)
    "13": Decision.FINAL,  # invalid amount (e.g. refund beyond the paid amount)
    "25": Decision.FINAL,  # no such order / refund
    "30": Decision.FINAL,  # format error in our request
    "94": Decision.FINAL,  # the order / refund number exists with other parameters
    "63": Decision.FAILOVER,  # the bank refused our signature: nothing was created
    "91": Decision.FAILOVER,  # issuer or switch unavailable: nothing was created
    "96": Decision.FAILOVER,  # system malfunction: nothing was created
}
"""Channel code -> what the gateway may do, as answered to a create. For calls on an existing
order (query, close, refund, refund query) the FAILOVER codes mean RETRY: a payment cannot move
to another channel once an order exists (see `decision_for`)."""

SYSTEM_ERROR_CODES = frozenset({"91", "96"})
"""Signed answers (HTTP 5xx) saying nothing was done: "ask again with the same parameters"."""

RULES = ChannelRules(
    # Every call is safe to repeat: the bank keys orders by order_no and refunds by refund_no
    # and answers a repeat with the same parameters with the existing object (see
    # Idempotency above); closing is idempotent; queries and statements change nothing.
    repeatable=frozenset(Call),
    failure_codes={
        Failure.NOT_SENT: "CONNECTION_ERROR",
        Failure.HTTP_REFUSED: "HTTP_STATUS",
        Failure.HTTP_UNAVAILABLE: "HTTP_STATUS",
        Failure.TIMEOUT: "TIMEOUT",
        Failure.DROPPED: "CONNECTION_DROPPED",
        Failure.HTTP_ERROR: "HTTP_5XX",
        Failure.BAD_SIGNATURE: "INVALID_SIGNATURE",
        Failure.BAD_ANSWER: "INVALID_RESPONSE",
    },
)
"""What the adapter kernel asks of this channel."""


def decision_for(code: str, call: Call = Call.CREATE) -> Decision:
    """The decision for a channel code; unknown codes are RETRY (ask again, never assume)."""
    decision = ERROR_TABLE.get(code, Decision.RETRY)
    if decision is Decision.FAILOVER and call is not Call.CREATE:
        return Decision.RETRY
    return decision


def resp_message(code: str) -> str:
    return RESP_MESSAGES.get(code, "Unknown response code")


# ---- signatures ---------------------------------------------------------------------------


def canonical(line1: str, line2: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The signed message: five lines, each ending in a line feed."""
    return b"%s\n%s\n%s\n%s\n%s\n" % (
        line1.encode(),
        line2.encode(),
        timestamp.encode(),
        nonce.encode(),
        body,
    )


def request_message(method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return canonical(method.upper(), path_qs, timestamp, nonce, body)


def response_message(
    status: int, request_path_qs: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    return canonical(str(status), request_path_qs, timestamp, nonce, body)


def notification_message(merchant_id: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return canonical(NOTIFY_LINE, merchant_id, timestamp, nonce, body)


def notification_fresh(timestamp: str, now: float) -> bool:
    """Whether a notification's ``X-Bank-Timestamp`` (unix seconds) is within the window."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(now - int(timestamp)) <= NOTIFICATION_WINDOW_S


sign = rsa_sign
"""The bank's signature: SHA256withRSA (PKCS#1 v1.5), standard base64, key first."""
verify = rsa_verify


class StreamingVerifier:
    """Verifies a signature over ``canonical(line1, line2, ts, nonce, BODY)`` while BODY
    arrives in chunks (for the statement file), without keeping BODY."""

    def __init__(self, line1: str, line2: str, timestamp: str, nonce: str) -> None:
        self._hash = hashes.Hash(hashes.SHA256())
        self._hash.update(canonical(line1, line2, timestamp, nonce, b"")[:-1])

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def verify(self, key: rsa.RSAPublicKey, signature: str) -> bool:
        self._hash.update(b"\n")
        return rsa_verify_digest(key, self._hash.finalize(), signature)


def luhn_valid(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def card_decision(card_number: str) -> str:
    """The response code the (simulated) issuer gives a test card (see the module docstring)."""
    number = card_number.replace(" ", "")
    if number in TEST_CARDS_DECLINE:
        return TEST_CARDS_DECLINE[number]
    if number == TEST_CARD_PROCESSING:
        return RespCode.IN_PROGRESS.value
    if not luhn_valid(number):
        return RespCode.INVALID_CARD_NUMBER.value
    return RespCode.APPROVED.value


# ---- times and amounts --------------------------------------------------------------------


format_time = to_rfc3339
"""RFC 3339 in the bank's local time (UTC+8), to the second."""


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with an offset, as an aware datetime in UTC."""
    return from_rfc3339(text).astimezone(UTC)


def china_day(moment: datetime) -> str:
    """The YYYYMMDD day of a moment in UTC+8 (how statements are cut)."""
    return china_date(moment).strftime("%Y%m%d")


def fee_for(amount: int) -> int:
    """0.6 % of a payment in fen, rounded half up."""
    return (amount * FEE_PER_MILLE + 500) // 1000


# ---- wire objects -------------------------------------------------------------------------


class OrderStatus(enum.StrEnum):
    CREATED = "CREATED"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CLOSED = "CLOSED"


class RefundStatus(enum.StrEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class _Request(BaseModel):
    """What the bank accepts: strict, unknown fields refused (code 30)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Answer(BaseModel):
    """What the merchant reads: tolerant of fields the bank may add later."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class CreateOrderRequest(_Request):
    merchant_id: str = Field(min_length=1, max_length=32)
    order_no: str = Field(pattern=ORDER_NO_PATTERN)
    amount: StrictInt = Field(ge=1, le=10**11)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    description: str = Field(min_length=1, max_length=128)
    notify_url: str = Field(pattern=r"^https?://", max_length=512)
    return_url: str | None = Field(default=None, pattern=r"^https?://", max_length=512)
    expire_time: str
    payer_ip: str | None = Field(default=None, max_length=45)


class CloseRequest(_Request):
    merchant_id: str = Field(min_length=1, max_length=32)


class RefundRequest(_Request):
    merchant_id: str = Field(min_length=1, max_length=32)
    order_no: str = Field(pattern=ORDER_NO_PATTERN)
    refund_no: str = Field(pattern=ORDER_NO_PATTERN)
    amount: StrictInt = Field(ge=1, le=10**11)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    reason: str | None = Field(default=None, max_length=256)


class Order(_Answer):
    order_no: str
    txn_id: str
    merchant_id: str
    amount: StrictInt
    currency: str
    status: OrderStatus
    resp_code: str
    resp_msg: str = ""
    pay_url: str | None = None
    created_time: str
    paid_time: str | None = None
    expire_time: str
    refunded_amount: StrictInt = 0


class Refund(_Answer):
    refund_no: str
    refund_txn_id: str
    order_no: str
    amount: StrictInt
    currency: str
    status: RefundStatus
    resp_code: str
    resp_msg: str = ""
    created_time: str
    refunded_time: str | None = None


class ApiAnswer(_Answer):
    resp_code: str
    resp_msg: str = ""
    order: Order | None = None
    refund: Refund | None = None


class PaymentNotification(_Answer):
    notify_type: Literal["PAYMENT"]
    notify_id: str
    notify_time: str
    merchant_id: str
    order_no: str
    txn_id: str
    amount: StrictInt
    currency: str
    status: OrderStatus
    resp_code: str
    resp_msg: str = ""
    paid_time: str | None = None


class RefundNotification(_Answer):
    notify_type: Literal["REFUND"]
    notify_id: str
    notify_time: str
    merchant_id: str
    order_no: str
    txn_id: str
    refund_no: str
    refund_txn_id: str
    amount: StrictInt
    currency: str
    status: RefundStatus
    resp_code: str
    resp_msg: str = ""
    refunded_time: str | None = None


# ---- mapping answers to results -----------------------------------------------------------


def _paid_at(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


def order_result(order: Order, raw: Mapping[str, Any]) -> ChannelResult:
    """What an order object (in an answer or a notification) establishes about the payment."""
    status = order.status
    if status is OrderStatus.SUCCESS:
        return ChannelResult(
            outcome=Outcome.SUCCEEDED,
            decision=Decision.FINAL,
            channel_code=order.resp_code,
            channel_message=order.resp_msg or resp_message(order.resp_code),
            channel_trade_no=order.txn_id,
            amount=order.amount,
            currency=order.currency,
            paid_at=_paid_at(order.paid_time),
            raw=raw,
        )
    if status in (OrderStatus.CREATED, OrderStatus.PROCESSING):
        return ChannelResult(
            outcome=Outcome.WAITING,
            decision=Decision.RETRY,
            channel_code=order.resp_code,
            channel_message=order.resp_msg or resp_message(order.resp_code),
            channel_trade_no=order.txn_id,
            next_action=(
                NextAction(type="redirect", url=order.pay_url)
                if order.pay_url and status is OrderStatus.CREATED
                else None
            ),
            amount=order.amount,
            currency=order.currency,
            raw=raw,
        )
    if status is OrderStatus.FAILED:
        return ChannelResult(
            outcome=Outcome.FAILED,
            decision=Decision.FINAL,
            channel_code=order.resp_code,
            channel_message=order.resp_msg or resp_message(order.resp_code),
            channel_trade_no=order.txn_id,
            amount=order.amount,
            currency=order.currency,
            raw=raw,
        )
    # CLOSED: by the merchant or on expiry
    return ChannelResult(
        outcome=Outcome.FAILED,
        decision=Decision.FINAL,
        channel_code="CLOSED",
        channel_message="Order closed",
        channel_trade_no=order.txn_id,
        amount=order.amount,
        currency=order.currency,
        raw=raw,
    )


def refund_result(refund: Refund, raw: Mapping[str, Any]) -> ChannelResult:
    outcome = {
        RefundStatus.SUCCESS: Outcome.SUCCEEDED,
        RefundStatus.PROCESSING: Outcome.WAITING,
        RefundStatus.FAILED: Outcome.FAILED,
    }[refund.status]
    return ChannelResult(
        outcome=outcome,
        decision=Decision.RETRY if outcome is Outcome.WAITING else Decision.FINAL,
        channel_code=refund.resp_code,
        channel_message=refund.resp_msg or resp_message(refund.resp_code),
        channel_trade_no=refund.refund_txn_id,
        amount=refund.amount,
        currency=refund.currency,
        paid_at=_paid_at(refund.refunded_time),
        raw=raw,
    )


def _code_result(call: Call, answer: ApiAnswer, raw: Mapping[str, Any]) -> ChannelResult:
    """An answer without an order / refund object to go by: decide from the code alone."""
    code = answer.resp_code
    message = answer.resp_msg or resp_message(code)
    decision = decision_for(code, call)
    known = code in ERROR_TABLE
    if code in SYSTEM_ERROR_CODES or code == RespCode.SECURITY_VIOLATION:
        if call is Call.CREATE:
            outcome = Outcome.SYSTEM_ERROR  # nothing was created: fail over
        elif call is Call.REFUND:
            outcome = Outcome.SYSTEM_ERROR  # nothing was refunded: the same refund may be resent
        else:
            outcome = Outcome.UNKNOWN  # could not tell
    elif code == RespCode.IN_PROGRESS:
        outcome = Outcome.WAITING
    elif code == RespCode.RECORD_NOT_FOUND and call in (Call.QUERY, Call.REFUND_QUERY):
        outcome = Outcome.FAILED  # never created at the bank
    elif known and decision is Decision.FINAL and code != RespCode.APPROVED:
        outcome = Outcome.FAILED
    else:
        outcome = Outcome.UNKNOWN  # an unknown code, or "approved" without the object
        decision = Decision.RETRY
    return ChannelResult(
        outcome=outcome, decision=decision, channel_code=code, channel_message=message, raw=raw
    )


def to_result(call: Call, answer: ApiAnswer, raw: Mapping[str, Any] | None = None) -> ChannelResult:
    """Map a verified bank answer to a `ChannelResult`.

    - create: order CREATED/PROCESSING -> WAITING with a "redirect" next action to ``pay_url``;
      a decline -> FAILED + FINAL; 91/96/63 -> SYSTEM_ERROR + FAILOVER (nothing created).
    - query: the order's status; 25 -> FAILED (never created); 91/96 -> UNKNOWN + RETRY.
    - close: CLOSED -> SUCCEEDED; the bank refusing (12, paid; 09, processing; a failed order)
      -> FAILED with the bank's code, so that the caller queries.
    - refund / refund query: the refund's status; 12/13/25/94 -> FAILED + FINAL; 91/96 on a
      refund -> SYSTEM_ERROR + RETRY (nothing refunded), on a refund query -> UNKNOWN + RETRY.
    """
    raw = raw if raw is not None else answer.model_dump(mode="json")
    if call is Call.CLOSE:
        order = answer.order
        if answer.resp_code == RespCode.APPROVED and order is not None:
            if order.status is OrderStatus.CLOSED:
                return ChannelResult(
                    outcome=Outcome.SUCCEEDED,
                    decision=Decision.FINAL,
                    channel_code="CLOSED",
                    channel_message="Order closed",
                    channel_trade_no=order.txn_id,
                    raw=raw,
                )
            # not closable any more (paid or failed): say so with the order's own code
            return ChannelResult(
                outcome=Outcome.FAILED,
                decision=Decision.FINAL,
                channel_code=order.resp_code,
                channel_message=f"Order is {order.status.value}",
                channel_trade_no=order.txn_id,
                raw=raw,
            )
        if answer.resp_code in (RespCode.INVALID_TRANSACTION, RespCode.IN_PROGRESS):
            return ChannelResult(
                outcome=Outcome.FAILED,
                decision=decision_for(answer.resp_code, call),
                channel_code=answer.resp_code,
                channel_message=answer.resp_msg or resp_message(answer.resp_code),
                channel_trade_no=order.txn_id if order else None,
                raw=raw,
            )
        return _code_result(call, answer, raw)
    if call in (Call.REFUND, Call.REFUND_QUERY):
        if answer.refund is not None and answer.resp_code in (
            RespCode.APPROVED,
            RespCode.IN_PROGRESS,
        ):
            return refund_result(answer.refund, raw)
        return _code_result(call, answer, raw)
    # create, query
    if answer.order is not None and answer.resp_code in (RespCode.APPROVED, RespCode.IN_PROGRESS):
        return order_result(answer.order, raw)
    return _code_result(call, answer, raw)


def notification_to_result(
    body: PaymentNotification | RefundNotification, raw: Mapping[str, Any]
) -> Notification:
    """A verified notification, reduced to what the gateway applies."""
    if isinstance(body, PaymentNotification):
        order = Order(
            order_no=body.order_no,
            txn_id=body.txn_id,
            merchant_id=body.merchant_id,
            amount=body.amount,
            currency=body.currency,
            status=body.status,
            resp_code=body.resp_code,
            resp_msg=body.resp_msg,
            created_time=body.notify_time,
            paid_time=body.paid_time,
            expire_time=body.notify_time,
        )
        return Notification(
            kind=NotificationKind.PAYMENT,
            channel_order_id=body.order_no,
            result=order_result(order, raw),
            notification_id=body.notify_id,
        )
    refund = Refund(
        refund_no=body.refund_no,
        refund_txn_id=body.refund_txn_id,
        order_no=body.order_no,
        amount=body.amount,
        currency=body.currency,
        status=body.status,
        resp_code=body.resp_code,
        resp_msg=body.resp_msg,
        created_time=body.notify_time,
        refunded_time=body.refunded_time,
    )
    return Notification(
        kind=NotificationKind.REFUND,
        channel_order_id=body.order_no,
        channel_refund_id=body.refund_no,
        result=refund_result(refund, raw),
        notification_id=body.notify_id,
    )


# ---- statement ----------------------------------------------------------------------------


def statement_row(
    *,
    record_type: Literal["PAYMENT", "REFUND"],
    order_no: str,
    txn_id: str,
    refund_no: str = "",
    refund_txn_id: str = "",
    currency: str,
    amount: int,
    fee: int,
    status: str,
    resp_code: str,
    trans_time: datetime,
) -> list[str]:
    return [
        record_type,
        order_no,
        txn_id,
        refund_no,
        refund_txn_id,
        currency,
        fen_to_yuan(amount),
        fen_to_yuan(fee),
        status,
        resp_code,
        format_time(trans_time),
    ]


def summary_row(count: int, payments: int, refunds: int) -> list[str]:
    row = [STATEMENT_SUMMARY, str(count), fen_to_yuan(payments), fen_to_yuan(refunds)]
    return row + [""] * (len(STATEMENT_COLUMNS) - len(row))


def statement_status(record_type: str, status: str) -> str:
    """The bank's status in the gateway's words: SUCCESS -> "succeeded", others lowered."""
    return "succeeded" if status == "SUCCESS" else status.lower()


def parse_statement_row(row: list[str]) -> StatementLine | None:
    """One CSV row as a `StatementLine`; None for the header and the summary. Raises
    ValueError on a row that is not of this format."""
    if not row or row[0] in (STATEMENT_COLUMNS[0], STATEMENT_SUMMARY):
        return None
    if len(row) != len(STATEMENT_COLUMNS):
        raise ValueError(f"statement row with {len(row)} columns")
    fields = dict(zip(STATEMENT_COLUMNS, row, strict=True))
    record_type = fields["record_type"]
    if record_type not in ("PAYMENT", "REFUND"):
        raise ValueError(f"unknown statement record type {record_type!r}")
    is_refund = record_type == "REFUND"
    return StatementLine(
        kind=StatementKind.REFUND if is_refund else StatementKind.PAYMENT,
        channel_order_id=fields["order_no"],
        channel_trade_no=(fields["refund_txn_id"] if is_refund else fields["txn_id"]) or None,
        amount=yuan_to_fen(fields["amount"]),
        status=statement_status(record_type, fields["status"]),
        channel_refund_id=(fields["refund_no"] or None) if is_refund else None,
        fee=yuan_to_fen(fields["fee"]) if fields["fee"] else None,
        occurred_at=parse_time(fields["trans_time"]) if fields["trans_time"] else None,
    )


def parse_summary_row(row: list[str]) -> int | None:
    """The line count a SUMMARY row announces, or None for any other row."""
    if not row or row[0] != STATEMENT_SUMMARY or len(row) < 2:
        return None
    return int(row[1])
