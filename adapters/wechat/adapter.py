"""The gateway's side of WeChat Pay API v3, native payments (`method: wechat_qr`).

`build(name, config, ctx)` validates the channel's `config:` mapping (see `WechatConfig`),
loads the merchant key, the platform certificate(s) and the APIv3 key once, and returns a
`WechatAdapter`.

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
  the signed SHA1), parsed line by line from a spooled temporary file.

Retries (tenacity, exponential backoff with jitter, at most three attempts, all within
`timeout_ms`): refused connections, connections dropped after sending, 5xx and 429. Every
WeChat call we make is safe to repeat: queries and close by nature, create because the real
API answers a repeated native order with the same out_trade_no and identical parameters with
the same code_url (we resend the identical body), refund because it is idempotent by
out_refund_no ("同一退款单号多次请求只退一笔"). A timeout uses up the budget and is not retried.

Every answer with a signature is verified; 2xx answers must be signed. An unsigned error answer
(the real API does not sign every error, e.g. 401 SIGN_ERROR or a gateway 502) is only believed
as far as it cannot settle anything: 5xx/429 count as transient and 401 as SIGN_ERROR; any other
unsigned error -> UNKNOWN with INVALID_SIGNATURE.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import aiohttp
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

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
    check_base_url,
)
from adapters.base import StatementUnavailable as ChannelStatementUnavailable
from adapters.wechat import protocol as p

log = structlog.get_logger("adapters.wechat")

MAX_ATTEMPTS = 3
"""At most this many tries of one call (within the call's timeout)."""
MIN_ATTEMPT_S = 0.05
"""Do not start another try with less time than this left."""


class WechatConfig(BaseModel):
    """The `config:` of a `wechat` channel in the routing file.

    Relative paths resolve against the gateway's config directory. `merchant_cert_serial_no`
    may be omitted when `merchant_cert_path` is given (the serial is read from it).
    `platform_cert_path` may list several certificates (WeChat rotates them: keep the old
    and the new one during a rotation). Give the APIv3 key inline (`apiv3_key: ${…}`) or as a
    file (`apiv3_key_path`), not both.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, coerce_numbers_to_str=True
    )

    base_url: str
    mchid: str = Field(min_length=1, max_length=32)
    appid: str = Field(min_length=1, max_length=32)
    merchant_private_key_path: str
    merchant_cert_serial_no: str | None = None
    merchant_cert_path: str | None = None
    platform_cert_path: str | list[str]
    apiv3_key: SecretStr | None = None
    apiv3_key_path: str | None = None
    timeout_ms: int = Field(default=5000, ge=50, le=60_000)
    statement_timeout_ms: int = Field(default=60_000, ge=1000, le=600_000)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("merchant_cert_serial_no")
    @classmethod
    def _serial(cls, value: str | None) -> str | None:
        if value is not None:
            p.serial_int(value)
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> WechatConfig:
        if (self.apiv3_key is None) == (self.apiv3_key_path is None):
            raise ValueError("give exactly one of apiv3_key and apiv3_key_path")
        if self.merchant_cert_serial_no is None and self.merchant_cert_path is None:
            raise ValueError("give merchant_cert_serial_no or merchant_cert_path")
        return self


@dataclass(frozen=True, slots=True)
class _Keys:
    merchant_key: RSAPrivateKey
    merchant_serial: str
    platform: Mapping[int, RSAPublicKey]
    apiv3_key: bytes


def _resolve(config_dir: str, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(config_dir) / candidate


def load_keys(cfg: WechatConfig, config_dir: str) -> _Keys:
    """Read the key material named by the config. Raises ValueError with the failing item
    (never with key content)."""
    try:
        merchant_key = p.load_private_key(
            _resolve(config_dir, cfg.merchant_private_key_path).read_bytes()
        )
    except (OSError, ValueError) as exc:
        raise ValueError(f"merchant_private_key_path: cannot load ({type(exc).__name__})") from None
    serial = cfg.merchant_cert_serial_no
    if cfg.merchant_cert_path is not None:
        try:
            cert = p.load_certificates(_resolve(config_dir, cfg.merchant_cert_path).read_bytes())[0]
        except (OSError, ValueError, IndexError) as exc:
            raise ValueError(f"merchant_cert_path: cannot load ({type(exc).__name__})") from None
        cert_serial = p.serial_hex(cert.serial_number)
        if serial is not None and p.serial_int(serial) != cert.serial_number:
            raise ValueError("merchant_cert_serial_no does not match merchant_cert_path")
        if p.certificate_key(cert).public_numbers() != merchant_key.public_key().public_numbers():
            raise ValueError("merchant_cert_path does not hold the merchant key's public key")
        serial = cert_serial
    assert serial is not None  # the model requires a serial or a certificate
    platform: dict[int, RSAPublicKey] = {}
    paths = (
        [cfg.platform_cert_path]
        if isinstance(cfg.platform_cert_path, str)
        else cfg.platform_cert_path
    )
    for path in paths:
        try:
            certs = p.load_certificates(_resolve(config_dir, path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"platform_cert_path {path}: cannot load ({type(exc).__name__})"
            ) from None
        for cert in certs:
            platform[cert.serial_number] = p.certificate_key(cert)
    if not platform:
        raise ValueError("platform_cert_path: no certificate")
    if cfg.apiv3_key is not None:
        apiv3 = cfg.apiv3_key.get_secret_value().encode()
    else:
        assert cfg.apiv3_key_path is not None
        try:
            apiv3 = _resolve(config_dir, cfg.apiv3_key_path).read_text().strip().encode()
        except OSError as exc:
            raise ValueError(f"apiv3_key_path: cannot read ({type(exc).__name__})") from None
    if len(apiv3) != 32:
        raise ValueError("the APIv3 key must be 32 bytes")
    return _Keys(merchant_key, serial.upper(), platform, apiv3)


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    data: Any
    signed: bool


class _Transient(Exception):
    """A 5xx / 429 answer, raised inside the retry loop so that tenacity tries again."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class _BadSignature(Exception):
    pass


_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)
"""Failures before anything was sent: safe to retry and to fail over."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _Transient | aiohttp.ServerDisconnectedError):
        return True
    if isinstance(exc, _CONNECT_ERRORS):
        return True
    if isinstance(exc, TimeoutError):
        return False
    return isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientPayloadError)


class StatementUnavailable(ChannelStatementUnavailable):
    """The trade bill could not be fetched (channel error, transport failure)."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class WechatAdapter(ChannelAdapter):
    """WeChat Pay API v3 native payments. Safe for concurrent use (no mutable state)."""

    adapter = "wechat"

    def __init__(
        self, name: str, cfg: WechatConfig, keys: _Keys, http: aiohttp.ClientSession
    ) -> None:
        super().__init__(name)
        self.cfg = cfg
        self._keys = keys
        self._http = http
        self._base = cfg.base_url
        self._timeout = cfg.timeout_ms / 1000

    # ---- ids -----------------------------------------------------------------------------
    def channel_order_id(self, payment_id: str, seq: int) -> str:
        return p.out_trade_no_for(payment_id, seq)

    def channel_refund_id(self, refund_id: str) -> str:
        return p.out_refund_no_for(refund_id)

    # ---- transport -----------------------------------------------------------------------
    def _authorization(self, method: str, url: str, body: bytes) -> str:
        return p.build_authorization(
            mchid=self.cfg.mchid,
            serial_no=self._keys.merchant_serial,
            private_key=self._keys.merchant_key,
            method=method,
            url=url,
            body=body,
        )

    async def _once(self, method: str, path: str, body: bytes, budget_s: float) -> _Reply:
        headers = {
            "Authorization": self._authorization(method, path, body),
            "Accept": "application/json",
            "User-Agent": "payment-gateway wechat adapter",
        }
        if method != "GET":
            headers["Content-Type"] = "application/json"
        async with self._http.request(
            method,
            self._base + path,
            data=body if method != "GET" else None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=budget_s),
            allow_redirects=False,
        ) as resp:
            raw = await resp.read()
            signed = p.has_signature(resp.headers)
            if signed or 200 <= resp.status < 300:
                try:
                    p.verify_headers(resp.headers, raw, self._keys.platform)
                except p.SignatureError as exc:
                    log.warning(
                        "wechat_bad_response_signature",
                        channel=self.name,
                        method=method,
                        path=path.split("?")[0],
                        status=resp.status,
                        reason=str(exc),
                    )
                    raise _BadSignature(str(exc)) from None
            data: Any = None
            if raw:
                try:
                    data = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    data = None
            reply = _Reply(resp.status, raw, data, signed)
        if reply.status >= 500 or reply.status == 429:
            raise _Transient(reply)
        return reply

    async def _call(
        self, op: p.Op, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> _Reply | ChannelResult:
        """One API call with retries. Returns the (verified) reply, or the ChannelResult for a
        call that got no usable answer."""
        body = p.dumps(payload) if payload is not None else b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout

        def _stop(state: RetryCallState) -> bool:
            return stop_after_attempt(MAX_ATTEMPTS)(state) or deadline - loop.time() < MIN_ATTEMPT_S

        try:
            async for attempt in AsyncRetrying(
                stop=_stop,
                wait=wait_random_exponential(multiplier=0.05, max=0.5),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError
                    return await self._once(method, path, body, remaining)
        except _Transient as exc:
            return exc.reply
        except _BadSignature as exc:
            return p.map_error(op, None, p.INVALID_SIGNATURE, str(exc))
        except _CONNECT_ERRORS as exc:
            log.info("wechat_connect_failed", channel=self.name, op=str(op), error=repr(exc))
            return p.map_error(op, None, p.CONNECTION_REFUSED, type(exc).__name__)
        except TimeoutError:
            log.info("wechat_timeout", channel=self.name, op=str(op))
            return p.map_error(op, None, p.TIMEOUT, "no answer within the timeout")
        except aiohttp.ClientError as exc:
            log.info("wechat_connection_error", channel=self.name, op=str(op), error=repr(exc))
            return p.map_error(op, None, p.CONNECTION_ERROR, type(exc).__name__)
        raise AssertionError("unreachable")  # pragma: no cover

    def _error_result(self, op: p.Op, reply: _Reply) -> ChannelResult:
        code, message = p.error_code_of(reply.body)
        if not reply.signed:
            if reply.status >= 500 or reply.status == 429:
                code = code if code in p.ERROR_TABLE else p.SYSTEM_ERROR
            elif reply.status == 401:
                code = p.SIGN_ERROR
            else:
                log.warning(
                    "wechat_unsigned_error_answer",
                    channel=self.name,
                    op=str(op),
                    status=reply.status,
                )
                return p.map_error(op, reply.status, p.INVALID_SIGNATURE, "unsigned error answer")
        return p.map_error(op, reply.status, code or f"HTTP_{reply.status}", message)

    def _success_data(self, op: p.Op, reply: _Reply) -> Mapping[str, Any] | ChannelResult:
        if not isinstance(reply.data, dict):
            return p.map_error(op, reply.status, p.MALFORMED_RESPONSE, "answer is not an object")
        return reply.data

    # ---- payments ------------------------------------------------------------------------
    async def create_payment(self, req: CreatePayment) -> ChannelResult:
        if req.method != "wechat_qr":
            return p.map_error(p.Op.CREATE, None, p.METHOD_NOT_SUPPORTED, req.method)
        payload: dict[str, Any] = {
            "appid": self.cfg.appid,
            "mchid": self.cfg.mchid,
            "description": req.description[: p.DESCRIPTION_MAX],
            "out_trade_no": req.channel_order_id,
            "time_expire": p.format_time(req.expires_at),
            "notify_url": req.notify_url,
            "amount": {"total": req.amount, "currency": req.currency},
        }
        if req.payer_ip:
            payload["scene_info"] = {"payer_client_ip": req.payer_ip}
        reply = await self._call(p.Op.CREATE, "POST", p.PATH_NATIVE, payload)
        if isinstance(reply, ChannelResult):
            return reply
        if reply.status != 200:
            return self._error_result(p.Op.CREATE, reply)
        data = self._success_data(p.Op.CREATE, reply)
        return data if isinstance(data, ChannelResult) else p.map_create(data)

    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        path = p.PATH_QUERY.format(out_trade_no=quote(channel_order_id, safe=""))
        path += f"?mchid={quote(self.cfg.mchid, safe='')}"
        reply = await self._call(p.Op.QUERY, "GET", path)
        if isinstance(reply, ChannelResult):
            return reply
        if reply.status != 200:
            return self._error_result(p.Op.QUERY, reply)
        data = self._success_data(p.Op.QUERY, reply)
        if isinstance(data, ChannelResult):
            return data
        if data.get("out_trade_no") != channel_order_id or data.get("mchid") != self.cfg.mchid:
            return p.map_error(
                p.Op.QUERY, reply.status, p.MALFORMED_RESPONSE, "answer about another order"
            )
        return p.map_transaction(data)

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        path = p.PATH_CLOSE.format(out_trade_no=quote(channel_order_id, safe=""))
        reply = await self._call(p.Op.CLOSE, "POST", path, {"mchid": self.cfg.mchid})
        if isinstance(reply, ChannelResult):
            return reply
        if reply.status in (200, 204):
            return ChannelResult(Outcome.SUCCEEDED, channel_code="CLOSED")
        return self._error_result(p.Op.CLOSE, reply)

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
        reply = await self._call(p.Op.REFUND, "POST", p.PATH_REFUND, payload)
        if isinstance(reply, ChannelResult):
            return reply
        if reply.status != 200:
            return self._error_result(p.Op.REFUND, reply)
        data = self._success_data(p.Op.REFUND, reply)
        return data if isinstance(data, ChannelResult) else p.map_refund(data)

    async def query_refund(self, channel_order_id: str, channel_refund_id: str) -> ChannelResult:
        path = p.PATH_REFUND_QUERY.format(out_refund_no=quote(channel_refund_id, safe=""))
        reply = await self._call(p.Op.REFUND_QUERY, "GET", path)
        if isinstance(reply, ChannelResult):
            return reply
        if reply.status != 200:
            return self._error_result(p.Op.REFUND_QUERY, reply)
        data = self._success_data(p.Op.REFUND_QUERY, reply)
        if isinstance(data, ChannelResult):
            return data
        if data.get("out_trade_no") not in (None, channel_order_id):
            return p.map_error(
                p.Op.REFUND_QUERY, reply.status, p.MALFORMED_RESPONSE, "refund of another order"
            )
        return p.map_refund(data)

    # ---- notifications -------------------------------------------------------------------
    def parse_notification(self, request: IncomingRequest) -> Notification:
        try:
            p.verify_headers(request.headers, request.body, self._keys.platform)
        except p.SignatureError as exc:
            log.warning("wechat_notification_rejected", channel=self.name, reason=str(exc))
            raise NotificationRejected(f"bad signature: {exc}") from None
        try:
            opened = p.open_notification(request.body, self._keys.apiv3_key)
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
        protocol.StatementError when it does not parse or its totals disagree."""
        path = f"{p.PATH_TRADEBILL}?bill_date={day.isoformat()}&bill_type=ALL"
        reply = await self._call(p.Op.STATEMENT, "GET", path)
        if isinstance(reply, ChannelResult):
            raise StatementUnavailable(reply.channel_code or "UNKNOWN", reply.channel_message)
        if reply.status != 200:
            result = self._error_result(p.Op.STATEMENT, reply)
            if result.channel_code == p.NO_STATEMENT_EXIST:
                return
            raise StatementUnavailable(result.channel_code or "UNKNOWN", result.channel_message)
        data = reply.data if isinstance(reply.data, dict) else {}
        url, hash_type, hash_value = (
            data.get("download_url"),
            data.get("hash_type"),
            data.get("hash_value"),
        )
        if not isinstance(url, str) or not isinstance(hash_value, str):
            raise StatementUnavailable(p.MALFORMED_RESPONSE, "no download_url / hash_value")
        algorithm = {"SHA1": "sha1", "SHA256": "sha256", "SM3": "sm3"}.get(str(hash_type))
        if algorithm is None:
            raise StatementUnavailable(p.MALFORMED_RESPONSE, f"unknown hash_type {hash_type}")
        with tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024) as spool:
            await self._download(url, spool, algorithm, hash_value.lower())
            spool.seek(0)
            head = spool.read(2)
            spool.seek(0)
            text = (
                io.TextIOWrapper(gzip.GzipFile(fileobj=spool, mode="rb"), encoding="utf-8-sig")
                if head == b"\x1f\x8b"
                else io.TextIOWrapper(spool, encoding="utf-8-sig")
            )
            parser = p.BillParser()
            for line in text:
                parsed = parser.feed(line)
                if parsed is not None:
                    yield parsed
            parser.finish()

    def _download_path(self, url: str) -> str:
        """The path and query to sign for a download URL; refuses other hosts (our
        Authorization is never sent anywhere but the channel)."""
        if not url.startswith(self._base + "/"):
            raise StatementUnavailable(p.MALFORMED_RESPONSE, "download_url is not at base_url")
        return url[len(self._base) :]

    async def _download(self, url: str, sink: IO[bytes], algorithm: str, expected: str) -> None:
        path = self._download_path(url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.statement_timeout_ms / 1000

        async def attempt_once() -> None:
            sink.seek(0)
            sink.truncate()
            digest = hashlib.new(algorithm)
            headers = {"Authorization": self._authorization("GET", path, b"")}
            async with self._http.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=max(deadline - loop.time(), 0.001)),
                allow_redirects=False,
            ) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise _Transient(_Reply(resp.status, b"", None, False))
                if resp.status != 200:
                    body = await resp.read()
                    code, message = p.error_code_of(body)
                    raise StatementUnavailable(code or f"HTTP_{resp.status}", message)
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    digest.update(chunk)
                    sink.write(chunk)
            if digest.hexdigest() != expected:
                log.warning("wechat_bill_hash_mismatch", channel=self.name)
                raise ResponseVerificationError("trade bill does not match its signed hash")

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(MAX_ATTEMPTS),
                wait=wait_random_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    await attempt_once()
        except _Transient as exc:
            raise StatementUnavailable(p.SYSTEM_ERROR, f"HTTP {exc.reply.status}") from None
        except TimeoutError:
            raise StatementUnavailable(p.TIMEOUT) from None
        except aiohttp.ClientError as exc:
            raise StatementUnavailable(p.CONNECTION_ERROR, type(exc).__name__) from None


def build(name: str, config: Mapping[str, Any], ctx: AdapterContext) -> ChannelAdapter:
    """Build a `wechat` channel from its routing-file `config:` (see WechatConfig)."""
    cfg = WechatConfig.model_validate(dict(config))
    keys = load_keys(cfg, ctx.config_dir)
    return WechatAdapter(name, cfg, keys, ctx.http)
