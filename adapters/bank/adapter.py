"""The gateway's side of the `bank` channel (card payments through the bank's hosted page).

The protocol is in `adapters.bank.protocol`. This module signs requests with the merchant's
RSA key, hands each attempt to the adapter kernel (`adapters.kernel`: one deadline of
``timeout_ms``, ``max_attempts``, the retry and unknown-outcome rules), verifies every answer and
notification with the bank's public key, and maps the bank's answers to `ChannelResult` through
its results table (`protocol.to_result`).

What the kernel is told about the bank (`protocol.RULES`): every call is safe to repeat, creates
and refunds included, because the bank keys them by ``order_no`` / ``refund_no`` and answers a
repeat with the existing object. A signed 91/96 (HTTP 5xx) is a busy answer: asked again on
calls on an existing order; a create answered so fails over at once (SYSTEM_ERROR + FAILOVER).
An answer without the bank's signature headers is judged by its HTTP status
(`adapters.kernel.transport.status_failure`); one whose signature does not verify is not trusted.

A notification is accepted only with the bank's valid signature, addressed to our merchant id,
and with a timestamp within 5 minutes of our clock (`protocol.NOTIFICATION_WINDOW_S`): a recorded
one cannot be replayed later. Its ``notify_id`` is the `Notification.notification_id` the
gateway applies once.

Configuration (the channel's ``config:`` in the routing file), see `BankConfig`.
"""

from __future__ import annotations

import csv
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
import structlog
from pydantic import Field, ValidationError
from yarl import URL

from adapters.bank import protocol as p
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
    NotificationRejected,
    Outcome,
    ResponseVerificationError,
    StatementLine,
    StatementUnavailable,
)
from adapters.kernel import transport
from adapters.kernel.calls import Answer, Busy, Call, Kernel, RetryPolicy
from adapters.kernel.config import ChannelConfig, SigningKeys, signing_keys
from adapters.kernel.transport import AttemptFailed, Failure, header

log = structlog.get_logger("adapters.bank")

_ID = re.compile(p.ORDER_NO_PATTERN)
_MAX_ANSWER_BYTES = 1 << 20
_SPOOL_MEMORY_BYTES = 1 << 20


class BankConfig(ChannelConfig):
    """The ``config:`` mapping of a `bank` channel in the routing file (and the settings every
    channel shares, `ChannelConfig`).

    Relative key paths resolve against the gateway's ``config/`` directory.
    """

    merchant_id: str = Field(min_length=1, max_length=32)
    merchant_private_key: str = Field(
        min_length=1, description="PEM file: the merchant's RSA private key (signs requests)"
    )
    bank_public_key: str = Field(
        min_length=1, description="PEM file: the bank's RSA public key (verifies its messages)"
    )
    return_url: str | None = Field(default=None, pattern=r"^https?://")
    """Where the hosted page sends the card holder afterwards, when the payment names none."""


CONFIG_MODEL = BankConfig


def load_keys(config: BankConfig, config_dir: str) -> SigningKeys:
    """The merchant's private key and the bank's public key. Raises ConfigFieldError."""
    return signing_keys(
        config_dir,
        ("merchant_private_key", config.merchant_private_key),
        ("bank_public_key", config.bank_public_key),
    )


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"not a valid bank order or refund number: {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _Statement:
    """A statement attempt's answer: the verified file, or the bank's error."""

    spool: IO[bytes] | None
    error: str = ""


