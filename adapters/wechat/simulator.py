"""A WeChat Pay API v3 simulator (native payments), faithful to the real wire protocol so that
both our adapter and the real `wechatpayv3` SDK can talk to it.

Served below the simulator root (`/sim/wechat` when mounted in the gateway):

- `POST /v3/pay/transactions/native` -> `{"code_url"}`: here the URL of the payer page
  (`<root>/qr/<token>`) instead of a `weixin://wxpay/bizpayurl?pr=…` link to scan.
  Repeating the request with the same out_trade_no and the same parameters returns the same
  code_url (as the real API does); other parameters -> 403 OUT_TRADE_NO_USED; a paid order ->
  400 ORDERPAID; a closed one -> 400 ORDER_CLOSED.
- `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=` and
  `GET /v3/pay/transactions/id/{transaction_id}?mchid=` -> the transaction; 404
  ORDER_NOT_EXIST.
- `POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close` `{"mchid"}` -> 204 (also when
  already closed); 400 ORDERPAID when paid.
- `POST /v3/refund/domestic/refunds` -> the refund, `PROCESSING`; it settles (`SUCCESS`) a
  moment later (2 s times `notify_time_scale`) and a `REFUND.SUCCESS` notification follows.
  The same out_refund_no again returns the same refund (WeChat: "同一退款单号多次请求只退一笔").
- `GET /v3/refund/domestic/refunds/{out_refund_no}` -> the refund; 404 RESOURCE_NOT_EXISTS.
- `GET /v3/bill/tradebill?bill_date=&bill_type=ALL|SUCCESS|REFUND&tar_type=GZIP` ->
  `{"download_url", "hash_type": "SHA1", "hash_value"}`; `GET /v3/billdownload/file?token=`
  -> the bill (unsigned, as the real one: the hash in the signed answer protects it).
- `GET /v3/certificates` -> the platform certificate, encrypted with the APIv3 key (so the real
  SDK can download and verify it).
- `GET|POST /qr/{token}`: the payer page; `action=pay|cancel` (form or JSON).

Every API request must carry a valid merchant `Authorization` (verified with the merchant
certificate found by `serial_no`, whose CN must be the mchid; timestamp within five minutes);
every answer except the bill file is signed with the platform key. Faults (`/control/faults`)
apply to every API handler: an injected error is the real `500 {"code": "SYSTEM_ERROR"}`.

Where it differs from the real channel:

- The payer "scans" by opening the code_url in a browser. Cancel sets the order to PAYERROR
  ("用户取消支付") so that a failed payment can be exercised; the real channel leaves an order
  the payer walked away from in NOTPAY. Neither sends a notification (WeChat only notifies
  successes), so the gateway learns a failure by querying.
- An expired order (past time_expire) can no longer be paid and stays NOTPAY until closed, as
  at the real channel.
- Bills: the real bill for day D is ready the next morning; here any day up to today (China
  time) is served at once. A payment is billed on the China (UTC+8) day it was paid, a refund
  on the day it was requested. A day without rows answers 400 NO_STATEMENT_EXIST, as the real
  API does. Fees are 0.60% rounded to the fen (the real bill carries more decimals).
- notify_url may be http (the real API requires https); appid is not checked against mchid;
  nonces are not checked for replay; there is one order book for all merchants.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import secrets
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from adapters import simkit
from adapters.chinatime import china_date, china_midnight
from adapters.kernel.crypto import certificate_key, load_certificates, load_private_key, rsa_verify
from adapters.money import fen_to_yuan
from adapters.simkit import FaultAction, SimOrder, SimRefund, SimulatorCore, SimulatorSettings
from adapters.wechat import bill, envelope
from adapters.wechat import protocol as p

log = structlog.get_logger("simulator.wechat")

ADAPTER = "wechat"
REFUND_SETTLE_S = 2.0
"""Seconds (times notify_time_scale) before a PROCESSING refund succeeds."""
BILL_TOKEN_TTL_S = 300.0
"""How long a bill download URL stays valid."""

ApiHandler = Callable[[web.Request, "Merchant", bytes], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Merchant:
    mchid: str
    serial: str
    public_key: RSAPublicKey


@dataclass(frozen=True, slots=True)
class SimKeys:
    """What the simulated WeChat Pay holds: its platform key and certificate, the merchants'
    API certificates (by serial) and the APIv3 key."""

    platform_key: RSAPrivateKey
    platform_cert: x509.Certificate
    platform_serial: str
    apiv3_key: bytes
    merchants: Mapping[int, Merchant]

    @classmethod
    def load(cls, config_dir: str) -> SimKeys:
        directory = Path(config_dir) / "keys" / ADAPTER
        platform_key = load_private_key((directory / "platform_key.pem").read_bytes())
        platform_cert = load_certificates((directory / "platform_cert.pem").read_bytes())[0]
        apiv3 = (directory / "apiv3_key.txt").read_text().strip().encode()
        merchants: dict[int, Merchant] = {}
        for path in sorted(directory.glob("apiclient_cert*.pem")):
            for cert in load_certificates(path.read_bytes()):
                mchid = envelope.certificate_cn(cert)
                if mchid:
                    merchants[cert.serial_number] = Merchant(
                        mchid, envelope.serial_hex(cert.serial_number), certificate_key(cert)
                    )
        return cls(
            platform_key=platform_key,
            platform_cert=platform_cert,
            platform_serial=envelope.serial_hex(platform_cert.serial_number),
            apiv3_key=apiv3,
            merchants=merchants,
        )


class ApiError(Exception):
    """An error answer of the real API: HTTP status from the code, `{"code", "message"}`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Bill:
    content: bytes
    mchid: str
    expires: float


