"""The gateway's side of the `bank` channel (card payments through the bank's hosted page).

The protocol is in `adapters.bank.protocol`. This module signs requests with the merchant's
RSA key, verifies every answer and notification with the bank's public key, retries what is
safe to repeat, and maps everything to `ChannelResult`.

Retries (tenacity, within one call): connection errors, timeouts, dropped connections and
unsigned 5xx answers, on every call, because every call is safe to repeat at this bank: queries,
close and the statement by nature, creates and refunds because the bank keys them by
``order_no`` / ``refund_no`` and answers a repeat with the existing object (see the protocol).
A signed 91/96 is retried on calls on an existing order; on a create it is answered at once
(SYSTEM_ERROR + FAILOVER) so that the gateway can fail over fast. Attempts: ``max_attempts``
(default 2), exponential backoff with full jitter from 50 ms, and one deadline of ``timeout_ms`` for
the whole call: each attempt gets what is left of it, so a timeout is never followed by
another attempt beyond the budget.

A create that may have reached the bank (a timeout, a connection dropped after sending, an
unsigned 5xx) is UNKNOWN, never SYSTEM_ERROR, even when a later attempt got a system error: the
gateway queries it later instead of failing over.

Configuration (the channel's ``config:`` in the routing file), see `BankConfig`.
"""

from __future__ import annotations

import asyncio
import csv
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
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
    check_base_url,
)

log = structlog.get_logger("adapters.bank")

_ID = re.compile(p.ORDER_NO_PATTERN)
_MAX_ANSWER_BYTES = 1 << 20
_SPOOL_MEMORY_BYTES = 1 << 20


