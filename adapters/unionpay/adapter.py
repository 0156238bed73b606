"""The gateway's side of the `unionpay` channel: UnionPay online gateway 5.1.0, merchant QR codes.

The protocol is in `adapters.unionpay.protocol`. This module signs requests with the merchant's
certificate key (certId = its serial), verifies every response and notification (the signer
certificate carried in ``signPubKeyCert`` must be UnionPay's, valid, and chain to the trusted
middle and root certificates; then the signature), and maps everything to `ChannelResult`.

What each call does at UnionPay:

- create: a consumption QR application (txnType 01 / txnSubType 07). The answer's ``qrCode``
  is the payer's URL (``next_action`` type ``qr_code``). The real answer has no ``queryId``;
  UnionPay's transaction id comes with the notification or a query.
- query: txnType 00 by ``orderId`` + ``txnTime``. UnionPay keys transactions by both, while
  the adapter interface passes only the order id: `channel_order_id` builds order ids from the
  gateway's time-ordered ids, and the txnTime of an attempt is the time embedded in its id
  (`protocol.attempt_txn_time`), so it can always be rebuilt. For order ids of another shape the
  adapter remembers the txnTime it sent, in memory (lost on restart: such a query then answers
  UNKNOWN).
- close: UnionPay has no "close" for an unpaid QR order (its code expires at ``payTimeout``).
  The adapter queries the order; an order already paid is refused here (FAILED
  ``ORDER_PAID``, no undo is sent: the real consumption undo, 31, would reverse the money);
  an order that is cancelled, closed or was never created counts as closed; a waiting one is
  closed with an undo (txnType 31, ``origQryId`` from the query), which the simulator applies
  to unpaid orders.
- refund: txnType 04 with ``origQryId`` (from a query of the payment), its own ``orderId``
  (the refund id) and ``reqReserved`` = the payment's order id, which UnionPay echoes in the
  refund notification. Refunds are asynchronous: 00 = accepted (WAITING); the result comes by
  notification or by `query_refund` (a query by the refund's own orderId).
- statement: txnType 76 (``fileTransReq.do``), ``settleDate`` MMDD; the file comes back
  deflated and base64-encoded in the signed answer, and is inflated and parsed a chunk at a
  time. The whole signed answer has to be read before its signature can be checked, so the
  compressed file is held in memory once; the text never is.

Retries (tenacity, within one call, all attempts within ``timeout_ms``, ``max_attempts``
attempts, exponential backoff with jitter from 50 ms): a connection that could not be made is
retried on every call (nothing was sent). Timeouts, dropped connections, HTTP 5xx and a signed
"busy" answer (respCode 02 / 06 / 96) are retried on queries and the statement only (a create
answered 96 goes straight back as SYSTEM_ERROR + FAILOVER, so the gateway fails over fast).
Creates, refunds and undos are not repeated after they may have been sent: UnionPay refuses a
repeated orderId (respCode 12), so a repeat could never return the QR code or the refund's
answer; instead the outcome is UNKNOWN and a query settles it. A refund or undo answered 12
(sent twice, e.g. by a gateway retry) is settled by a query at once, which makes both
idempotent by their order ids.

Outcomes: a create answered 03/04/05/12 or HTTP 5xx is followed by a query: when UnionPay has no
such order (34) nothing was created and the create is SYSTEM_ERROR + FAILOVER, otherwise
UNKNOWN. A timeout or a dropped connection after sending is UNKNOWN (never failed over). A
response whose signature or signer certificate does not verify is UNKNOWN with channel_code
``INVALID_SIGNATURE`` and a warning in the log.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from adapters.base import (
    Ack,
    AdapterContext,
    ChannelAdapter,
    ChannelResult,
    CreatePayment,
    CreateRefund,
    Decision,
    IncomingRequest,
    Notification,
    NotificationKind,
    NotificationRejected,
    Outcome,
    StatementLine,
    StatementUnavailable,
    check_base_url,
)
from adapters.unionpay import protocol as p

log = structlog.get_logger("adapters.unionpay")

_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"}
_MAX_ANSWER_BYTES = 1 << 20
_MAX_FILE_BYTES = 64 << 20
_TXN_TIME_MEMORY = 10_000


class UnionPayConfig(BaseModel):
    """The ``config:`` mapping of a `unionpay` channel in the routing file.

    Relative paths resolve against the gateway's ``config/`` directory; the defaults name the
    development set that `adapters.unionpay.devkeys` writes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="UnionPay's root, e.g. https://gateway.95516.com")
    mer_id: str = Field(pattern=r"^[0-9A-Za-z]{15}$", description="merId, 15 characters")
    sign_key_path: str = Field(default="keys/unionpay/merchant_sign_key.pem", min_length=1)
    """PEM private key of the merchant's signing certificate (the .pfx's key)."""
    sign_key_password: SecretStr | None = None
    sign_cert_path: str = Field(default="keys/unionpay/merchant_sign_cert.pem", min_length=1)
    """PEM certificate of the merchant's signing key: its serial is the requests' certId."""
    middle_cert_path: str = Field(default="keys/unionpay/middle_ca.pem", min_length=1)
    root_cert_path: str = Field(default="keys/unionpay/root_ca.pem", min_length=1)
    validate_cn_name: bool = True
    """The SDK's ``ifValidateCNName``: false also accepts the test environment's
    ``00040000:SIGN`` signer."""
    channel_type: Literal["07", "08"] = "08"
    """channelType of the QR application: 08 mobile (UnionPay's QR demos), 07 internet."""
    timeout_ms: int = Field(default=5000, ge=50, le=60_000)
    """The budget of one call, all attempts included."""
    max_attempts: int = Field(default=2, ge=1, le=5)
    statement_timeout_ms: int = Field(default=30_000, ge=100, le=600_000)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return check_base_url(value)