def _digits(n: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(n))


class WechatSimulator:
    """One simulated WeChat Pay: its order book (`core.orders`, keyed by out_trade_no), keys,
    payer pages and bills."""

    def __init__(self, settings: SimulatorSettings, keys: SimKeys | None = None) -> None:
        self.settings = settings
        self.keys = keys or SimKeys.load(settings.config_dir)
        self.core = SimulatorCore(ADAPTER, settings, p.NOTIFY_SCHEDULE_S)
        self.qr_tokens: dict[str, str] = {}
        self.refund_index: dict[str, str] = {}
        self.bills: dict[str, _Bill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- application ---------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app[SIMULATOR] = self
        r = app.router
        r.add_post(p.PATH_NATIVE, self._api(self._create))
        r.add_get(p.PATH_QUERY, self._api(self._query))
        r.add_get(p.PATH_QUERY_BY_ID, self._api(self._query_by_id))
        r.add_post(p.PATH_CLOSE, self._api(self._close))
        r.add_post(p.PATH_REFUND, self._api(self._refund))
        r.add_get(p.PATH_REFUND_QUERY, self._api(self._refund_query))
        r.add_get(p.PATH_TRADEBILL, self._api(self._tradebill))
        r.add_get(p.PATH_BILLDOWNLOAD, self._api(self._billdownload))
        r.add_get(p.PATH_CERTIFICATES, self._api(self._certificates))
        r.add_get("/qr/{token}", self._payer_get)
        r.add_post("/qr/{token}", self._payer_post)
        self.core.add_control_routes(app)

        async def _cleanup(_: web.Application) -> None:
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

        app.on_cleanup.append(_cleanup)
        return app

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- signed answers ------------------------------------------------------------------
    def _answer(self, status: int, data: Any | None) -> web.Response:
        body = envelope.dumps(data) if data is not None else b""
        headers = envelope.sign_headers(self.keys.platform_key, self.keys.platform_serial, body)
        headers["Request-ID"] = uuid.uuid4().hex
        if data is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        return web.Response(status=status, body=body, headers=headers)

    def _error(self, code: str, message: str) -> web.Response:
        return self._answer(p.ERROR_HTTP_STATUS.get(code, 400), {"code": code, "message": message})

    def _api(self, handler: ApiHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            # read the body before any injected delay: a caller that gives up meanwhile
            # must not make the request vanish (the channel acts on what it received)
            await request.read()
            action = await self.core.inject()
            if action is FaultAction.ERROR:
                return self._error(p.SYSTEM_ERROR, "系统错误")
            try:
                merchant, body = await self._authenticate(request)
                return await handler(request, merchant, body)
            except ApiError as exc:
                return self._error(exc.code, exc.message)

        return wrapped

    # ---- the merchant's signature --------------------------------------------------------
    @staticmethod
    def _canonical_url(request: web.Request) -> str:
        """The path and query as sent, below the simulator root (the real API's root is the
        domain root, so this is the real rule)."""
        raw = request.raw_path
        prefix = request.app.get(simkit.SIM_PREFIX, "")
        if prefix and raw.startswith(prefix):
            raw = raw[len(prefix) :]
        return raw

    async def _authenticate(self, request: web.Request) -> tuple[Merchant, bytes]:
        body = await request.read()
        try:
            auth = envelope.parse_authorization(request.headers.get("Authorization", ""))
            merchant = self.keys.merchants.get(envelope.serial_int(auth.serial_no))
            if merchant is None:
                raise envelope.SignatureError("unknown merchant certificate serial")
            if merchant.mchid != auth.mchid:
                raise envelope.SignatureError("mchid does not own this certificate")
            envelope.check_timestamp(auth.timestamp)
            message = envelope.request_message(
                request.method,
                self._canonical_url(request),
                auth.timestamp,
                auth.nonce_str,
                body,
            )
            if not rsa_verify(merchant.public_key, message, auth.signature):
                raise envelope.SignatureError("signature does not verify")
        except ValueError as exc:  # SignatureError is a ValueError
            log.info("sim_wechat_sign_error", reason=str(exc), path=request.path)
            raise ApiError(p.SIGN_ERROR, f"签名错误: {exc}") from None
        return merchant, body

    # ---- request parsing -----------------------------------------------------------------
    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(p.PARAM_ERROR, "请求体不是合法的JSON") from None
        if not isinstance(data, dict):
            raise ApiError(p.PARAM_ERROR, "请求体必须是JSON对象")
        return data

    @staticmethod
    def _text(data: Mapping[str, Any], key: str, max_len: int, *, required: bool = True) -> str:
        value = data.get(key)
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value or len(value) > max_len:
            raise ApiError(p.PARAM_ERROR, f"参数 {key} 格式错误")
        return value

    @staticmethod
    def _check_mchid(value: Any, merchant: Merchant) -> None:
        if value != merchant.mchid:
            raise ApiError(p.PARAM_ERROR, "mchid与请求签名的商户号不一致")

    def _order(self, out_trade_no: str, merchant: Merchant, code: str) -> SimOrder:
        order = self.core.orders.get(out_trade_no)
        if order is None or order.extra.get("mchid") != merchant.mchid:
            raise ApiError(code, "订单不存在")
        return order

    # ---- transactions --------------------------------------------------------------------
    async def _create(self, request: web.Request, merchant: Merchant, body: bytes) -> web.Response:
        data = self._json(body)
        appid = self._text(data, "appid", 32)
        self._check_mchid(data.get("mchid"), merchant)
        description = self._text(data, "description", p.DESCRIPTION_MAX)
        out_trade_no = self._text(data, "out_trade_no", 32)
        if not p.OUT_TRADE_NO_RE.fullmatch(out_trade_no):
            raise ApiError(p.PARAM_ERROR, "out_trade_no 只能是6到32位数字、大小写字母_-|*")
        notify_url = self._text(data, "notify_url", 256)
        if not notify_url.startswith(("https://", "http://")):
            raise ApiError(p.PARAM_ERROR, "notify_url 格式错误")
        amount = data.get("amount")
        total = amount.get("total") if isinstance(amount, dict) else None
        currency = amount.get("currency", "CNY") if isinstance(amount, dict) else None
        if type(total) is not int or total < 1:
            raise ApiError(p.PARAM_ERROR, "amount.total 必须是正整数(分)")
        if currency != "CNY":
            raise ApiError(p.PARAM_ERROR, "amount.currency 只支持 CNY")
        expire_text = data.get("time_expire")
        time_expire: datetime | None = None
        if expire_text is not None:
            try:
                time_expire = envelope.parse_time(str(expire_text))
            except ValueError:
                raise ApiError(p.PARAM_ERROR, "time_expire 格式错误") from None
        fingerprint = hashlib.sha256(
            envelope.dumps([appid, description, notify_url, total, currency, expire_text])
        ).hexdigest()

        existing = self.core.orders.get(out_trade_no)
        if existing is not None:
            if existing.status in (p.TradeState.SUCCESS, p.TradeState.REFUND):
                raise ApiError(p.ORDERPAID, "该订单已支付")
            if existing.status == p.TradeState.CLOSED:
                raise ApiError(p.ORDER_CLOSED, "订单已关闭")
            if (
                existing.extra.get("mchid") != merchant.mchid
                or existing.extra.get("fingerprint") != fingerprint
            ):
                raise ApiError(p.OUT_TRADE_NO_USED, "商户订单号重复")
            return self._answer(200, {"code_url": existing.extra["code_url"]})

        token = secrets.token_urlsafe(12)
        code_url = f"{simkit.public_base(request)}/qr/{token}"
        now = simkit.now()
        order = SimOrder(
            channel_order_id=out_trade_no,
            amount=total,
            currency=currency,
            description=description,
            notify_url=notify_url,
            status=p.TradeState.NOTPAY.value,
            channel_trade_no="4200" + china_date(now).strftime("%Y%m%d") + _digits(16),
            created_at=now,
            extra={
                "mchid": merchant.mchid,
                "appid": appid,
                "code_url": code_url,
                "token": token,
                "fingerprint": fingerprint,
                "time_expire": envelope.format_time(time_expire) if time_expire else None,
                "trade_state_desc": p.TRADE_STATE_DESC[p.TradeState.NOTPAY],
                "openid": None,
            },
        )
        self.core.orders[out_trade_no] = order
        self.qr_tokens[token] = out_trade_no
        log.info("sim_wechat_order_created", out_trade_no=out_trade_no, amount=total)
        return self._answer(200, {"code_url": code_url})

    def _transaction(self, order: SimOrder) -> dict[str, Any]:
        amount: dict[str, Any] = {
            "total": order.amount,
            "currency": order.currency,
            "payer_currency": order.currency,
        }
        data: dict[str, Any] = {
            "appid": order.extra["appid"],
            "mchid": order.extra["mchid"],
            "out_trade_no": order.channel_order_id,
            "trade_type": "NATIVE",
            "trade_state": order.status,
            "trade_state_desc": order.extra.get("trade_state_desc")
            or p.TRADE_STATE_DESC.get(order.status, ""),
            "attach": "",
            "amount": amount,
            "promotion_detail": [],
        }
        if order.paid_at is not None:
            amount["payer_total"] = order.amount
            data["transaction_id"] = order.channel_trade_no
            data["bank_type"] = "OTHERS"
            data["success_time"] = envelope.format_time(order.paid_at)
            data["payer"] = {"openid": order.extra.get("openid")}
        return data

    async def _query(self, request: web.Request, merchant: Merchant, body: bytes) -> web.Response:
        self._check_mchid(request.query.get("mchid"), merchant)
        order = self._order(request.match_info["out_trade_no"], merchant, p.ORDER_NOT_EXIST)
        return self._answer(200, self._transaction(order))

    async def _query_by_id(
        self, request: web.Request, merchant: Merchant, body: bytes
    ) -> web.Response:
        self._check_mchid(request.query.get("mchid"), merchant)
        wanted = request.match_info["transaction_id"]
        for order in self.core.orders.values():
            if (
                order.paid_at is not None
                and order.channel_trade_no == wanted
                and order.extra.get("mchid") == merchant.mchid
            ):
                return self._answer(200, self._transaction(order))
        raise ApiError(p.ORDER_NOT_EXIST, "订单不存在")

    async def _close(self, request: web.Request, merchant: Merchant, body: bytes) -> web.Response:
        data = self._json(body)
        self._check_mchid(data.get("mchid"), merchant)
        order = self._order(request.match_info["out_trade_no"], merchant, p.ORDER_NOT_EXIST)
        if order.status in (p.TradeState.SUCCESS, p.TradeState.REFUND):
            raise ApiError(p.ORDERPAID, "订单已支付")
        if order.status != p.TradeState.CLOSED:
            order.status = p.TradeState.CLOSED.value
            order.extra["trade_state_desc"] = p.TRADE_STATE_DESC[p.TradeState.CLOSED]
            order.closed_at = simkit.now()
            log.info("sim_wechat_order_closed", out_trade_no=order.channel_order_id)
        return self._answer(204, None)

    # ---- refunds -------------------------------------------------------------------------
    def _refund_view(self, order: SimOrder, refund: SimRefund) -> dict[str, Any]:
        data: dict[str, Any] = {
            "refund_id": refund.refund_no,
            "out_refund_no": refund.channel_refund_id,
            "transaction_id": order.channel_trade_no,
            "out_trade_no": order.channel_order_id,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": envelope.format_time(refund.created_at),
            "status": refund.status,
            "funds_account": "AVAILABLE",
            "amount": {
                "total": order.amount,
                "refund": refund.amount,
                "from": [],
                "payer_total": order.amount,
                "payer_refund": refund.amount,
                "settlement_refund": refund.amount,
                "settlement_total": order.amount,
                "discount_refund": 0,
                "currency": order.currency,
                "refund_fee": 0,
            },
            "promotion_detail": [],
        }
        if refund.status == p.RefundStatus.SUCCESS and refund.completed_at is not None:
            data["success_time"] = envelope.format_time(refund.completed_at)
        return data

    async def _refund(self, request: web.Request, merchant: Merchant, body: bytes) -> web.Response:
        data = self._json(body)
        out_refund_no = self._text(data, "out_refund_no", 64)
        if not p.OUT_REFUND_NO_RE.fullmatch(out_refund_no):
            raise ApiError(p.PARAM_ERROR, "out_refund_no 格式错误")
        out_trade_no = data.get("out_trade_no")
        transaction_id = data.get("transaction_id")
        order: SimOrder | None = None
        if isinstance(out_trade_no, str):
            order = self.core.orders.get(out_trade_no)
        elif isinstance(transaction_id, str):
            order = next(
                (o for o in self.core.orders.values() if o.channel_trade_no == transaction_id),
                None,
            )
        else:
            raise ApiError(p.PARAM_ERROR, "out_trade_no 和 transaction_id 必须二选一")
        if order is None or order.extra.get("mchid") != merchant.mchid:
            raise ApiError(p.RESOURCE_NOT_EXISTS, "订单不存在")
        amount = data.get("amount")
        if not isinstance(amount, dict):
            raise ApiError(p.PARAM_ERROR, "amount 必填")
        refund_amount, total = amount.get("refund"), amount.get("total")
        if type(refund_amount) is not int or refund_amount < 1 or type(total) is not int:
            raise ApiError(p.PARAM_ERROR, "amount.refund / amount.total 必须是正整数(分)")
        if amount.get("currency", "CNY") != order.currency:
            raise ApiError(p.PARAM_ERROR, "amount.currency 与订单币种不一致")
        notify_url = data.get("notify_url")
        if notify_url is not None and (
            not isinstance(notify_url, str) or not notify_url.startswith(("https://", "http://"))
        ):
            raise ApiError(p.PARAM_ERROR, "notify_url 格式错误")

        existing_order = self.refund_index.get(out_refund_no)
        if existing_order is not None:
            previous = self.core.orders[existing_order].refunds[out_refund_no]
            if existing_order != order.channel_order_id or previous.amount != refund_amount:
                raise ApiError(p.INVALID_REQUEST, "同一退款单号的请求参数不一致")
            return self._answer(200, self._refund_view(order, previous))

        if order.paid_at is None or order.status not in (
            p.TradeState.SUCCESS,
            p.TradeState.REFUND,
        ):
            raise ApiError(p.INVALID_REQUEST, "订单未支付, 不能退款")
        if total != order.amount:
            raise ApiError(p.PARAM_ERROR, "amount.total 与订单金额不一致")
        taken = sum(r.amount for r in order.refunds.values() if r.status != p.RefundStatus.CLOSED)
        if taken + refund_amount > order.amount:
            raise ApiError(p.INVALID_REQUEST, "申请退款金额超过订单可退金额")

        now = simkit.now()
        refund = SimRefund(
            channel_refund_id=out_refund_no,
            refund_no="50" + china_date(now).strftime("%Y%m%d") + _digits(19),
            amount=refund_amount,
            status=p.RefundStatus.PROCESSING.value,
            created_at=now,
        )
        order.refunds[out_refund_no] = refund
        order.extra.setdefault("refund_notify", {})[out_refund_no] = notify_url
        self.refund_index[out_refund_no] = order.channel_order_id
        order.status = p.TradeState.REFUND.value
        order.extra["trade_state_desc"] = p.TRADE_STATE_DESC[p.TradeState.REFUND]
        log.info("sim_wechat_refund_created", out_refund_no=out_refund_no, amount=refund_amount)
        self._spawn(self._settle_refund(order, refund))
        return self._answer(200, self._refund_view(order, refund))

    async def _settle_refund(self, order: SimOrder, refund: SimRefund) -> None:
        await asyncio.sleep(REFUND_SETTLE_S * self.settings.notify_time_scale)
        refund.status = p.RefundStatus.SUCCESS.value
        refund.completed_at = simkit.now()
        notify_url = order.extra.get("refund_notify", {}).get(refund.channel_refund_id)
        if notify_url:
            self.core.notify(order, self._refund_sender(order, refund, notify_url))

    async def _refund_query(
        self, request: web.Request, merchant: Merchant, body: bytes
    ) -> web.Response:
        out_refund_no = request.match_info["out_refund_no"]
        out_trade_no = self.refund_index.get(out_refund_no)
        order = self.core.orders.get(out_trade_no) if out_trade_no else None
        if order is None or order.extra.get("mchid") != merchant.mchid:
            raise ApiError(p.RESOURCE_NOT_EXISTS, "退款单不存在")
        return self._answer(200, self._refund_view(order, order.refunds[out_refund_no]))

    # ---- notifications -------------------------------------------------------------------
    async def _post_notification(
        self, http: aiohttp.ClientSession, url: str, body: bytes, what: str
    ) -> bool:
        headers = envelope.sign_headers(self.keys.platform_key, self.keys.platform_serial, body)
        headers["Content-Type"] = "application/json"
        headers["Request-ID"] = uuid.uuid4().hex
        async with http.post(url, data=body, headers=headers) as resp:
            await resp.read()
            ok = resp.status in (200, 204)
        log.info("sim_wechat_notified", what=what, status=resp.status, accepted=ok)
        return ok

    def _transaction_sender(self, order: SimOrder) -> simkit.Sender:
        """Snapshot of the TRANSACTION.SUCCESS notification: every retry and duplicate carries
        the same id and content (new signature headers and AEAD nonce each time)."""
        resource = self._transaction(order)
        event_id = str(uuid.uuid4())
        created = simkit.now()
        url = order.notify_url

        async def send(http: aiohttp.ClientSession, _: SimOrder) -> bool:
            body = envelope.build_notification(
                apiv3_key=self.keys.apiv3_key,
                event_id=event_id,
                create_time=created,
                event_type=p.EVENT_TRANSACTION_SUCCESS,
                summary="支付成功",
                original_type="transaction",
                resource=resource,
            )
            return await self._post_notification(http, url, body, p.EVENT_TRANSACTION_SUCCESS)

        return send

    def _refund_sender(self, order: SimOrder, refund: SimRefund, url: str) -> simkit.Sender:
        resource: dict[str, Any] = {
            "mchid": order.extra["mchid"],
            "out_trade_no": order.channel_order_id,
            "transaction_id": order.channel_trade_no,
            "out_refund_no": refund.channel_refund_id,
            "refund_id": refund.refund_no,
            "refund_status": refund.status,
            "user_received_account": "支付用户零钱",
            "amount": {
                "total": order.amount,
                "refund": refund.amount,
                "payer_total": order.amount,
                "payer_refund": refund.amount,
            },
        }
        if refund.completed_at is not None:
            resource["success_time"] = envelope.format_time(refund.completed_at)
        event_id = str(uuid.uuid4())
        created = simkit.now()
        event_type = {
            p.RefundStatus.SUCCESS: p.EVENT_REFUND_SUCCESS,
            p.RefundStatus.ABNORMAL: p.EVENT_REFUND_ABNORMAL,
        }.get(p.RefundStatus(refund.status), p.EVENT_REFUND_CLOSED)

        async def send(http: aiohttp.ClientSession, _: SimOrder) -> bool:
            body = envelope.build_notification(
                apiv3_key=self.keys.apiv3_key,
                event_id=event_id,
                create_time=created,
                event_type=event_type,
                summary="退款成功" if event_type == p.EVENT_REFUND_SUCCESS else "退款异常",
                original_type="refund",
                resource=resource,
            )
            return await self._post_notification(http, url, body, event_type)

        return send

    # ---- bills ---------------------------------------------------------------------------
    def render_bill(self, day: date, bill_type: str, mchid: str) -> bytes | None:
        """The trade bill of one China day, with the statement faults applied; None when it
        has no rows."""
        faults = self.core.statement_faults
        writer = bill.BillWriter()
        lines = [writer.header()]
        payments = bill_type in ("ALL", "SUCCESS")
        refunds = bill_type in ("ALL", "REFUND")
        orders = sorted(
            (o for o in self.core.orders.values() if o.extra.get("mchid") == mchid),
            key=lambda o: o.paid_at or o.created_at,
        )
        for order in orders:
            if order.channel_order_id in faults.missing:
                continue
            common = {
                "appid": str(order.extra["appid"]),
                "mchid": mchid,
                "transaction_id": order.channel_trade_no,
                "out_trade_no": order.channel_order_id,
                "openid": str(order.extra.get("openid") or ""),
                "description": order.description,
            }
            if payments and order.paid_at is not None and china_date(order.paid_at) == day:
                lines.append(
                    writer.payment(
                        bill.BillPayment(
                            paid_at=order.paid_at,
                            trade_state=faults.status.get(order.channel_order_id, "SUCCESS"),
                            amount=faults.amount.get(order.channel_order_id, order.amount),
                            **common,
                        )
                    )
                )
            if refunds:
                for refund in order.refunds.values():
                    if china_date(refund.created_at) != day:
                        continue
                    lines.append(
                        writer.refund(
                            bill.BillRefund(
                                refunded_at=refund.created_at,
                                refund_id=refund.refund_no,
                                out_refund_no=refund.channel_refund_id,
                                refund=refund.amount,
                                refund_status=refund.status,
                                **common,
                            )
                        )
                    )
        if payments:
            moment = china_midnight(day) + timedelta(hours=12)
            for extra in faults.extra:
                lines.append(
                    writer.payment(
                        bill.BillPayment(
                            paid_at=moment,
                            appid="wx0000000000000000",
                            mchid=mchid,
                            transaction_id="4200" + day.strftime("%Y%m%d") + _digits(16),
                            out_trade_no=str(extra["channel_order_id"]),
                            openid="",
                            trade_state="SUCCESS",
                            amount=int(extra["amount"]),
                            description="",
                        )
                    )
                )
        if writer.rows == 0:
            return None
        lines.extend(writer.totals())
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    async def _tradebill(
        self, request: web.Request, merchant: Merchant, body: bytes
    ) -> web.Response:
        try:
            day = date.fromisoformat(request.query.get("bill_date", ""))
        except ValueError:
            raise ApiError(p.PARAM_ERROR, "bill_date 格式错误, 应为 YYYY-MM-DD") from None
        if day > china_date(simkit.now()):
            raise ApiError(p.PARAM_ERROR, "账单日期不能晚于今天")
        bill_type = request.query.get("bill_type", "ALL")
        if bill_type not in ("ALL", "SUCCESS", "REFUND"):
            raise ApiError(p.PARAM_ERROR, "bill_type 只能是 ALL、SUCCESS 或 REFUND")
        tar_type = request.query.get("tar_type")
        if tar_type not in (None, "GZIP"):
            raise ApiError(p.PARAM_ERROR, "tar_type 只能是 GZIP")
        content = self.render_bill(day, bill_type, merchant.mchid)
        if content is None:
            raise ApiError(p.NO_STATEMENT_EXIST, "账单文件不存在")
        if tar_type == "GZIP":
            content = gzip.compress(content, mtime=0)
        now = time.monotonic()
        for token in [t for t, b in self.bills.items() if b.expires < now]:
            del self.bills[token]
        token = secrets.token_urlsafe(24)
        self.bills[token] = _Bill(content, merchant.mchid, now + BILL_TOKEN_TTL_S)
        return self._answer(
            200,
            {
                "hash_type": "SHA1",
                "hash_value": hashlib.sha1(content).hexdigest(),  # noqa: S324 - the real API's
                "download_url": f"{simkit.public_base(request)}{p.PATH_BILLDOWNLOAD}?token={token}",
            },
        )

    async def _billdownload(
        self, request: web.Request, merchant: Merchant, body: bytes
    ) -> web.Response:
        bill = self.bills.get(request.query.get("token", ""))
        if bill is None or bill.expires < time.monotonic() or bill.mchid != merchant.mchid:
            raise ApiError(p.PARAM_ERROR, "token 无效或已过期")
        return web.Response(body=bill.content, content_type="application/octet-stream")

    # ---- platform certificates -----------------------------------------------------------
    async def _certificates(
        self, request: web.Request, merchant: Merchant, body: bytes
    ) -> web.Response:
        cert = self.keys.platform_cert
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        nonce = envelope.new_aead_nonce()
        return self._answer(
            200,
            {
                "data": [
                    {
                        "serial_no": self.keys.platform_serial,
                        "effective_time": envelope.format_time(cert.not_valid_before_utc),
                        "expire_time": envelope.format_time(cert.not_valid_after_utc),
                        "encrypt_certificate": {
                            "algorithm": envelope.ALGORITHM_AES_GCM,
                            "nonce": nonce,
                            "associated_data": "certificate",
                            "ciphertext": envelope.aes_gcm_encrypt(
                                self.keys.apiv3_key, nonce, "certificate", pem
                            ),
                        },
                    }
                ]
            },
        )

    # ---- the payer -----------------------------------------------------------------------
    def _order_by_token(self, request: web.Request) -> SimOrder | None:
        out_trade_no = self.qr_tokens.get(request.match_info["token"])
        return self.core.orders.get(out_trade_no) if out_trade_no else None

    def _page(self, request: web.Request, order: SimOrder, status: int = 200) -> web.Response:
        html = simkit.render_payer_page(
            "WeChat Pay 微信支付 (simulator)",
            order,
            f"¥{fen_to_yuan(order.amount)} {order.currency}",
            f"{simkit.public_base(request)}/qr/{order.extra['token']}",
        )
        return web.Response(text=html, content_type="text/html", status=status)

    async def _payer_get(self, request: web.Request) -> web.Response:
        order = self._order_by_token(request)
        if order is None:
            return web.Response(text="二维码无效 (unknown QR code)", status=404)
        return self._page(request, order)

    def _expired(self, order: SimOrder) -> bool:
        expire = order.extra.get("time_expire")
        return bool(expire) and simkit.now() > envelope.parse_time(str(expire))

    async def _payer_post(self, request: web.Request) -> web.Response:
        wants_json = request.content_type == "application/json"
        action = await simkit.read_payer_action(request)
        order = self._order_by_token(request)
        if order is None:
            if wants_json:
                return web.json_response({"error": "unknown QR code"}, status=404)
            return web.Response(text="二维码无效 (unknown QR code)", status=404)
        if action is None:
            if wants_json:
                return web.json_response({"error": "action must be pay or cancel"}, status=400)
            return web.Response(text="action must be pay or cancel", status=400)
        error: str | None = None
        if order.status != p.TradeState.NOTPAY:
            error = f"order is {order.status}"
        elif self._expired(order):
            error = "二维码已过期 (the order expired)"
        elif action == "pay":
            order.status = p.TradeState.SUCCESS.value
            order.extra["trade_state_desc"] = p.TRADE_STATE_DESC[p.TradeState.SUCCESS]
            order.paid_at = simkit.now()
            order.extra["openid"] = "o" + secrets.token_urlsafe(20)[:27]
            log.info("sim_wechat_paid", out_trade_no=order.channel_order_id)
            self.core.notify(order, self._transaction_sender(order))
        else:
            order.status = p.TradeState.PAYERROR.value
            order.extra["trade_state_desc"] = "用户取消支付"
            log.info("sim_wechat_payer_cancelled", out_trade_no=order.channel_order_id)
        status = 409 if error else 200
        if wants_json:
            answer: dict[str, Any] = {
                "out_trade_no": order.channel_order_id,
                "trade_state": order.status,
            }
            if error:
                answer["error"] = error
            return web.json_response(answer, status=status)
        return self._page(request, order, status)


SIMULATOR = web.AppKey("wechat_simulator", WechatSimulator)
"""The simulator instance behind an app from `build_app` (tests reach its state with it)."""


def build_app(settings: SimulatorSettings) -> web.Application:
    """The simulator's aiohttp application (mount it with `simkit.mount(parent, "wechat", app)`)."""
    return WechatSimulator(settings).app()
