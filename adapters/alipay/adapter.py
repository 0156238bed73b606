"""The gateway's side of the `alipay` channel: Alipay open API, face-to-face precreate (QR).

Calls go to `<base_url>/gateway.do` as signed form posts (RSA2 with the application's private
key) and every response is verified against Alipay's public key over the exact response-node
text; notifications are verified the same way (see `adapters.alipay.protocol`). Each attempt is
handed to the adapter kernel (`adapters.kernel`: one deadline of `timeout_ms`, `max_attempts`
attempts, the retry and unknown-outcome rules), which is told what it needs of Alipay by
`protocol.RULES`:

- every call is safe to repeat (precreate is idempotent by `out_trade_no`, a refund by
  `out_request_no`; a repeat refund that moves no money answers `fund_change=N`, which we
  confirm with a refund query), so timeouts and dropped connections are tried again within
  the budget;
- "service unavailable" answers (20000, ACQ.SYSTEM_ERROR, 40005) are busy answers, asked
  again on calls on an existing trade; a precreate answered so fails over at once (nothing
  was created, and the QR code of a half-made pre-order was never shown to anyone);
- Alipay answers everything that reached it with HTTP 200, so another status is the front
  door's: a 4xx turned the request away, a 5xx may have come after Alipay acted.

Outcomes: precreate gives WAITING with `next_action` `{"type": "qr_code", "url": qr_code}`;
a refusal is FAILED + FINAL (or SYSTEM_ERROR + FAILOVER for errors that mean this channel's
configuration or limits, see `protocol.ERROR_TABLE`); 20000 / refused connection / an unsigned
4xx or 429 before an order exists is SYSTEM_ERROR + FAILOVER; a timeout, a connection dropped
after sending or an unsigned 5xx is UNKNOWN (never failed over); a response whose signature is
missing or wrong is UNKNOWN with channel_code `INVALID_SIGNATURE`, and logged.
"""

from __future__ import annotations

import codecs
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import IO, Any

import structlog
from pydantic import Field

from adapters.alipay import bill
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
)
from adapters.kernel import transport
from adapters.kernel.calls import Answer, Busy, Call, Exchanged, Kernel, RetryPolicy
from adapters.kernel.config import ChannelConfig, SigningKeys, signing_keys
from adapters.kernel.transport import AttemptFailed, Failure
from adapters.money import fen_to_yuan

log = structlog.get_logger("adapters.alipay")

SUBJECT_MAX = 256
REASON_MAX = 256
_MAX_ANSWER_BYTES = 1 << 20
_SPOOL_MEMORY_BYTES = 16 * 1024 * 1024


class AlipayConfig(ChannelConfig):
    """The channel's `config:` mapping in the routing file (and the settings every channel
    shares, `ChannelConfig`). `base_url` is where `gateway.do` lives:
    `https://openapi.alipay.com` for the real channel, `${GATEWAY_PUBLIC_URL}/sim/alipay` for
    the simulator."""

    app_id: str = Field(min_length=1, max_length=32)
    app_private_key_path: str = Field(min_length=1)
    """The application's RSA private key (PEM, or the bare base64 Alipay's key tool writes)."""
    alipay_public_key_path: str = Field(min_length=1)
    """Alipay's public key as the open platform shows it (PEM or bare base64)."""


CONFIG_MODEL = AlipayConfig


def load_keys(config: AlipayConfig, config_dir: str) -> SigningKeys:
    """The application's private key and Alipay's public key. Raises ConfigFieldError."""
    return signing_keys(
        config_dir,
        ("app_private_key_path", config.app_private_key_path),
        ("alipay_public_key_path", config.alipay_public_key_path),
    )