_Kind = Literal[
    "not_sent", "no_answer", "http_5xx", "http_status", "bad_message", "bad_signature", "busy"
]


class _CallError(Exception):
    def __init__(
        self,
        kind: _Kind,
        detail: str,
        *,
        retryable: bool,
        answer: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind: _Kind = kind
        self.detail = detail
        self.retryable = retryable
        self.answer = answer
        """A verified answer worth retrying (busy): what the call returns once retries end."""


@dataclass(slots=True)
class _CallState:
    maybe_sent: bool = False
    attempts: int = 0


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _CallError) and exc.retryable


def _resolve(config_dir: str, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(config_dir) / candidate


_FAILURE_CODES: dict[_Kind, str] = {
    "not_sent": "CONNECTION_FAILED",
    "no_answer": "NO_ANSWER",
    "http_5xx": "HTTP_5XX",
    "http_status": "HTTP_STATUS",
    "bad_message": "MALFORMED_RESPONSE",
    "bad_signature": "INVALID_SIGNATURE",
    "busy": "BUSY",
}


def _failure_result(error: _CallError, outcome: Outcome, decision: Decision) -> ChannelResult:
    return ChannelResult(outcome, decision, _FAILURE_CODES[error.kind], error.detail)


class UnionPayAdapter(ChannelAdapter):
    adapter = "unionpay"

    def __init__(
        self,
        name: str,
        config: UnionPayConfig,
        ctx: AdapterContext,
        sign_key: rsa.RSAPrivateKey,
        sign_cert: x509.Certificate,
        verifier: p.CertificateVerifier,
    ) -> None:
        super().__init__(name)
        self._config = config
        self._http = ctx.http
        self._key = sign_key
        self._cert_id = p.cert_id(sign_cert)
        self._verifier = verifier
        self._budget_s = config.timeout_ms / 1000
        self._txn_times: OrderedDict[str, str] = OrderedDict()

    @property
    def mer_id(self) -> str:
        return self._config.mer_id

    # ---- ids ------------------------------------------------------------------------------
    def channel_order_id(self, payment_id: str, seq: int) -> str:
        return p.attempt_order_id(payment_id, seq)

    def channel_refund_id(self, refund_id: str) -> str:
        return p.refund_order_id(refund_id)

    def _remember(self, order_id: str, txn_time: str) -> None:
        self._txn_times[order_id] = txn_time
        self._txn_times.move_to_end(order_id)
        while len(self._txn_times) > _TXN_TIME_MEMORY:
            self._txn_times.popitem(last=False)

    def _txn_time_for(self, order_id: str, *, refund: bool) -> str | None:
        derived = p.refund_txn_time(order_id) if refund else p.attempt_txn_time(order_id)
        return derived or self._txn_times.get(order_id)

    def _new_txn_time(self, order_id: str, *, refund: bool) -> str:
        derived = p.refund_txn_time(order_id) if refund else p.attempt_txn_time(order_id)
        if derived:
            return derived
        txn_time = p.format_txn_time(p.china_now())
        self._remember(order_id, txn_time)
        return txn_time

    def _common(self, txn_type: str, sub_type: str) -> dict[str, str]:
        return {
            "version": p.VERSION,
            "encoding": p.ENCODING,
            "signMethod": p.SIGN_METHOD_RSA,
            "txnType": txn_type,
            "txnSubType": sub_type,
            "bizType": p.BIZ_TYPE_QR,
            "accessType": p.ACCESS_TYPE_MERCHANT,
            "merId": self.mer_id,
        }

    # ---- payments -------------------------------------------------------------------------
    async def create_payment(self, req: CreatePayment) -> ChannelResult:
        if req.method != "unionpay_qr":
            return ChannelResult(
                Outcome.SYSTEM_ERROR,
                Decision.FAILOVER,
                "UNSUPPORTED_METHOD",
                f"this channel takes unionpay_qr payments, not {req.method}",
            )
        if req.currency != "CNY":
            return ChannelResult(
                Outcome.SYSTEM_ERROR,
                Decision.FAILOVER,
                "UNSUPPORTED_CURRENCY",
                f"UnionPay QR payments are in CNY, not {req.currency}",
            )
        order_id = req.channel_order_id
        if not p.ORDER_ID_RE.match(order_id):
            return ChannelResult(
                Outcome.SYSTEM_ERROR,
                Decision.FAILOVER,
                "INVALID_ORDER_ID",
                "orderId must be 8 to 40 letters and digits",
            )
        txn_time = self._new_txn_time(order_id, refund=False)
        fields = self._common(p.TXN_CONSUME, p.SUB_QR_APPLY) | {
            "channelType": self._config.channel_type,
            "orderId": order_id,
            "txnTime": txn_time,
            "txnAmt": p.format_amount(req.amount),
            "currencyCode": p.CURRENCY_CNY,
            "backUrl": req.notify_url,
            "payTimeout": p.format_txn_time(req.expires_at),
            "orderDesc": req.description[:32],
        }
        try:
            answer = await self._call(p.BACK_TRANS_PATH, fields, safe=False, order_id=order_id)
        except _CallError as error:
            if error.kind in ("not_sent", "http_status"):
                return _failure_result(error, Outcome.SYSTEM_ERROR, Decision.FAILOVER)
            if error.kind == "http_5xx":
                return await self._settle_create(
                    order_id, _failure_result(error, Outcome.UNKNOWN, Decision.FINAL)
                )
            return _failure_result(error, Outcome.UNKNOWN, Decision.FINAL)
        result = p.create_result(answer)
        code = result.channel_code or ""
        if result.outcome is Outcome.UNKNOWN and (
            code in p.PROCESSING_CODES or code == p.DUPLICATE
        ):
            return await self._settle_create(order_id, result)
        return result

    async def _settle_create(self, order_id: str, unknown: ChannelResult) -> ChannelResult:
        """A create whose answer leaves open whether an order exists: ask. No such order (34)
        means nothing was created, so another channel may take the payment."""
        found = await self.query_payment(order_id)
        if found.outcome is Outcome.FAILED and found.channel_code == p.NOT_FOUND:
            log.info("unionpay_create_not_created", channel=self.name, order_id=order_id)
            return replace(unknown, outcome=Outcome.SYSTEM_ERROR, decision=Decision.FAILOVER)
        log.info(
            "unionpay_create_unknown",
            channel=self.name,
            order_id=order_id,
            code=unknown.channel_code,
            query=found.outcome.value,
        )
        return replace(unknown, outcome=Outcome.UNKNOWN, decision=Decision.FINAL)

    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        return await self._query(channel_order_id, refund=False)

    async def _query(self, order_id: str, *, refund: bool) -> ChannelResult:
        txn_time = self._txn_time_for(order_id, refund=refund)
        if txn_time is None:
            return ChannelResult(
                Outcome.UNKNOWN,
                Decision.FINAL,
                "TXN_TIME_UNKNOWN",
                "the txnTime of this orderId is not known (not a gateway id, not sent here)",
            )
        fields = self._common(p.TXN_QUERY, p.SUB_DEFAULT) | {
            "orderId": order_id,
            "txnTime": txn_time,
        }
        try:
            answer = await self._call(p.QUERY_PATH, fields, safe=True, order_id=order_id)
        except _CallError as error:
            return _failure_result(error, Outcome.UNKNOWN, Decision.RETRY)
        return p.query_result(answer)

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        order_id = channel_order_id
        found = await self.query_payment(order_id)
        if found.outcome is Outcome.SUCCEEDED:
            return ChannelResult(
                Outcome.FAILED,
                Decision.FINAL,
                "ORDER_PAID",
                "the order is paid; it was not undone",
                channel_trade_no=found.channel_trade_no,
                raw=found.raw,
            )
        if found.outcome is Outcome.FAILED:
            # cancelled, closed before, or never created: nothing can be paid any more
            return replace(found, outcome=Outcome.SUCCEEDED, decision=Decision.FINAL)
        if found.outcome is not Outcome.WAITING:
            return replace(found, outcome=Outcome.UNKNOWN, decision=Decision.RETRY)
        query_id = found.channel_trade_no
        amount = found.raw.get("txnAmt", "")
        if not query_id or not amount:
            return ChannelResult(
                Outcome.UNKNOWN, Decision.RETRY, "NO_QUERY_ID", "the query gave no queryId"
            )
        undo_id = p.undo_order_id(order_id)
        fields = self._common(p.TXN_UNDO, p.SUB_DEFAULT) | {
            "channelType": self._config.channel_type,
            "orderId": undo_id,
            "origQryId": query_id,
            "txnTime": p.format_txn_time(p.china_now()),
            "txnAmt": amount,
        }
        try:
            answer = await self._call(p.BACK_TRANS_PATH, fields, safe=False, order_id=undo_id)
        except _CallError as error:
            if error.kind in ("not_sent", "http_status"):
                return _failure_result(error, Outcome.SYSTEM_ERROR, Decision.RETRY)
            return _failure_result(error, Outcome.UNKNOWN, Decision.RETRY)
        code = answer.get("respCode", "")
        if code == p.SUCCESS:
            return ChannelResult(
                Outcome.SUCCEEDED,
                Decision.FINAL,
                code,
                answer.get("respMsg"),
                channel_trade_no=answer.get("queryId") or None,
                raw=answer,
            )
        if code in p.PROCESSING_CODES or code in (p.DUPLICATE, "35"):
            again = await self.query_payment(order_id)
            if again.outcome is Outcome.FAILED:
                return replace(again, outcome=Outcome.SUCCEEDED, decision=Decision.FINAL)
            if again.outcome is Outcome.SUCCEEDED:
                return ChannelResult(
                    Outcome.FAILED, Decision.FINAL, "ORDER_PAID", "the order is paid", raw=again.raw
                )
            return ChannelResult(Outcome.UNKNOWN, Decision.RETRY, code, answer.get("respMsg"))
        return p.refusal(code, answer.get("respMsg"), answer)

    # ---- refunds --------------------------------------------------------------------------
    async def refund(self, req: CreateRefund) -> ChannelResult:
        refund_id = req.channel_refund_id
        if not p.ORDER_ID_RE.match(refund_id):
            return ChannelResult(
                Outcome.FAILED, Decision.FINAL, "INVALID_ORDER_ID", "bad refund orderId"
            )
        original = await self.query_payment(req.channel_order_id)
        if original.outcome is Outcome.UNKNOWN or original.outcome is Outcome.SYSTEM_ERROR:
            return ChannelResult(
                Outcome.SYSTEM_ERROR,
                Decision.RETRY,
                original.channel_code,
                "could not query the payment before refunding (nothing was sent)",
            )
        if original.outcome is not Outcome.SUCCEEDED or not original.channel_trade_no:
            return ChannelResult(
                Outcome.FAILED, Decision.FINAL, "35", p.resp_message("35"), raw=original.raw
            )
        txn_time = self._new_txn_time(refund_id, refund=True)
        fields = self._common(p.TXN_REFUND, p.SUB_DEFAULT) | {
            "channelType": self._config.channel_type,
            "orderId": refund_id,
            "origQryId": original.channel_trade_no,
            "txnTime": txn_time,
            "txnAmt": p.format_amount(req.amount),
            "backUrl": req.notify_url,
            "reqReserved": req.channel_order_id,
        }
        try:
            answer = await self._call(p.BACK_TRANS_PATH, fields, safe=False, order_id=refund_id)
        except _CallError as error:
            if error.kind in ("not_sent", "http_status"):
                return _failure_result(error, Outcome.SYSTEM_ERROR, Decision.RETRY)
            return _failure_result(error, Outcome.UNKNOWN, Decision.RETRY)
        result = p.refund_result(answer)
        if result.channel_code == p.DUPLICATE:
            # sent before: the refund that exists under this orderId is the answer
            existing = await self.query_refund(req.channel_order_id, refund_id)
            if existing.outcome in (Outcome.SUCCEEDED, Outcome.WAITING, Outcome.FAILED) and (
                existing.channel_code != p.NOT_FOUND
            ):
                return existing
            return result
        return result

    async def query_refund(self, channel_order_id: str, channel_refund_id: str) -> ChannelResult:
        return await self._query(channel_refund_id, refund=True)

    # ---- notifications --------------------------------------------------------------------
    def parse_notification(self, request: IncomingRequest) -> Notification:
        if request.method.upper() != "POST":
            raise NotificationRejected("notifications are POSTed")
        try:
            fields = p.parse_form(request.body)
        except (UnicodeDecodeError, ValueError) as exc:
            log.warning("unionpay_notification_malformed", channel=self.name, error=str(exc))
            raise NotificationRejected(f"not a UTF-8 form: {exc}") from exc
        try:
            self._verifier.verify_message(fields)
        except p.SignatureError as exc:
            log.warning(
                "unionpay_notification_rejected",
                channel=self.name,
                order_id=fields.get("orderId"),
                reason=str(exc),
            )
            raise NotificationRejected(f"signature: {exc}") from exc
        if fields.get("merId") != self.mer_id:
            log.warning("unionpay_notification_other_merchant", channel=self.name)
            raise NotificationRejected("the notification is for another merchant")
        order_id = fields.get("orderId", "")
        if not p.ORDER_ID_RE.match(order_id):
            raise NotificationRejected("no valid orderId")
        result = p.notification_result(fields)
        txn_type = fields.get("txnType")
        if txn_type == p.TXN_CONSUME:
            return Notification(NotificationKind.PAYMENT, order_id, result)
        if txn_type == p.TXN_REFUND:
            payment_order_id = fields.get("reqReserved", "")
            if not p.ORDER_ID_RE.match(payment_order_id):
                log.warning("unionpay_refund_notification_unlinked", channel=self.name)
                raise NotificationRejected("refund notification without the payment's orderId")
            return Notification(
                NotificationKind.REFUND, payment_order_id, result, channel_refund_id=order_id
            )
        raise NotificationRejected(f"unsupported txnType {txn_type!r}")

    def ack(self, accepted: bool) -> Ack:
        """UnionPay only looks at the HTTP status: 200 stops its retries."""
        if accepted:
            return Ack(200, b"ok")
        return Ack(500, b"fail")

    # ---- statement ------------------------------------------------------------------------
    async def download_statement(self, day: date) -> AsyncIterator[StatementLine]:
        fields = self._common(p.TXN_FILE, p.SUB_FILE_SETTLE) | {
            "channelType": p.CHANNEL_TYPE_INTERNET,
            "settleDate": day.strftime("%m%d"),
            "txnTime": p.format_txn_time(p.china_now()),
            "fileType": p.FILE_TYPE_SETTLE,
        }
        try:
            answer = await self._call(
                p.FILE_PATH,
                fields,
                safe=True,
                budget_s=self._config.statement_timeout_ms / 1000,
                max_bytes=_MAX_FILE_BYTES,
            )
        except _CallError as error:
            raise StatementUnavailable(f"{_FAILURE_CODES[error.kind]}: {error.detail}") from error
        code = answer.get("respCode", "")
        if code != p.SUCCESS:
            raise StatementUnavailable(f"respCode {code}: {answer.get('respMsg', '')}")
        try:
            for line in p.statement_lines(p.unpack_file_lines(answer.get("fileContent", ""))):
                yield line
        except ValueError as exc:
            raise StatementUnavailable(f"malformed reconciliation file: {exc}") from exc

    # ---- the HTTP exchange ----------------------------------------------------------------
    async def _call(
        self,
        path: str,
        fields: Mapping[str, str],
        *,
        safe: bool,
        order_id: str | None = None,
        budget_s: float | None = None,
        max_bytes: int = _MAX_ANSWER_BYTES,
    ) -> dict[str, str]:
        """Send one signed request and return UnionPay's verified answer. `safe` calls (query,
        statement) are repeated on timeouts, dropped connections, 5xx and a busy UnionPay
        (`protocol.BUSY_CODES`); every call is repeated when the connection could not be made.
        Raises _CallError."""
        body = p.encode_form(p.sign_request(fields, self._key, self._cert_id))
        url = self._config.base_url + path
        budget = budget_s if budget_s is not None else self._budget_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        state = _CallState()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.max_attempts) | stop_before_delay(budget),
            wait=wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        answer: dict[str, str] = {}
        try:
            async for attempt in retrying:
                with attempt:
                    answer = await self._once(url, body, deadline, state, safe, max_bytes)
        except _CallError as error:
            if error.answer is not None:
                return self._checked(error.answer, order_id)
            if error.kind == "not_sent" and state.maybe_sent:
                # a later attempt could not connect, but an earlier one may have been sent
                error = _CallError("no_answer", error.detail, retryable=False)
            log.info(
                "unionpay_call_failed",
                channel=self.name,
                path=path,
                txn_type=fields.get("txnType"),
                order_id=order_id,
                failure=error.kind,
                attempts=state.attempts,
            )
            raise error from None
        return self._checked(answer, order_id)

    def _checked(self, answer: dict[str, str], order_id: str | None) -> dict[str, str]:
        if order_id is not None and answer.get("orderId", order_id) != order_id:
            log.warning("unionpay_answer_mismatch", channel=self.name, order_id=order_id)
            raise _CallError("bad_message", "the answer is for another orderId", retryable=False)
        if answer.get("merId", self.mer_id) != self.mer_id:
            raise _CallError("bad_message", "the answer is for another merId", retryable=False)
        return answer

    async def _once(
        self,
        url: str,
        body: bytes,
        deadline: float,
        state: _CallState,
        safe: bool,
        max_bytes: int,
    ) -> dict[str, str]:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise _CallError("no_answer", "call budget spent", retryable=False)
        state.attempts += 1
        try:
            async with self._http.post(
                url,
                data=body,
                headers=_FORM_HEADERS,
                timeout=aiohttp.ClientTimeout(total=remaining),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.content.read(max_bytes + 1)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _CallError("not_sent", type(exc).__name__, retryable=True) from exc
        except TimeoutError as exc:
            state.maybe_sent = True
            raise _CallError("no_answer", "timed out", retryable=safe) from exc
        except aiohttp.ClientError as exc:
            state.maybe_sent = True
            raise _CallError("no_answer", type(exc).__name__, retryable=safe) from exc
        state.maybe_sent = True
        if status >= 500:
            raise _CallError("http_5xx", f"HTTP {status}", retryable=safe)
        if status != 200:
            raise _CallError("http_status", f"HTTP {status}", retryable=False)
        if len(raw) > max_bytes:
            raise _CallError("bad_message", "answer too large", retryable=False)
        try:
            answer = p.parse_message(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _CallError("bad_message", "unparsable answer", retryable=False) from exc
        try:
            self._verifier.verify_message(answer)
        except p.SignatureError as exc:
            log.warning(
                "unionpay_response_signature_invalid",
                channel=self.name,
                url=url,
                order_id=answer.get("orderId"),
                reason=str(exc),
            )
            raise _CallError("bad_signature", str(exc), retryable=False) from exc
        if safe and answer.get("respCode") in p.BUSY_CODES:
            raise _CallError("busy", answer["respCode"], retryable=True, answer=answer)
        return answer


def _load_private_key(path: Path, password: SecretStr | None) -> rsa.RSAPrivateKey:
    secret = password.get_secret_value().encode("utf-8") if password else None
    key = serialization.load_pem_private_key(path.read_bytes(), password=secret)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Build a `unionpay` channel from its routing-file ``config:``. Keys and certificates are
    loaded and checked here, once. Raises ValueError on a bad configuration."""
    try:
        cfg = UnionPayConfig.model_validate(dict(config))
    except ValidationError as exc:
        raise ValueError(f"channel {name!r}: invalid unionpay config: {exc}") from exc
    try:
        key = _load_private_key(_resolve(ctx.config_dir, cfg.sign_key_path), cfg.sign_key_password)
        cert = _load_cert(_resolve(ctx.config_dir, cfg.sign_cert_path))
        middle = _load_cert(_resolve(ctx.config_dir, cfg.middle_cert_path))
        root = _load_cert(_resolve(ctx.config_dir, cfg.root_cert_path))
        verifier = p.CertificateVerifier(root, middle, validate_cn=cfg.validate_cn_name)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"channel {name!r}: cannot load unionpay keys: {exc}") from exc
    cert_key = cert.public_key()
    if (
        not isinstance(cert_key, rsa.RSAPublicKey)
        or cert_key.public_numbers() != key.public_key().public_numbers()
    ):
        raise ValueError(f"channel {name!r}: sign_cert_path does not match sign_key_path")
    return UnionPayAdapter(name, cfg, ctx, key, cert, verifier)
