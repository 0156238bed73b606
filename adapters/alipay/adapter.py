"""The gateway's side of the `alipay` channel: Alipay open API, face-to-face precreate (QR).

Calls go to `<base_url>/gateway.do` as signed form posts (RSA2 with the application's private
key) and every response is verified against Alipay's public key over the exact response-node
text; notifications are verified the same way (see `adapters.alipay.protocol`).

Retries (tenacity, exponential backoff with jitter, at most `max_attempts` attempts and never
beyond `timeout_ms` in total): connection errors, timeouts, HTTP 5xx and "service unavailable"
answers (20000, ACQ.SYSTEM_ERROR, 40005) are retried on calls that are safe to repeat:

- query, close, refund query and the statement URL query (they change nothing, or closing
  twice is harmless);
- precreate, because Alipay makes it idempotent by `out_trade_no`: a repeat with the same
  amount and subject returns the same `qr_code` (a different one is ACQ.CONTEXT_INCONSISTENT).
  A 20000 / ACQ.SYSTEM_ERROR *answer* to a precreate is not retried but failed over at once:
  nothing was created, and the QR code of a half-made pre-order was never shown to anyone;
- refund, because Alipay makes it idempotent by `out_request_no` (its own guidance after a
  timeout or a system error is to call again with the same `out_request_no`; a repeat that
  moves no money answers `fund_change=N`, which we confirm with a refund query).

Outcomes: precreate gives WAITING with `next_action` `{"type": "qr_code", "url": qr_code}`;
a refusal is FAILED + FINAL (or SYSTEM_ERROR + FAILOVER for errors that mean this channel's
configuration or limits, see `protocol.ERROR_TABLE`); 20000 / refused connection / HTTP error
before an order exists is SYSTEM_ERROR + FAILOVER; a timeout or a connection dropped after
sending is UNKNOWN (never failed over); a response whose signature is missing or wrong is
UNKNOWN with channel_code `INVALID_SIGNATURE`, and logged.
"""

from __future__ import annotations

import asyncio
import codecs
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from adapters.alipay import protocol as p
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
    StatementLine,
    StatementUnavailable,
    check_base_url,
)
from adapters.money import fen_to_yuan

log = structlog.get_logger("adapters.alipay")

SUBJECT_MAX = 256
REASON_MAX = 256
ZIP_SPOOL_BYTES = 16 * 1024 * 1024


class AlipayConfig(BaseModel):
    """The channel's `config:` mapping in the routing file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(min_length=1)
    """Where `gateway.do` lives: `https://openapi.alipay.com` for the real channel,
    `${GATEWAY_PUBLIC_URL}/sim/alipay` for the simulator."""
    app_id: str = Field(min_length=1, max_length=32)
    app_private_key_path: str = Field(min_length=1)
    """The application's RSA private key (PEM, or the bare base64 Alipay's key tool writes)."""
    alipay_public_key_path: str = Field(min_length=1)
    """Alipay's public key as the open platform shows it (PEM or bare base64)."""
    timeout_ms: int = Field(default=5000, ge=50, le=120_000)
    """Total budget of one call, retries included."""
    max_attempts: int = Field(default=2, ge=1, le=5)
    statement_timeout_ms: int = Field(default=60_000, ge=100, le=600_000)
    """Budget for downloading one statement file."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_base_url(value)


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one API call came to: a verified response node, or how it failed."""

    node: dict[str, Any] | None = None
    failure: str | None = None
    """CONNECT_ERROR | HTTP_ERROR | TIMEOUT | CONNECTION_DROPPED | BAD_RESPONSE |
    INVALID_SIGNATURE"""
    maybe_acted: bool = True
    """False when no attempt can have reached Alipay's business logic."""
    detail: str = ""


class _Transient(Exception):
    def __init__(self, failure: str, detail: str, maybe_acted: bool) -> None:
        super().__init__(f"{failure}: {detail}")
        self.failure = failure
        self.detail = detail
        self.maybe_acted = maybe_acted


class _RetryableAnswer(Exception):
    def __init__(self, answer: _Answer) -> None:
        super().__init__("retryable answer")
        self.answer = answer


def _read_key(config_dir: str, path: str) -> bytes:
    resolved = Path(path)
    if not resolved.is_absolute():
        resolved = Path(config_dir) / resolved
    return resolved.read_bytes()