class AlipayAdapter(ChannelAdapter):
    adapter = "alipay"

    def __init__(
        self, name: str, config: AlipayConfig, ctx: AdapterContext, keys: SigningKeys
    ) -> None:
        super().__init__(name)
        self.config = config
        self._http = ctx.http
        self._gateway = config.base_url + p.GATEWAY_PATH
        self._app_key = keys.own
        self._alipay_key = keys.channel
        self._kernel = Kernel(name, p.RULES, RetryPolicy.of(config))

    # ---- transport ----------------------------------------------------------------------
    async def _request(
        self, api: p.ApiCall, biz: Mapping[str, Any], *, notify_url: str | None = None
    ) -> Exchanged[dict[str, Any]]:
        """One API method through the kernel: its verified response node, or its failure."""

        async def attempt(timeout_s: float) -> Answer[dict[str, Any]] | Busy[dict[str, Any]]:
            params = p.sign_request(
                p.build_request(self.config.app_id, api.value, biz, datetime.now(UTC), notify_url),
                self._app_key,
            )
            reply = await transport.send(
                self._http,
                "POST",
                self._gateway,
                data=params,
                timeout_s=timeout_s,
                max_bytes=_MAX_ANSWER_BYTES,
            )
            if reply.status != 200:
                raise self._kernel.unsigned(reply.status)
            try:
                envelope = p.extract_response(reply.body.decode("utf-8"), api.value)
            except (UnicodeDecodeError, ValueError) as exc:
                log.warning("alipay_bad_response", method=api.value, error=str(exc))
                raise AttemptFailed(Failure.BAD_ANSWER, str(exc)) from None
            if not envelope.verify(self._alipay_key):
                log.warning(
                    "alipay_response_signature_invalid",
                    channel=self.name,
                    method=api.value,
                    node=envelope.name,
                    signed=envelope.sign is not None,
                )
                raise AttemptFailed(Failure.BAD_SIGNATURE, "response signature invalid")
            if p.is_retryable_answer(envelope.node):
                return Busy(envelope.node)
            return Answer(envelope.node)

        return await self._kernel.exchange(api.call, attempt)

    def _result(self, api: p.ApiCall, exchanged: Exchanged[dict[str, Any]]) -> ChannelResult:
        return self._kernel.result(api.call, exchanged, lambda node: self._read(api, node))

    @staticmethod
    def _read(api: p.ApiCall, node: Mapping[str, Any]) -> ChannelResult:
        try:
            return p.map_response(api, node)
        except ValueError as exc:
            log.warning("alipay_bad_response", method=api.value, error=str(exc))
            return ChannelResult(
                outcome=Outcome.UNKNOWN,
                decision=Decision.RETRY,
                channel_code="BAD_RESPONSE",
                channel_message=str(exc),
                raw=node,
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
        exchanged = await self._request(p.ApiCall.PRECREATE, biz, notify_url=req.notify_url)
        result = self._result(p.ApiCall.PRECREATE, exchanged)
        if result.channel_code == p.SUB_TRADE_HAS_SUCCESS:
            return await self.query_payment(req.channel_order_id)  # paid already: say so
        node = exchanged.answer or {}
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
        exchanged = await self._request(p.ApiCall.QUERY, {"out_trade_no": channel_order_id})
        return self._result(p.ApiCall.QUERY, exchanged)

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        exchanged = await self._request(p.ApiCall.CLOSE, {"out_trade_no": channel_order_id})
        result = self._result(p.ApiCall.CLOSE, exchanged)
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
        result = self._result(p.ApiCall.REFUND, await self._request(p.ApiCall.REFUND, biz))
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
        return self._result(
            p.ApiCall.REFUND_QUERY, await self._request(p.ApiCall.REFUND_QUERY, biz)
        )

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
        for with `alipay.data.dataservice.bill.downloadurl.query`; the file is spooled (in
        memory up to 16 MiB, then on disk) and read line by line: the detail CSV of a zip (the
        real channel) or a plain CSV (the simulator). Raises StatementUnavailable."""
        exchanged = await self._request(
            p.ApiCall.BILL_URL_QUERY,
            {"bill_type": bill.BILL_TYPE_TRADE, "bill_date": day.isoformat()},
        )
        if exchanged.failure is not None:
            raise StatementUnavailable(self._kernel.describe(exchanged.failure))
        node = exchanged.answer or {}
        if node.get("code") != p.CODE_SUCCESS or not isinstance(node.get("bill_download_url"), str):
            raise StatementUnavailable(
                f"{node.get('sub_code') or node.get('code')}: {node.get('sub_msg') or ''}"
            )
        spool, charset = await self._download(node["bill_download_url"])
        with spool:
            parser = bill.BillParser()
            for text in _bill_lines(spool, charset):
                line = parser.feed(text)
                if line is not None:
                    yield line

    async def _download(self, url: str) -> tuple[IO[bytes], str]:
        """The bill file (an unsigned GET of the short-lived URL), and its charset."""

        async def attempt(timeout_s: float) -> Answer[tuple[IO[bytes], str]]:
            spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)  # noqa: SIM115 - handed to the caller
            try:
                async with transport.request(self._http, "GET", url, timeout_s=timeout_s) as resp:
                    if resp.status != 200:
                        raise StatementUnavailable(f"bill download answered HTTP {resp.status}")
                    charset = resp.charset or bill.BILL_ENCODING
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        spool.write(chunk)
            except BaseException:
                spool.close()
                raise
            spool.seek(0)
            return Answer((spool, charset))

        exchanged = await self._kernel.exchange(
            Call.STATEMENT, attempt, budget_s=self.config.statement_timeout_ms / 1000
        )
        if exchanged.failure is not None:
            raise StatementUnavailable(self._kernel.describe(exchanged.failure))
        assert exchanged.answer is not None
        return exchanged.answer


def _bill_lines(spool: IO[bytes], charset: str) -> Iterator[str]:
    """The text lines of a downloaded bill: the detail CSV of a zip, or the file itself."""
    if spool.read(4) == b"PK\x03\x04":
        spool.seek(0)
        yield from bill.iter_zip_bill_lines(spool)
        return
    spool.seek(0)
    decoder = codecs.getincrementaldecoder(charset)()
    for raw in spool:  # split at b"\n": neither GBK nor UTF-8 uses it inside a character
        yield decoder.decode(raw)
    yield decoder.decode(b"", final=True)


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Validate the channel's `config:` and load its keys (once)."""
    cfg = AlipayConfig.model_validate(dict(config))
    return AlipayAdapter(name, cfg, ctx, load_keys(cfg, ctx.config_dir))
