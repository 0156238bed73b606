"""The gateway's side of WeChat Pay API v3, native payments (`method: wechat_qr`).

`build(name, config, ctx)` validates the channel's `config:` mapping (see `WechatConfig`),
loads the merchant key, the platform certificate(s) and the APIv3 key once (`load_keys`), and
returns a `WechatAdapter`. Every call goes through the adapter kernel (`adapters.kernel`: one
deadline of `timeout_ms`, `max_attempts` attempts, the retry and unknown-outcome rules), which
is told what it needs of WeChat by `protocol.RULES`.

Calls and what they establish:

- create: `POST /v3/pay/transactions/native` -> WAITING with next_action `qr_code` (the
  code_url; in the simulator the payer page). A definitive refusal (PARAM_ERROR, ORDERPAID,
  OUT_TRADE_NO_USED, …) -> FAILED + FINAL; SYSTEM_ERROR / FREQUENCY_LIMITED / SIGN_ERROR / a
  refused connection -> SYSTEM_ERROR + FAILOVER; a timeout, a connection dropped after sending
  or a bad signature -> UNKNOWN (never fail over).
- query: `GET /v3/pay/transactions/out-trade-no/{id}?mchid=` -> SUCCEEDED (SUCCESS, REFUND),
  WAITING (NOTPAY, USERPAYING), FAILED (CLOSED, REVOKED, PAYERROR, ORDER_NOT_EXIST), UNKNOWN.
- close: `POST …/close` -> SUCCEEDED on 204; FAILED with ORDERPAID when it was paid.
- refund / refund query: `POST /v3/refund/domestic/refunds`, `GET …/refunds/{out_refund_no}`
  -> SUCCEEDED, WAITING (PROCESSING), FAILED (ABNORMAL, CLOSED, refusals), UNKNOWN.
- notifications: TRANSACTION.SUCCESS and REFUND.* are verified (platform signature, timestamp
  window), decrypted with the APIv3 key and mapped; anything else raises NotificationRejected.
  The acknowledgement is 200 with no body, or 500 `{"code": "FAIL", "message": "失败"}`.
- statement: `GET /v3/bill/tradebill` (signed) then the download URL (unsigned, checked against
  the signed hash), spooled to a temporary file and parsed line by line.

Every answer with a signature is verified; 2xx answers must be signed. A signed 5xx / 429
(SYSTEM_ERROR, BANK_ERROR, FREQUENCY_LIMITED) is a busy answer, asked again where the kernel
allows it. An unsigned error answer (the real API does not sign every error, e.g. 401
SIGN_ERROR or a gateway 502) is only believed as far as it cannot settle anything: 401 is
SIGN_ERROR (refused before WeChat acted), other statuses are judged by the kernel
(`transport.status_failure`: a 5xx may have acted, a 4xx was refused).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import IO, Any
from urllib.parse import quote

import aiohttp
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from pydantic import Field, SecretStr, field_validator, model_validator

from adapters.base import (
    Ack,
    AdapterContext,
    ChannelAdapter,
    ChannelResult,
    CreatePayment,
    CreateRefund,
    IncomingRequest,
    Notification,
    NotificationKind,
    NotificationRejected,
    Outcome,
    ResponseVerificationError,
    StatementLine,
    StatementUnavailable,
)
from adapters.kernel import transport
from adapters.kernel.calls import Answer, Busy, Call, Exchanged, Kernel, RetryPolicy
from adapters.kernel.config import (
    Attempts,
    ChannelConfig,
    ConfigFieldError,
    certificates_file,
    private_key_file,
    read_file,
)
from adapters.kernel.crypto import certificate_key, same_key
from adapters.kernel.transport import AttemptFailed, Failure
from adapters.wechat import bill, envelope
from adapters.wechat import protocol as p

log = structlog.get_logger("adapters.wechat")

_MAX_ANSWER_BYTES = 1 << 20
_SPOOL_MEMORY_BYTES = 4 << 20


class WechatConfig(ChannelConfig):
    """The `config:` of a `wechat` channel in the routing file (and the settings every channel
    shares, `ChannelConfig`).

    Relative paths resolve against the gateway's config directory. `merchant_cert_serial_no`
    may be omitted when `merchant_cert_path` is given (the serial is read from it).
    `platform_cert_path` may list several certificates (WeChat rotates them: keep the old
    and the new one during a rotation). Give the APIv3 key inline (`apiv3_key: ${…}`) or as a
    file (`apiv3_key_path`), not both.
    """

    mchid: str = Field(min_length=1, max_length=32)
    appid: str = Field(min_length=1, max_length=32)
    merchant_private_key_path: str
    merchant_cert_serial_no: str | None = None
    merchant_cert_path: str | None = None
    platform_cert_path: str | list[str]
    apiv3_key: SecretStr | None = None
    apiv3_key_path: str | None = None
    max_attempts: Attempts = 3
    """One more than the other channels' default (kept from before the kernel: the flow suite
    pins three tries of a create whose connection drops)."""

    @field_validator("merchant_cert_serial_no")
    @classmethod
    def _serial(cls, value: str | None) -> str | None:
        if value is not None:
            envelope.serial_int(value)
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> WechatConfig:
        if (self.apiv3_key is None) == (self.apiv3_key_path is None):
            raise ValueError("give exactly one of apiv3_key and apiv3_key_path")
        if self.merchant_cert_serial_no is None and self.merchant_cert_path is None:
            raise ValueError("give merchant_cert_serial_no or merchant_cert_path")
        return self


CONFIG_MODEL = WechatConfig


@dataclass(frozen=True, slots=True)
class WechatKeys:
    merchant_key: RSAPrivateKey
    merchant_serial: str
    platform: Mapping[int, RSAPublicKey]
    apiv3_key: bytes


def load_keys(cfg: WechatConfig, config_dir: str) -> WechatKeys:
    """Read the key material named by the config. Raises ConfigFieldError (naming the field,
    never quoting key content)."""
    field = "merchant_private_key_path"
    merchant_key = private_key_file(config_dir, field, cfg.merchant_private_key_path)
    serial = cfg.merchant_cert_serial_no
    if cfg.merchant_cert_path is not None:
        field = "merchant_cert_path"
        cert = certificates_file(config_dir, field, cfg.merchant_cert_path)[0]
        if serial is not None and envelope.serial_int(serial) != cert.serial_number:
            raise ConfigFieldError("merchant_cert_serial_no", f"does not match {field}")
        if not same_key(merchant_key, certificate_key(cert)):
            raise ConfigFieldError(field, "does not hold the merchant key's public key")
        serial = envelope.serial_hex(cert.serial_number)
    assert serial is not None  # the model requires a serial or a certificate
    paths = (
        [cfg.platform_cert_path]
        if isinstance(cfg.platform_cert_path, str)
        else cfg.platform_cert_path
    )
    platform = {
        cert.serial_number: certificate_key(cert)
        for path in paths
        for cert in certificates_file(config_dir, "platform_cert_path", path)
    }
    if not platform:
        raise ConfigFieldError("platform_cert_path", "no certificate")
    if cfg.apiv3_key is not None:
        apiv3 = cfg.apiv3_key.get_secret_value().encode()
    else:
        assert cfg.apiv3_key_path is not None
        apiv3 = read_file(config_dir, "apiv3_key_path", cfg.apiv3_key_path).strip()
    if len(apiv3) != 32:
        raise ConfigFieldError("apiv3_key", "the APIv3 key must be 32 bytes")
    return WechatKeys(merchant_key, serial.upper(), platform, apiv3)


@dataclass(frozen=True, slots=True)
class _Reply:
    """A verified answer (signed, or an error status WeChat may leave unsigned)."""

    status: int
    body: bytes
    data: Any


class WechatAdapter(ChannelAdapter):
    """WeChat Pay API v3 native payments. Safe for concurrent use (no mutable state)."""

    adapter = "wechat"

    def __init__(
        self, name: str, cfg: WechatConfig, keys: WechatKeys, http: aiohttp.ClientSession
    ) -> None:
        super().__init__(name)
        self.cfg = cfg
        self._keys = keys
        self._http = http
        self._base = cfg.base_url
        self._kernel = Kernel(name, p.RULES, RetryPolicy.of(cfg))

    # ---- ids -----------------------------------------------------------------------------
    def channel_order_id(self, payment_id: str, seq: int) -> str:
        return p.out_trade_no_for(payment_id, seq)

    def channel_refund_id(self, refund_id: str) -> str:
        return p.out_refund_no_for(refund_id)

    # ---- transport -----------------------------------------------------------------------
    def _authorization(self, method: str, url: str, body: bytes) -> str:
        return envelope.build_authorization(
            mchid=self.cfg.mchid,
            serial_no=self._keys.merchant_serial,
            private_key=self._keys.merchant_key,
            method=method,
            url=url,
            body=body,
        )

    def _verified(self, call: Call, path: str, reply: transport.Reply) -> _Reply:
        """The answer, once WeChat Pay's signature on it verified. Raises AttemptFailed for an
        answer that cannot be trusted."""
        signed = envelope.has_signature(reply.headers)
        if signed or 200 <= reply.status < 300:
            try:
                envelope.verify_headers(reply.headers, reply.body, self._keys.platform)
            except envelope.SignatureError as exc:
                log.warning(
                    "wechat_bad_response_signature",
                    channel=self.name,
                    call=call.value,
                    path=path.split("?")[0],
                    status=reply.status,
                    reason=str(exc),
                )
                raise AttemptFailed(Failure.BAD_SIGNATURE, str(exc)) from None
        else:
            code, _ = p.error_code_of(reply.body)
            if reply.status == 401:
                raise AttemptFailed(Failure.HTTP_REFUSED, "unsigned 401", code=p.SIGN_ERROR)
            log.warning(
                "wechat_unsigned_error_answer",
                channel=self.name,
                call=call.value,
                status=reply.status,
            )
            raise self._kernel.unsigned(reply.status, code if code in p.ERROR_TABLE else None)
        data: Any = None
        if reply.body:
            try:
                data = json.loads(reply.body)
            except (UnicodeDecodeError, ValueError):
                data = None
        return _Reply(reply.status, reply.body, data)

    async def _exchange(
        self, call: Call, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> Exchanged[_Reply]:
        """One API call through the kernel: its (verified) last answer, or its failure."""
        body = envelope.dumps(payload) if payload is not None else b""

        async def attempt(timeout_s: float) -> Answer[_Reply] | Busy[_Reply]:
            headers = {
                "Authorization": self._authorization(method, path, body),
                "Accept": "application/json",
                "User-Agent": "payment-gateway wechat adapter",
            }
            if method != "GET":
                headers["Content-Type"] = "application/json"
            raw = await transport.send(
                self._http,
                method,
                self._base + path,
                data=body if method != "GET" else None,
                headers=headers,
                timeout_s=timeout_s,
                max_bytes=_MAX_ANSWER_BYTES,
            )
            reply = self._verified(call, path, raw)
            if reply.status in p.BUSY_STATUSES:
                code, _ = p.error_code_of(reply.body)
                acted = call in (Call.REFUND, Call.CLOSE) and code in p.MAY_HAVE_ACTED
                return Busy(reply, may_have_acted=acted)
            return Answer(reply)

        return await self._kernel.exchange(call, attempt)

    async def _call(
        self,
        call: Call,
        method: str,
        path: str,
        payload: Mapping[str, Any] | None,
        on_success: Callable[[_Reply], ChannelResult],
    ) -> ChannelResult:
        """`_exchange` mapped to a result: error answers by the codes table, a 2xx by
        `on_success(reply)`."""

        def read(reply: _Reply) -> ChannelResult:
            if reply.status not in (200, 204):
                return self._error_result(call, reply)
            return on_success(reply)

        return self._kernel.result(call, await self._exchange(call, method, path, payload), read)

    @staticmethod
    def _error_result(call: Call, reply: _Reply) -> ChannelResult:
        code, message = p.error_code_of(reply.body)
        return p.map_error(call, reply.status, code or f"HTTP_{reply.status}", message)

    @staticmethod
    def _object(call: Call, reply: _Reply) -> Mapping[str, Any] | ChannelResult:
        if not isinstance(reply.data, dict):
            return p.map_error(call, reply.status, p.MALFORMED_RESPONSE, "answer is not an object")
        return reply.data

    # ---- payments ------------------------------------------------------------------------
    async def create_payment(self, req: CreatePayment) -> ChannelResult:
        if req.method != "wechat_qr":
            return p.map_error(Call.CREATE, None, p.METHOD_NOT_SUPPORTED, req.method)
        payload: dict[str, Any] = {
            "appid": self.cfg.appid,
            "mchid": self.cfg.mchid,
            "description": req.description[: p.DESCRIPTION_MAX],
            "out_trade_no": req.channel_order_id,
            "time_expire": envelope.format_time(req.expires_at),
            "notify_url": req.notify_url,
            "amount": {"total": req.amount, "currency": req.currency},
        }
        if req.payer_ip:
            payload["scene_info"] = {"payer_client_ip": req.payer_ip}

        def created(reply: _Reply) -> ChannelResult:
            data = self._object(Call.CREATE, reply)
            return data if isinstance(data, ChannelResult) else p.map_create(data)

        return await self._call(Call.CREATE, "POST", p.PATH_NATIVE, payload, created)

    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        path = p.PATH_QUERY.format(out_trade_no=quote(channel_order_id, safe=""))
        path += f"?mchid={quote(self.cfg.mchid, safe='')}"

        def queried(reply: _Reply) -> ChannelResult:
            data = self._object(Call.QUERY, reply)
            if isinstance(data, ChannelResult):
                return data
            if data.get("out_trade_no") != channel_order_id or data.get("mchid") != self.cfg.mchid:
                return p.map_error(
                    Call.QUERY, reply.status, p.MALFORMED_RESPONSE, "answer about another order"
                )
            return p.map_transaction(data)

        return await self._call(Call.QUERY, "GET", path, None, queried)

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        path = p.PATH_CLOSE.format(out_trade_no=quote(channel_order_id, safe=""))
        return await self._call(
            Call.CLOSE,
            "POST",
            path,
            {"mchid": self.cfg.mchid},
            lambda _: ChannelResult(Outcome.SUCCEEDED, channel_code="CLOSED"),
        )

    # ---- refunds -------------------------------------------------------------------------
    async def refund(self, req: CreateRefund) -> ChannelResult:
        payload: dict[str, Any] = {
            "out_trade_no": req.channel_order_id,
            "out_refund_no": req.channel_refund_id,
            "notify_url": req.notify_url,
            "amount": {"refund": req.amount, "total": req.total_amount, "currency": req.currency},
        }
        if req.reason:
            payload["reason"] = req.reason[:80]

        def refunded(reply: _Reply) -> ChannelResult:
            data = self._object(Call.REFUND, reply)
            return data if isinstance(data, ChannelResult) else p.map_refund(data)

        return await self._call(Call.REFUND, "POST", p.PATH_REFUND, payload, refunded)

    async def query_refund(self, channel_order_id: str, channel_refund_id: str) -> ChannelResult:
        path = p.PATH_REFUND_QUERY.format(out_refund_no=quote(channel_refund_id, safe=""))

        def queried(reply: _Reply) -> ChannelResult:
            data = self._object(Call.REFUND_QUERY, reply)
            if isinstance(data, ChannelResult):
                return data
            if data.get("out_trade_no") not in (None, channel_order_id):
                return p.map_error(
                    Call.REFUND_QUERY, reply.status, p.MALFORMED_RESPONSE, "refund of another order"
                )
            return p.map_refund(data)

        return await self._call(Call.REFUND_QUERY, "GET", path, None, queried)

    # ---- notifications -------------------------------------------------------------------
    def parse_notification(self, request: IncomingRequest) -> Notification:
        try:
            envelope.verify_headers(request.headers, request.body, self._keys.platform)
        except envelope.SignatureError as exc:
            log.warning("wechat_notification_rejected", channel=self.name, reason=str(exc))
            raise NotificationRejected(f"bad signature: {exc}") from None
        try:
            opened = envelope.open_notification(request.body, self._keys.apiv3_key)
        except ValueError as exc:
            log.warning("wechat_notification_rejected", channel=self.name, reason=str(exc))
            raise NotificationRejected(str(exc)) from None
        res = opened.resource
        if res.get("mchid") != self.cfg.mchid:
            log.warning("wechat_notification_rejected", channel=self.name, reason="mchid")
            raise NotificationRejected("notification for another merchant")
        order_id = res.get("out_trade_no")
        if not isinstance(order_id, str) or not order_id:
            raise NotificationRejected("notification without out_trade_no")
        if opened.event_type.startswith("TRANSACTION."):
            result = p.map_transaction(res)
            if result.outcome is Outcome.UNKNOWN:
                raise NotificationRejected("notification with an unknown trade_state")
            log.info(
                "wechat_notification",
                channel=self.name,
                event_type=opened.event_type,
                order=order_id,
                outcome=str(result.outcome),
            )
            return Notification(NotificationKind.PAYMENT, order_id, result)
        if opened.event_type.startswith("REFUND."):
            refund_id = res.get("out_refund_no")
            if not isinstance(refund_id, str) or not refund_id:
                raise NotificationRejected("refund notification without out_refund_no")
            result = p.map_refund(res)
            if result.outcome is Outcome.UNKNOWN:
                raise NotificationRejected("notification with an unknown refund_status")
            log.info(
                "wechat_notification",
                channel=self.name,
                event_type=opened.event_type,
                order=order_id,
                refund=refund_id,
                outcome=str(result.outcome),
            )
            return Notification(
                NotificationKind.REFUND, order_id, result, channel_refund_id=refund_id
            )
        log.warning("wechat_notification_rejected", channel=self.name, event_type=opened.event_type)
        raise NotificationRejected(f"unsupported event_type {opened.event_type}")

    def ack(self, accepted: bool) -> Ack:
        if accepted:
            return Ack(status=200, body=b"", content_type="text/plain")
        return Ack(status=500, body=p.ACK_FAIL_BODY, content_type="application/json")

    # ---- statement -----------------------------------------------------------------------
    async def download_statement(self, day: date) -> AsyncIterator[StatementLine]:
        """The ALL trade bill of one China (UTC+8) day. A day with no trades (the channel's
        NO_STATEMENT_EXIST) yields nothing. Raises StatementUnavailable when the bill cannot
        be had, ResponseVerificationError when the file does not match the signed hash, and
        bill.StatementError when it does not parse or its totals disagree."""
        path = f"{p.PATH_TRADEBILL}?bill_date={day.isoformat()}&bill_type=ALL"
        exchanged = await self._exchange(Call.STATEMENT, "GET", path)
        if exchanged.failure is not None:
            raise StatementUnavailable(self._kernel.describe(exchanged.failure))
        assert exchanged.answer is not None
        reply = exchanged.answer
        if reply.status != 200:
            result = self._error_result(Call.STATEMENT, reply)
            if result.channel_code == p.NO_STATEMENT_EXIST:
                return
            raise StatementUnavailable(f"{result.channel_code}: {result.channel_message}")
        data = reply.data if isinstance(reply.data, dict) else {}
        url, hash_type, hash_value = (
            data.get("download_url"),
            data.get("hash_type"),
            data.get("hash_value"),
        )
        if not isinstance(url, str) or not isinstance(hash_value, str):
            raise StatementUnavailable(f"{p.MALFORMED_RESPONSE}: no download_url / hash_value")
        algorithm = {"SHA1": "sha1", "SHA256": "sha256", "SM3": "sm3"}.get(str(hash_type))
        if algorithm is None:
            raise StatementUnavailable(f"{p.MALFORMED_RESPONSE}: unknown hash_type {hash_type}")
        spool = await self._download(url, algorithm, hash_value.lower())
        with spool:
            head = spool.read(2)
            spool.seek(0)
            text = (
                io.TextIOWrapper(gzip.GzipFile(fileobj=spool, mode="rb"), encoding="utf-8-sig")
                if head == b"\x1f\x8b"
                else io.TextIOWrapper(spool, encoding="utf-8-sig")
            )
            parser = bill.BillParser()
            for line in text:
                parsed = parser.feed(line)
                if parsed is not None:
                    yield parsed
            parser.finish()

    def _download_path(self, url: str) -> str:
        """The path and query to sign for a download URL; refuses other hosts (our
        Authorization is never sent anywhere but the channel)."""
        if not url.startswith(self._base + "/"):
            raise StatementUnavailable(f"{p.MALFORMED_RESPONSE}: download_url is not at base_url")
        return url[len(self._base) :]

    async def _download(self, url: str, algorithm: str, expected: str) -> IO[bytes]:
        """The bill file, spooled (in memory up to 4 MiB, then on disk) and checked against
        the hash of the signed answer."""
        path = self._download_path(url)

        async def attempt(timeout_s: float) -> Answer[IO[bytes] | None] | Busy[IO[bytes] | None]:
            spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY_BYTES)  # noqa: SIM115 - handed to the caller
            digest = hashlib.new(algorithm)
            headers = {"Authorization": self._authorization("GET", path, b"")}
            try:
                async with transport.request(
                    self._http, "GET", url, headers=headers, timeout_s=timeout_s
                ) as resp:
                    if resp.status in p.BUSY_STATUSES:
                        spool.close()
                        return Busy(None)
                    if resp.status != 200:
                        code, message = p.error_code_of(await resp.read())
                        raise StatementUnavailable(f"{code or f'HTTP_{resp.status}'}: {message}")
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        digest.update(chunk)
                        spool.write(chunk)
                if digest.hexdigest() != expected:
                    log.warning("wechat_bill_hash_mismatch", channel=self.name)
                    raise ResponseVerificationError("trade bill does not match its signed hash")
            except BaseException:
                spool.close()
                raise
            spool.seek(0)
            return Answer(spool)

        exchanged = await self._kernel.exchange(
            Call.STATEMENT, attempt, budget_s=self.cfg.statement_timeout_ms / 1000
        )
        if exchanged.failure is not None:
            raise StatementUnavailable(self._kernel.describe(exchanged.failure))
        if exchanged.answer is None:
            raise StatementUnavailable(f"{p.SYSTEM_ERROR}: the bill download stayed busy")
        return exchanged.answer


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Build a `wechat` channel from its routing-file `config:` (see WechatConfig)."""
    cfg = WechatConfig.model_validate(dict(config))
    return WechatAdapter(name, cfg, load_keys(cfg, ctx.config_dir), ctx.http)