class BankAdapter(ChannelAdapter):
    adapter = "bank"

    def __init__(
        self,
        name: str,
        config: BankConfig,
        ctx: AdapterContext,
        keys: SigningKeys,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name)
        self.clock = clock
        """Unix seconds now: what a notification's timestamp is checked against."""
        self._config = config
        self._http = ctx.http
        self._merchant_key = keys.own
        self._bank_key = keys.channel
        parts = urlsplit(config.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._kernel = Kernel(name, p.RULES, RetryPolicy.of(config))

    @property
    def merchant_id(self) -> str:
        return self._config.merchant_id

    # ---- calls ----------------------------------------------------------------------------
    async def create_payment(self, req: CreatePayment) -> ChannelResult:
        if req.method != "card":
            return ChannelResult(
                Outcome.SYSTEM_ERROR,
                Decision.FAILOVER,
                "UNSUPPORTED_METHOD",
                f"the bank takes card payments only, not {req.method}",
            )
        payload: dict[str, Any] = {
            "merchant_id": self.merchant_id,
            "order_no": _check_id(req.channel_order_id),
            "amount": req.amount,
            "currency": req.currency,
            "description": req.description,
            "notify_url": req.notify_url,
            "expire_time": p.format_time(req.expires_at),
        }
        return_url = req.return_url or self._config.return_url
        if return_url:
            payload["return_url"] = return_url
        if req.payer_ip:
            payload["payer_ip"] = req.payer_ip
        return await self._call(
            Call.CREATE,
            "POST",
            p.PATH_ORDERS,
            payload,
            order_no=req.channel_order_id,
            amount=req.amount,
        )

    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        order_no = _check_id(channel_order_id)
        return await self._call(
            Call.QUERY, "GET", f"{p.PATH_ORDERS}/{order_no}", None, order_no=order_no
        )

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        order_no = _check_id(channel_order_id)
        return await self._call(
            Call.CLOSE,
            "POST",
            f"{p.PATH_ORDERS}/{order_no}/close",
            {"merchant_id": self.merchant_id},
            order_no=order_no,
        )

    async def refund(self, req: CreateRefund) -> ChannelResult:
        payload: dict[str, Any] = {
            "merchant_id": self.merchant_id,
            "order_no": _check_id(req.channel_order_id),
            "refund_no": _check_id(req.channel_refund_id),
            "amount": req.amount,
            "currency": req.currency,
        }
        if req.reason:
            payload["reason"] = req.reason[:256]
        return await self._call(
            Call.REFUND,
            "POST",
            p.PATH_REFUNDS,
            payload,
            order_no=req.channel_order_id,
            refund_no=req.channel_refund_id,
            amount=req.amount,
        )

    async def query_refund(self, channel_order_id: str, channel_refund_id: str) -> ChannelResult:
        refund_no = _check_id(channel_refund_id)
        return await self._call(
            Call.REFUND_QUERY,
            "GET",
            f"{p.PATH_REFUNDS}/{refund_no}",
            None,
            order_no=_check_id(channel_order_id),
            refund_no=refund_no,
        )

    # ---- the HTTP exchange ----------------------------------------------------------------
    def _signed_headers(self, method: str, path_qs: str, body: bytes) -> tuple[dict[str, str], str]:
        timestamp = str(int(self.clock()))
        nonce = secrets.token_urlsafe(24)
        message = p.request_message(method, path_qs, timestamp, nonce, body)
        headers = {
            p.HEADER_MERCHANT: self.merchant_id,
            p.HEADER_TIMESTAMP: timestamp,
            p.HEADER_NONCE: nonce,
            p.HEADER_SIGNATURE: p.sign(self._merchant_key, message),
            "Accept": "application/json",
        }
        if body:
            headers["Content-Type"] = "application/json"
        return headers, nonce

    def _check_signature(
        self, status: int, headers: Mapping[str, str], path_qs: str, nonce: str, body: bytes
    ) -> None:
        """Raises AttemptFailed unless the answer carries the bank's valid signature over it,
        made for this request (its nonce)."""
        signature = header(headers, p.HEADER_SIGNATURE)
        timestamp = header(headers, p.HEADER_TIMESTAMP)
        if not signature or not timestamp:
            log.warning("bank_response_unsigned", channel=self.name, path=path_qs, status=status)
            raise self._kernel.unsigned(status)
        message = p.response_message(status, path_qs, timestamp, nonce, body)
        if header(headers, p.HEADER_NONCE) != nonce or not p.verify(
            self._bank_key, message, signature
        ):
            log.warning(
                "bank_response_signature_invalid", channel=self.name, path=path_qs, status=status
            )
            raise AttemptFailed(Failure.BAD_SIGNATURE, "the answer's signature did not verify")

    async def _call(
        self,
        call: Call,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None,
        *,
        order_no: str,
        refund_no: str | None = None,
        amount: int | None = None,
    ) -> ChannelResult:
        body = orjson.dumps(payload) if payload is not None else b""
        path_qs = self._prefix + path

        async def attempt(
            timeout_s: float,
        ) -> Answer[tuple[p.ApiAnswer, dict[str, Any]]] | Busy[tuple[p.ApiAnswer, dict[str, Any]]]:
            headers, nonce = self._signed_headers(method, path_qs, body)
            reply = await transport.send(
                self._http,
                method,
                URL(self._origin + path_qs, encoded=True),
                data=body or None,
                headers=headers,
                timeout_s=timeout_s,
                max_bytes=_MAX_ANSWER_BYTES,
            )
            self._check_signature(reply.status, reply.headers, path_qs, nonce, reply.body)
            try:
                data = orjson.loads(reply.body)
                answer = p.ApiAnswer.model_validate(data)
            except (orjson.JSONDecodeError, ValidationError):
                log.warning("bank_answer_invalid", channel=self.name, call=call.value)
                raise AttemptFailed(
                    Failure.BAD_ANSWER, "a signed answer of no known shape"
                ) from None
            mismatch = self._mismatch(answer, order_no, refund_no, amount)
            if mismatch:
                log.warning(
                    "bank_answer_mismatch", channel=self.name, call=call.value, detail=mismatch
                )
                raise AttemptFailed(Failure.BAD_ANSWER, mismatch)
            if reply.status >= 500 and answer.resp_code in p.SYSTEM_ERROR_CODES:
                return Busy((answer, data))
            return Answer((answer, data))

        return await self._kernel.call(
            call, attempt, lambda found: p.to_result(call, found[0], found[1])
        )

    @staticmethod
    def _mismatch(
        answer: p.ApiAnswer, order_no: str, refund_no: str | None, amount: int | None
    ) -> str | None:
        if answer.order is not None:
            if answer.order.order_no != order_no:
                return "the answer is about another order"
            if amount is not None and refund_no is None and answer.order.amount != amount:
                return "the order's amount differs from ours"
        if answer.refund is not None and refund_no is not None:
            if answer.refund.refund_no != refund_no or answer.refund.order_no != order_no:
                return "the answer is about another refund"
            if amount is not None and answer.refund.amount != amount:
                return "the refund's amount differs from ours"
        return None

    # ---- notifications --------------------------------------------------------------------
    def parse_notification(self, request: IncomingRequest) -> Notification:
        def reject(reason: str) -> NotificationRejected:
            log.warning("bank_notification_rejected", channel=self.name, reason=reason)
            return NotificationRejected(reason)

        timestamp = header(request.headers, p.HEADER_TIMESTAMP)
        nonce = header(request.headers, p.HEADER_NONCE)
        signature = header(request.headers, p.HEADER_SIGNATURE)
        if not timestamp or not nonce or not signature:
            raise reject("missing signature headers")
        if not p.notification_fresh(timestamp, self.clock()):
            raise reject("timestamp outside the notification window")
        message = p.notification_message(self.merchant_id, timestamp, nonce, request.body)
        if not p.verify(self._bank_key, message, signature):
            raise reject("invalid signature")
        try:
            data = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise reject("body is not JSON") from None
        if not isinstance(data, dict):
            raise reject("body is not a JSON object")
        body: p.PaymentNotification | p.RefundNotification
        try:
            if data.get("notify_type") == "REFUND":
                body = p.RefundNotification.model_validate(data)
            else:
                body = p.PaymentNotification.model_validate(data)
        except ValidationError as exc:
            raise reject(f"unexpected notification: {exc.error_count()} errors") from None
        if body.merchant_id != self.merchant_id:
            raise reject("addressed to another merchant")
        notification = p.notification_to_result(body, data)
        log.info(
            "bank_notification_verified",
            channel=self.name,
            kind=notification.kind.value,
            order_no=body.order_no,
            status=body.status.value,
        )
        return notification

    def ack(self, accepted: bool) -> Ack:
        if accepted:
            return Ack(200, orjson.dumps({"code": p.ACK_SUCCESS}), "application/json")
        return Ack(
            500, orjson.dumps({"code": "FAIL", "message": "not accepted"}), "application/json"
        )

    # ---- statement ------------------------------------------------------------------------
    async def download_statement(self, day: date) -> AsyncIterator[StatementLine]:
        """Stream the day's statement (a UTC+8 day). The file is spooled while its signature
        is checked (in memory up to 1 MiB, then on disk) and parsed line by line only once it
        verified, so that no unverified line is ever handed out."""
        spool = await self._fetch_statement(day)
        try:
            count = 0
            announced: int | None = None
            for row in csv.reader(_lines(spool)):
                summary = p.parse_summary_row(row)
                if summary is not None:
                    announced = summary
                    continue
                try:
                    line = p.parse_statement_row(row)
                except ValueError as exc:
                    raise ResponseVerificationError(f"bad statement line: {exc}") from exc
                if line is not None:
                    count += 1
                    yield line
            if announced != count:
                raise ResponseVerificationError(
                    f"statement announces {announced} lines, carries {count}"
                )
        finally:
            spool.close()

    async def _fetch_statement(self, day: date) -> IO[bytes]:
        path_qs = self._prefix + f"{p.PATH_STATEMENTS}/{day.strftime('%Y%m%d')}"

        async def attempt(timeout_s: float) -> Answer[_Statement] | Busy[_Statement]:
            headers, nonce = self._signed_headers("GET", path_qs, b"")
            spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)  # noqa: SIM115 - handed to the caller
            try:
                async with transport.request(
                    self._http,
                    "GET",
                    URL(self._origin + path_qs, encoded=True),
                    headers=headers,
                    timeout_s=timeout_s,
                ) as resp:
                    status = resp.status
                    signature = header(resp.headers, p.HEADER_SIGNATURE)
                    timestamp = header(resp.headers, p.HEADER_TIMESTAMP)
                    echoed = header(resp.headers, p.HEADER_NONCE)
                    verifier = p.StreamingVerifier(str(status), path_qs, timestamp or "", nonce)
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        verifier.update(chunk)
                        spool.write(chunk)
                if not signature or not timestamp:
                    raise self._kernel.unsigned(status)
                if echoed != nonce or not verifier.verify(self._bank_key, signature):
                    log.warning("bank_statement_signature_invalid", channel=self.name, path=path_qs)
                    raise ResponseVerificationError("the statement's signature did not verify")
            except BaseException:
                spool.close()
                raise
            if status != 200:
                spool.seek(0)
                error = _Statement(
                    None, f"HTTP {status} resp_code {_resp_code(spool.read(_MAX_ANSWER_BYTES))}"
                )
                spool.close()
                return Busy(error) if status >= 500 else Answer(error)
            spool.seek(0)
            return Answer(_Statement(spool))

        exchanged = await self._kernel.exchange(
            Call.STATEMENT, attempt, budget_s=self._config.statement_timeout_ms / 1000
        )
        if exchanged.failure is not None:
            raise StatementUnavailable(self._kernel.describe(exchanged.failure))
        assert exchanged.answer is not None
        if exchanged.answer.spool is None:
            raise StatementUnavailable(exchanged.answer.error)
        return exchanged.answer.spool


def _resp_code(body: bytes) -> str | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = parsed.get("resp_code") if isinstance(parsed, dict) else None
    return code if isinstance(code, str) else None


def _lines(spool: IO[bytes]) -> Iterator[str]:
    for raw in spool:
        yield raw.decode("utf-8")


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Validate the channel's ``config:`` and load its keys (once)."""
    cfg = BankConfig.model_validate(dict(config))
    return BankAdapter(name, cfg, ctx, load_keys(cfg, ctx.config_dir))
