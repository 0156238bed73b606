"""The gateway's side of the `unionpay` channel: UnionPay online gateway 5.1.0, merchant QR codes.

The protocol is in `adapters.unionpay.protocol`. This module signs requests with the merchant's
certificate key (certId = its serial), hands each attempt to the adapter kernel
(`adapters.kernel`: one deadline of ``timeout_ms``, ``max_attempts`` attempts, the retry and
unknown-outcome rules), verifies every response and notification (the signer certificate
carried in ``signPubKeyCert`` must be UnionPay's, valid, and chain to the trusted middle and
root certificates; then the signature), and maps everything to `ChannelResult`.

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
  time (`adapters.unionpay.statement`). The whole signed answer has to be read before its
  signature can be checked, so the compressed file is held in memory once; the text never is.

What the kernel is told (`protocol.RULES`): only queries and the statement are repeated after
an attempt that may have acted (a timeout, a dropped connection, an unsigned 5xx); creates,
refunds and undos are not, because UnionPay refuses a repeated orderId (respCode 12), so a
repeat could never return the QR code or the refund's answer: their outcome is UNKNOWN and a
query settles it. A signed busy answer (respCode 02 / 06 / 96) is asked again on those same
calls; a create answered 96 goes straight back as SYSTEM_ERROR + FAILOVER. A refund or undo
answered 12 (sent twice, e.g. by a gateway retry) is settled by a query at once, which makes
both idempotent by their order ids. A create answered 03/04/05 (processing) or 12 is UNKNOWN,
for the status sync to query.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Literal

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field, SecretStr

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
)
from adapters.kernel import transport
from adapters.kernel.calls import Answer, Busy, Call, Exchanged, Kernel, RetryPolicy
from adapters.kernel.config import (
    ChannelConfig,
    ConfigFieldError,
    certificates_file,
    private_key_file,
)
from adapters.kernel.crypto import certificate_key, same_key
from adapters.kernel.transport import AttemptFailed, Failure
from adapters.unionpay import protocol as p
from adapters.unionpay import statement

log = structlog.get_logger("adapters.unionpay")

_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"}
_MAX_ANSWER_BYTES = 1 << 20
_MAX_FILE_BYTES = 64 << 20
_TXN_TIME_MEMORY = 10_000


class UnionPayConfig(ChannelConfig):
    """The ``config:`` mapping of a `unionpay` channel in the routing file (and the settings
    every channel shares, `ChannelConfig`).

    Relative paths resolve against the gateway's ``config/`` directory; the defaults name the
    development set that `adapters.unionpay.devkeys` writes.
    """

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


CONFIG_MODEL = UnionPayConfig


@dataclass(frozen=True, slots=True)
class UnionPayKeys:
    sign_key: rsa.RSAPrivateKey
    sign_cert: x509.Certificate
    verifier: p.CertificateVerifier


def load_keys(config: UnionPayConfig, config_dir: str) -> UnionPayKeys:
    """Read and check the key and certificates the config names. Raises ConfigFieldError."""
    password = config.sign_key_password
    key = private_key_file(
        config_dir,
        "sign_key_path",
        config.sign_key_path,
        password.get_secret_value().encode("utf-8") if password else None,
    )
    cert = certificates_file(config_dir, "sign_cert_path", config.sign_cert_path)[0]
    if not same_key(key, certificate_key(cert)):
        raise ConfigFieldError("sign_cert_path", "does not match sign_key_path")
    middle = certificates_file(config_dir, "middle_cert_path", config.middle_cert_path)[0]
    root = certificates_file(config_dir, "root_cert_path", config.root_cert_path)[0]
    if root.issuer != root.subject:
        raise ConfigFieldError("root_cert_path", "not a root (self-issued) certificate")
    try:
        verifier = p.CertificateVerifier(root, middle, validate_cn=config.validate_cn_name)
    except ValueError as exc:  # the middle is not a CA issued by this root
        raise ConfigFieldError("middle_cert_path", str(exc)) from None
    return UnionPayKeys(key, cert, verifier)


class UnionPayAdapter(ChannelAdapter):
    adapter = "unionpay"

    def __init__(
        self, name: str, config: UnionPayConfig, ctx: AdapterContext, keys: UnionPayKeys
    ) -> None:
        super().__init__(name)
        self._config = config
        self._http = ctx.http
        self._key = keys.sign_key
        self._cert_id = p.cert_id(keys.sign_cert)
        self._verifier = keys.verifier
        self._kernel = Kernel(name, p.RULES, RetryPolicy.of(config))
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
        return await self._call(
            Call.CREATE, p.BACK_TRANS_PATH, fields, p.create_result, order_id=order_id
        )

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
        call = Call.REFUND_QUERY if refund else Call.QUERY
        return await self._call(call, p.QUERY_PATH, fields, p.query_result, order_id=order_id)

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
        exchanged = await self._exchange(Call.CLOSE, p.BACK_TRANS_PATH, fields, order_id=undo_id)
        answer = exchanged.answer
        code = answer.get("respCode", "") if answer is not None else ""
        if answer is not None and (code in p.PROCESSING_CODES or code in (p.DUPLICATE, "35")):
            # not known yet, or sent before: the order's own state tells whether it is closed
            again = await self.query_payment(order_id)
            if again.outcome is Outcome.FAILED:
                return replace(again, outcome=Outcome.SUCCEEDED, decision=Decision.FINAL)
            if again.outcome is Outcome.SUCCEEDED:
                return ChannelResult(
                    Outcome.FAILED, Decision.FINAL, "ORDER_PAID", "the order is paid", raw=again.raw
                )
            return ChannelResult(Outcome.UNKNOWN, Decision.RETRY, code, answer.get("respMsg"))
        return self._kernel.result(Call.CLOSE, exchanged, _undo_result)

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
        result = await self._call(
            Call.REFUND, p.BACK_TRANS_PATH, fields, p.refund_result, order_id=refund_id
        )
        if result.channel_code == p.DUPLICATE:
            # sent before: the refund that exists under this orderId is the answer
            existing = await self.query_refund(req.channel_order_id, refund_id)
            if existing.outcome in (Outcome.SUCCEEDED, Outcome.WAITING, Outcome.FAILED) and (
                existing.channel_code != p.NOT_FOUND
            ):
                return existing
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
        problem = self._signature_problem(fields, "unionpay_notification_rejected")
        if problem is not None:
            raise NotificationRejected(f"signature: {problem}")
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
        exchanged = await self._exchange(
            Call.STATEMENT,
            p.FILE_PATH,
            fields,
            budget_s=self._config.statement_timeout_ms / 1000,
            max_bytes=_MAX_FILE_BYTES,
        )
        if exchanged.failure is not None:
            raise StatementUnavailable(self._kernel.describe(exchanged.failure))
        answer = exchanged.answer or {}
        code = answer.get("respCode", "")
        if code != p.SUCCESS:
            raise StatementUnavailable(f"respCode {code}: {answer.get('respMsg', '')}")
        try:
            for line in statement.statement_lines(
                statement.unpack_file_lines(answer.get("fileContent", ""))
            ):
                yield line
        except ValueError as exc:
            raise StatementUnavailable(f"malformed reconciliation file: {exc}") from exc

    # ---- the HTTP exchange ----------------------------------------------------------------
    async def _exchange(
        self,
        call: Call,
        path: str,
        fields: Mapping[str, str],
        *,
        order_id: str | None = None,
        budget_s: float | None = None,
        max_bytes: int = _MAX_ANSWER_BYTES,
    ) -> Exchanged[dict[str, str]]:
        """One signed request through the kernel: UnionPay's verified last answer, or how the
        call failed. A busy answer (`protocol.BUSY_CODES`) is asked again where the kernel
        allows it."""
        body = p.encode_form(p.sign_request(fields, self._key, self._cert_id))
        url = self._config.base_url + path

        async def attempt(timeout_s: float) -> Answer[dict[str, str]] | Busy[dict[str, str]]:
            reply = await transport.send(
                self._http,
                "POST",
                url,
                data=body,
                headers=_FORM_HEADERS,
                timeout_s=timeout_s,
                max_bytes=max_bytes,
            )
            if reply.status != 200:
                raise self._kernel.unsigned(reply.status)
            try:
                answer = p.parse_message(reply.body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise AttemptFailed(Failure.BAD_ANSWER, "unparsable answer") from None
            problem = self._signature_problem(answer, "unionpay_response_signature_invalid")
            if problem is not None:
                raise AttemptFailed(Failure.BAD_SIGNATURE, problem)
            self._check(answer, order_id)
            if answer.get("respCode") in p.BUSY_CODES:
                return Busy(answer)
            return Answer(answer)

        return await self._kernel.exchange(call, attempt, budget_s=budget_s)

    async def _call(
        self,
        call: Call,
        path: str,
        fields: Mapping[str, str],
        read: Callable[[dict[str, str]], ChannelResult],
        *,
        order_id: str,
    ) -> ChannelResult:
        exchanged = await self._exchange(call, path, fields, order_id=order_id)
        return self._kernel.result(call, exchanged, read)

    def _signature_problem(self, fields: Mapping[str, str], event: str) -> str | None:
        """Why a message signed by UnionPay does not verify (logged as `event`), or None."""
        try:
            self._verifier.verify_message(fields)
        except p.SignatureError as exc:
            log.warning(event, channel=self.name, order_id=fields.get("orderId"), reason=str(exc))
            return str(exc)
        return None

    def _check(self, answer: Mapping[str, str], order_id: str | None) -> None:
        if order_id is not None and answer.get("orderId", order_id) != order_id:
            log.warning("unionpay_answer_mismatch", channel=self.name, order_id=order_id)
            raise AttemptFailed(Failure.BAD_ANSWER, "the answer is for another orderId")
        if answer.get("merId", self.mer_id) != self.mer_id:
            raise AttemptFailed(Failure.BAD_ANSWER, "the answer is for another merId")


def _undo_result(answer: Mapping[str, str]) -> ChannelResult:
    """The answer to an undo (31) that closes a waiting order."""
    code = answer.get("respCode", "")
    if code == p.SUCCESS:
        return ChannelResult(
            Outcome.SUCCEEDED,
            Decision.FINAL,
            code,
            answer.get("respMsg"),
            channel_trade_no=answer.get("queryId") or None,
            raw=dict(answer),
        )
    return p.refusal(code, answer.get("respMsg"), answer)


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Build a `unionpay` channel from its routing-file ``config:``. Keys and certificates are
    loaded and checked here, once. Raises ValueError (pydantic's ValidationError or
    ConfigFieldError) on a bad configuration."""
    cfg = UnionPayConfig.model_validate(dict(config))
    return UnionPayAdapter(name, cfg, ctx, load_keys(cfg, ctx.config_dir))