class AlipayAdapter(ChannelAdapter):
    adapter = "alipay"

    def __init__(self, name: str, config: AlipayConfig, ctx: AdapterContext) -> None:
        super().__init__(name)
        self.config = config
        self._http = ctx.http
        self._gateway = config.base_url + p.GATEWAY_PATH
        self._app_key = p.load_private_key(_read_key(ctx.config_dir, config.app_private_key_path))
        self._alipay_key = p.load_public_key(
            _read_key(ctx.config_dir, config.alipay_public_key_path)
        )
        self._budget = config.timeout_ms / 1000

    # ---- transport ----------------------------------------------------------------------
    async def _request(
        self,
        call: p.ApiCall,
        biz: Mapping[str, Any],
        *,
        notify_url: str | None = None,
        retry_answers: bool = True,
    ) -> _Answer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget
        maybe_acted = False

        async def attempt() -> _Answer:
            nonlocal maybe_acted
            remaining = deadline - loop.time()
            if remaining <= 0.01:
                raise _Transient("TIMEOUT", "deadline reached before sending", False)
            params = p.sign_request(
                p.build_request(self.config.app_id, call.value, biz, datetime.now(UTC), notify_url),
                self._app_key,
            )
            try:
                async with self._http.post(
                    self._gateway,
                    data=params,
                    timeout=aiohttp.ClientTimeout(total=remaining),
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    body = await resp.read()
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # nothing was sent: refused, unreachable, or the connection never opened
                raise _Transient("CONNECT_ERROR", str(exc), False) from None
            except TimeoutError:
                maybe_acted = True
                raise _Transient("TIMEOUT", f"no answer within {remaining:.3f}s", True) from None
            except aiohttp.ClientError as exc:
                maybe_acted = True
                raise _Transient("CONNECTION_DROPPED", repr(exc), True) from None
            if status >= 500:
                raise _Transient("HTTP_ERROR", f"HTTP {status}", False)
            if status != 200:
                return _Answer(failure="HTTP_ERROR", detail=f"HTTP {status}", maybe_acted=False)
            try:
                envelope = p.extract_response(body.decode("utf-8"), call.value)
            except (UnicodeDecodeError, ValueError) as exc:
                log.warning("alipay_bad_response", method=call.value, error=str(exc))
                return _Answer(failure="BAD_RESPONSE", detail=str(exc))
            if not envelope.verify(self._alipay_key):
                log.warning(
                    "alipay_response_signature_invalid",
                    channel=self.name,
                    method=call.value,
                    node=envelope.name,
                    signed=envelope.sign is not None,
                )
                return _Answer(failure=p.INVALID_SIGNATURE, detail="response signature invalid")
            answer = _Answer(node=envelope.node)
            if retry_answers and p.is_retryable_answer(envelope.node):
                raise _RetryableAnswer(answer)
            return answer

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "alipay_call_retry",
                channel=self.name,
                method=call.value,
                attempt=state.attempt_number,
                reason=str(exc),
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts) | stop_after_delay(self._budget),
            wait=wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05),
            retry=retry_if_exception_type((_Transient, _RetryableAnswer)),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            answer: _Answer = await retrying(attempt)
        except _Transient as exc:
            return _Answer(failure=exc.failure, detail=exc.detail, maybe_acted=maybe_acted)
        except _RetryableAnswer as exc:
            return exc.answer
        if answer.node is None and maybe_acted and not answer.maybe_acted:
            # an earlier attempt may have reached Alipay before this one failed differently
            answer = replace(answer, maybe_acted=True)
        return answer

    def _result(self, call: p.ApiCall, answer: _Answer) -> ChannelResult:
        if answer.node is not None:
            try:
                return p.map_response(call, answer.node)
            except ValueError as exc:
                log.warning("alipay_bad_response", method=call.value, error=str(exc))
                return ChannelResult(
                    outcome=Outcome.UNKNOWN,
                    decision=Decision.RETRY,
                    channel_code="BAD_RESPONSE",
                    channel_message=str(exc),
                    raw=answer.node,
                )
        failure = answer.failure or "BAD_RESPONSE"
        if failure == p.INVALID_SIGNATURE or answer.maybe_acted:
            # a bad signature is untrusted whatever it says: the order may exist
            outcome, decision = Outcome.UNKNOWN, Decision.RETRY
        elif call is p.ApiCall.PRECREATE:
            outcome, decision = Outcome.SYSTEM_ERROR, Decision.FAILOVER
        elif call in (p.ApiCall.CLOSE, p.ApiCall.REFUND):
            outcome, decision = Outcome.SYSTEM_ERROR, Decision.RETRY
        else:
            outcome, decision = Outcome.UNKNOWN, Decision.RETRY
        return ChannelResult(
            outcome=outcome, decision=decision, channel_code=failure, channel_message=answer.detail
        )

    # ---- payments -----------------------------------------------------------------------
    async def create_payment(self, req: CreatePayment) -> ChannelResult:
        if req.method != "alipay_qr" or req.currency != "CNY":
            return ChannelResult(
                outcome=Outcome.SYSTEM_ERROR,
                decision=Decision.FAILOVER,
                channel_code="UNSUPPORTED",
                channel_message=f"alipay takes alipay_qr in CNY, not {req.method} "
                f"in {req.currency}",
            )
        biz = {
            "out_trade_no": req.channel_order_id,
            "total_amount": fen_to_yuan(req.amount),
            "subject": req.description[:SUBJECT_MAX],
            "product_code": p.PRODUCT_CODE_F2F,
            "time_expire": p.format_time(req.expires_at),
        }
        answer = await self._request(
            p.ApiCall.PRECREATE, biz, notify_url=req.notify_url, retry_answers=False
        )
        result = self._result(p.ApiCall.PRECREATE, answer)
        if result.channel_code == p.SUB_TRADE_HAS_SUCCESS:
            return await self.query_payment(req.channel_order_id)  # paid already: say so
        node = answer.node or {}
        if result.outcome is Outcome.WAITING and node.get("out_trade_no") not in (
            None,
            req.channel_order_id,
        ):
            log.warning("alipay_precreate_mismatch", out_trade_no=req.channel_order_id)
            return ChannelResult(
                outcome=Outcome.UNKNOWN,
                decision=Decision.RETRY,
                channel_code="BAD_RESPONSE",
                channel_message="the answer is about another out_trade_no",
                raw=node,
            )
        log.info(
            "alipay_precreate",
            channel=self.name,
            out_trade_no=req.channel_order_id,
            outcome=result.outcome.value,
            code=result.channel_code,
        )
        return result

    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        answer = await self._request(p.ApiCall.QUERY, {"out_trade_no": channel_order_id})
        return self._result(p.ApiCall.QUERY, answer)

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        answer = await self._request(p.ApiCall.CLOSE, {"out_trade_no": channel_order_id})
        result = self._result(p.ApiCall.CLOSE, answer)
        if result.outcome is Outcome.FAILED and result.channel_code == p.SUB_TRADE_STATUS_ERROR:
            # closed already (a repeat of a close that worked) or paid: ask which
            query = await self.query_payment(channel_order_id)
            if query.outcome is Outcome.FAILED and query.channel_code == p.TRADE_CLOSED:
                return ChannelResult(
                    outcome=Outcome.SUCCEEDED,
                    channel_code=p.TRADE_CLOSED,
                    channel_trade_no=query.channel_trade_no,
                    raw=query.raw,
                )
        return result

    # ---- refunds ------------------------------------------------------------------------
    async def refund(self, req: CreateRefund) -> ChannelResult:
        if req.currency != "CNY":
            return ChannelResult(
                outcome=Outcome.FAILED,
                decision=Decision.FINAL,
                channel_code="UNSUPPORTED",
                channel_message=f"alipay refunds CNY, not {req.currency}",
            )
        biz: dict[str, Any] = {
            "out_trade_no": req.channel_order_id,
            "refund_amount": fen_to_yuan(req.amount),
            "out_request_no": req.channel_refund_id,
        }
        if req.reason:
            biz["refund_reason"] = req.reason[:REASON_MAX]
        answer = await self._request(p.ApiCall.REFUND, biz)
        result = self._result(p.ApiCall.REFUND, answer)
        if result.outcome is Outcome.WAITING:
            # fund_change=N: this request moved no money; the refund query tells whether an
            # earlier one with the same out_request_no did
            confirmed = await self.query_refund(req.channel_order_id, req.channel_refund_id)
            if confirmed.outcome is Outcome.SUCCEEDED:
                return confirmed
        log.info(
            "alipay_refund",
            channel=self.name,
            out_trade_no=req.channel_order_id,
            out_request_no=req.channel_refund_id,
            outcome=result.outcome.value,
            code=result.channel_code,
        )
        return result

    async def query_refund(self, channel_order_id: str, channel_refund_id: str) -> ChannelResult:
        biz = {
            "out_trade_no": channel_order_id,
            "out_request_no": channel_refund_id,
            "query_options": ["gmt_refund_pay"],
        }
        answer = await self._request(p.ApiCall.REFUND_QUERY, biz)
        return self._result(p.ApiCall.REFUND_QUERY, answer)

    # ---- notifications ------------------------------------------------------------------
    def parse_notification(self, request: IncomingRequest) -> Notification:
        def reject(reason: str, **fields: Any) -> NotificationRejected:
            log.warning("alipay_notification_rejected", channel=self.name, reason=reason, **fields)
            return NotificationRejected(reason)

        if request.method.upper() != "POST":
            raise reject("not a POST")
        if request.content_type not in ("", "application/x-www-form-urlencoded"):
            raise reject(f"unexpected content type {request.content_type!r}")
        try:
            fields = p.parse_form(request.body)
        except ValueError as exc:
            raise reject(f"unreadable form: {exc}") from None
        out_trade_no = fields.get("out_trade_no")
        if not p.verify_notification(fields, self._alipay_key):
            raise reject("bad or missing signature", out_trade_no=out_trade_no)
        if fields.get("app_id") != self.config.app_id:
            raise reject("notification for another app_id", out_trade_no=out_trade_no)
        try:
            notification = p.notification_from_fields(fields)
        except NotificationRejected as exc:
            raise reject(str(exc), out_trade_no=out_trade_no) from None
        log.info(
            "alipay_notification",
            channel=self.name,
            out_trade_no=out_trade_no,
            notify_id=fields.get("notify_id"),
            kind=notification.kind.value,
            trade_status=fields.get("trade_status"),
        )
        return notification

    def ack(self, accepted: bool) -> Ack:
        """Alipay wants the plain text `success`; anything else makes it notify again."""
        return Ack(status=200, body=p.ACK_SUCCESS if accepted else p.ACK_FAILURE)

    # ---- statements ---------------------------------------------------------------------
    async def download_statement(self, day: date) -> AsyncIterator[StatementLine]:
        """The day's trade bill (China date, as Alipay cuts its bills). The bill URL is asked
        for with `alipay.data.dataservice.bill.downloadurl.query`; the file is streamed. A zip
        (the real channel) is spooled to a temporary file and its detail CSV read line by
        line; a plain CSV (the simulator) is read line by line as it arrives. Raises
        StatementUnavailable."""
        answer = await self._request(
            p.ApiCall.BILL_URL_QUERY, {"bill_type": p.BILL_TYPE_TRADE, "bill_date": day.isoformat()}
        )
        node = answer.node
        if node is None:
            raise StatementUnavailable(f"{answer.failure}: {answer.detail}")
        if node.get("code") != p.CODE_SUCCESS or not isinstance(node.get("bill_download_url"), str):
            raise StatementUnavailable(
                f"{node.get('sub_code') or node.get('code')}: {node.get('sub_msg') or ''}"
            )
        url: str = node["bill_download_url"]
        parser = p.BillParser()
        timeout = aiohttp.ClientTimeout(
            total=self.config.statement_timeout_ms / 1000, sock_read=self._budget
        )
        async with self._http.get(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise StatementUnavailable(f"bill download answered HTTP {resp.status}")
            first = await resp.content.readany()
            if first.startswith(b"PK\x03\x04") or resp.content_type in (
                "application/zip",
                "application/x-zip-compressed",
            ):
                with tempfile.SpooledTemporaryFile(max_size=ZIP_SPOOL_BYTES) as spool:
                    spool.write(first)
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        spool.write(chunk)
                    spool.seek(0)
                    for text in p.iter_zip_bill_lines(spool):
                        line = parser.feed(text)
                        if line is not None:
                            yield line
                return
            decoder = codecs.getincrementaldecoder(resp.charset or p.BILL_ENCODING)()
            async for raw in _byte_lines(first, resp.content):
                line = parser.feed(decoder.decode(raw))
                if line is not None:
                    yield line
            parser.feed(decoder.decode(b"", final=True))


async def _byte_lines(first: bytes, stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Lines (with their `\\n`) from a first chunk and the rest of a stream. Safe for GBK and
    UTF-8: neither uses the byte 0x0A inside a multi-byte character."""
    buffer = first
    while True:
        while (cut := buffer.find(b"\n")) >= 0:
            yield buffer[: cut + 1]
            buffer = buffer[cut + 1 :]
        chunk = await stream.readany()
        if not chunk:
            break
        buffer += chunk
    if buffer:
        yield buffer


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Validate the channel's `config:` and load its keys (once)."""
    return AlipayAdapter(name, AlipayConfig.model_validate(dict(config)), ctx)