class BankConfig(BaseModel):
    """The ``config:`` mapping of a `bank` channel in the routing file.

    Relative key paths resolve against the gateway's ``config/`` directory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(description="The bank's API root, e.g. https://pay.bank.example")
    merchant_id: str = Field(min_length=1, max_length=32)
    merchant_private_key: str = Field(
        min_length=1, description="PEM file: the merchant's RSA private key (signs requests)"
    )
    bank_public_key: str = Field(
        min_length=1, description="PEM file: the bank's RSA public key (verifies its messages)"
    )
    timeout_ms: int = Field(default=5000, ge=50, le=300_000)
    """The budget of one call, all attempts included."""
    max_attempts: int = Field(default=2, ge=1, le=5)
    statement_timeout_ms: int = Field(default=60_000, ge=100, le=600_000)
    return_url: str | None = Field(default=None, pattern=r"^https?://")
    """Where the hosted page sends the card holder afterwards, when the payment names none."""

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        return check_base_url(value)


class _Failure(Exception):
    """One attempt got no usable answer."""

    def __init__(
        self,
        kind: p.TransportFailure,
        message: str,
        *,
        retryable: bool,
        reply: tuple[int, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.reply = reply


@dataclass(slots=True)
class _CallState:
    maybe_sent: bool = False
    attempts: int = 0


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Failure) and exc.retryable


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def _resolve(config_dir: str, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(config_dir) / candidate


def _check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(f"not a valid bank order or refund number: {value!r}")
    return value


class BankAdapter(ChannelAdapter):
    adapter = "bank"

    def __init__(
        self,
        name: str,
        config: BankConfig,
        ctx: AdapterContext,
        merchant_key: rsa.RSAPrivateKey,
        bank_key: rsa.RSAPublicKey,
    ) -> None:
        super().__init__(name)
        self._config = config
        self._http = ctx.http
        self._merchant_key = merchant_key
        self._bank_key = bank_key
        parts = urlsplit(config.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._budget_s = config.timeout_ms / 1000

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
            p.Operation.CREATE,
            "POST",
            p.PATH_ORDERS,
            payload,
            order_no=req.channel_order_id,
            amount=req.amount,
        )

    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        order_no = _check_id(channel_order_id)
        return await self._call(
            p.Operation.QUERY, "GET", f"{p.PATH_ORDERS}/{order_no}", None, order_no=order_no
        )

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        order_no = _check_id(channel_order_id)
        return await self._call(
            p.Operation.CLOSE,
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
            p.Operation.REFUND,
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
            p.Operation.REFUND_QUERY,
            "GET",
            f"{p.PATH_REFUNDS}/{refund_no}",
            None,
            order_no=_check_id(channel_order_id),
            refund_no=refund_no,
        )

    # ---- the HTTP exchange ----------------------------------------------------------------
    def _signed_headers(self, method: str, path_qs: str, body: bytes) -> tuple[dict[str, str], str]:
        timestamp = str(int(time.time()))
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

    def _verified(
        self, status: int, headers: Mapping[str, str], path_qs: str, nonce: str, body: bytes
    ) -> bool:
        signature = _header(headers, p.HEADER_SIGNATURE)
        timestamp = _header(headers, p.HEADER_TIMESTAMP)
        if not signature or not timestamp or _header(headers, p.HEADER_NONCE) != nonce:
            return False
        message = p.response_message(status, path_qs, timestamp, nonce, body)
        return p.verify(self._bank_key, message, signature)

    async def _once(
        self,
        method: str,
        path: str,
        body: bytes,
        deadline: float,
        state: _CallState,
        retry_system_errors: bool,
    ) -> tuple[int, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise _Failure(p.TransportFailure.TIMEOUT, "call budget spent", retryable=False)
        path_qs = self._prefix + path
        headers, nonce = self._signed_headers(method, path_qs, body)
        state.attempts += 1
        try:
            async with self._http.request(
                method,
                URL(self._origin + path_qs, encoded=True),
                data=body or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=remaining),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await _read_limited(resp)
                resp_headers = dict(resp.headers)
        except aiohttp.ClientConnectorError as exc:
            raise _Failure(p.TransportFailure.NOT_SENT, str(exc), retryable=True) from exc
        except TimeoutError as exc:
            state.maybe_sent = True
            raise _Failure(p.TransportFailure.TIMEOUT, "timed out", retryable=True) from exc
        except aiohttp.ClientError as exc:
            state.maybe_sent = True
            raise _Failure(p.TransportFailure.DROPPED, repr(exc), retryable=True) from exc

        if not self._verified(status, resp_headers, path_qs, nonce, raw):
            if status >= 500:
                state.maybe_sent = True
                raise _Failure(
                    p.TransportFailure.BAD_GATEWAY, f"unsigned HTTP {status}", retryable=True
                )
            log.warning(
                "bank_response_signature_invalid",
                channel=self.name,
                method=method,
                path=path_qs,
                status=status,
            )
            raise _Failure(
                p.TransportFailure.INVALID_SIGNATURE,
                "the answer's signature did not verify",
                retryable=False,
            )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise _Failure(
                p.TransportFailure.INVALID_RESPONSE,
                "a signed answer that is not JSON",
                retryable=False,
            )
        code = data.get("resp_code")
        if retry_system_errors and status >= 500 and code in p.SYSTEM_ERROR_CODES:
            raise _Failure(
                p.TransportFailure.BAD_GATEWAY,
                f"resp_code {code}",
                retryable=True,
                reply=(status, data),
            )
        return status, data

    async def _call(
        self,
        op: p.Operation,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None,
        *,
        order_no: str,
        refund_no: str | None = None,
        amount: int | None = None,
    ) -> ChannelResult:
        body = orjson.dumps(payload) if payload is not None else b""
        state = _CallState()
        deadline = asyncio.get_running_loop().time() + self._budget_s
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.max_attempts) | stop_before_delay(self._budget_s),
            wait=wait_random_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        retry_system_errors = op is not p.Operation.CREATE
        data: dict[str, Any]
        try:
            async for attempt in retrying:
                with attempt:
                    _, data = await self._once(
                        method, path, body, deadline, state, retry_system_errors
                    )
        except _Failure as failure:
            if failure.reply is None:
                log.info(
                    "bank_call_failed",
                    channel=self.name,
                    operation=op.value,
                    failure=failure.kind.value,
                    attempts=state.attempts,
                    maybe_sent=state.maybe_sent,
                )
                return p.transport_result(
                    op, failure.kind, failure.message, maybe_sent=state.maybe_sent
                )
            _, data = failure.reply
        try:
            answer = p.ApiAnswer.model_validate(data)
        except ValidationError:
            log.warning("bank_answer_invalid", channel=self.name, operation=op.value)
            return p.transport_result(
                op, p.TransportFailure.INVALID_RESPONSE, "unexpected answer", maybe_sent=True
            )
        mismatch = self._mismatch(answer, order_no, refund_no, amount)
        if mismatch:
            log.warning(
                "bank_answer_mismatch", channel=self.name, operation=op.value, detail=mismatch
            )
            return p.transport_result(
                op, p.TransportFailure.INVALID_RESPONSE, mismatch, maybe_sent=True
            )
        result = p.to_result(op, answer, data)
        if result.outcome is Outcome.SYSTEM_ERROR and state.maybe_sent:
            # an earlier attempt may have acted: the bank's "nothing done" covers only the last
            return ChannelResult(
                Outcome.UNKNOWN,
                Decision.RETRY,
                result.channel_code,
                "an earlier attempt may have reached the bank",
                raw=result.raw,
            )
        return result

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

        timestamp = _header(request.headers, p.HEADER_TIMESTAMP)
        nonce = _header(request.headers, p.HEADER_NONCE)
        signature = _header(request.headers, p.HEADER_SIGNATURE)
        if not timestamp or not nonce or not signature:
            raise reject("missing signature headers")
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
        path = f"{p.PATH_STATEMENTS}/{day.strftime('%Y%m%d')}"
        budget = self._config.statement_timeout_ms / 1000
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.max_attempts) | stop_before_delay(budget),
            wait=wait_random_exponential(multiplier=0.1, max=1.0),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._statement_once(path, deadline)
        except _Failure as failure:
            raise StatementUnavailable(f"{failure.kind.value}: {failure.message}") from failure
        raise AssertionError("unreachable")  # pragma: no cover

    async def _statement_once(self, path: str, deadline: float) -> IO[bytes]:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise _Failure(p.TransportFailure.TIMEOUT, "budget spent", retryable=False)
        path_qs = self._prefix + path
        headers, nonce = self._signed_headers("GET", path_qs, b"")
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)  # noqa: SIM115 - handed to the caller
        try:
            async with self._http.get(
                URL(self._origin + path_qs, encoded=True),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=remaining),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                signature = resp.headers.get(p.HEADER_SIGNATURE)
                timestamp = resp.headers.get(p.HEADER_TIMESTAMP)
                signed = bool(signature and timestamp) and (
                    resp.headers.get(p.HEADER_NONCE) == nonce
                )
                verifier = p.StreamingVerifier(str(status), path_qs, timestamp or "", nonce)
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    verifier.update(chunk)
                    spool.write(chunk)
        except aiohttp.ClientConnectorError as exc:
            spool.close()
            raise _Failure(p.TransportFailure.NOT_SENT, str(exc), retryable=True) from exc
        except TimeoutError as exc:
            spool.close()
            raise _Failure(p.TransportFailure.TIMEOUT, "timed out", retryable=True) from exc
        except aiohttp.ClientError as exc:
            spool.close()
            raise _Failure(p.TransportFailure.DROPPED, repr(exc), retryable=True) from exc
        if not signed or not verifier.verify(self._bank_key, signature or ""):
            spool.close()
            if status >= 500:
                raise _Failure(p.TransportFailure.BAD_GATEWAY, f"HTTP {status}", retryable=True)
            log.warning("bank_statement_signature_invalid", channel=self.name, path=path_qs)
            raise ResponseVerificationError("the statement's signature did not verify")
        if status != 200:
            spool.seek(0)
            detail = spool.read(_MAX_ANSWER_BYTES)
            spool.close()
            code = None
            try:
                parsed = orjson.loads(detail)
                code = parsed.get("resp_code") if isinstance(parsed, dict) else None
            except orjson.JSONDecodeError:
                pass
            raise _Failure(
                p.TransportFailure.BAD_GATEWAY,
                f"HTTP {status} resp_code {code}",
                retryable=status >= 500,
            )
        spool.seek(0)
        return spool


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    """The whole answer body, refusing answers larger than any the bank sends."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > _MAX_ANSWER_BYTES:
            raise _Failure(p.TransportFailure.INVALID_RESPONSE, "answer too large", retryable=False)
        chunks.append(chunk)
    return b"".join(chunks)


def _lines(spool: IO[bytes]) -> Iterator[str]:
    for raw in spool:
        yield raw.decode("utf-8")


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Validate the channel's ``config:`` and load its keys (once)."""
    cfg = BankConfig.model_validate(dict(config))
    merchant_key = p.load_private_key(
        _resolve(ctx.config_dir, cfg.merchant_private_key).read_bytes()
    )
    bank_key = p.load_public_key(_resolve(ctx.config_dir, cfg.bank_public_key).read_bytes())
    return BankAdapter(name, cfg, ctx, merchant_key, bank_key)
