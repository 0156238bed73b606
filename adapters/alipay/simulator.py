"""Alipay's side of the `alipay` channel: a faithful enough Alipay open API for development and
tests, mounted at `/sim/alipay`.

Endpoints (relative to the mount point):

- `GET|POST /gateway.do`: the open API. Parameters come from the query string and/or a form
  body (python-alipay-sdk sends everything in the query string with GET; our adapter posts a
  form). The request signature is checked with the application's public key
  (`config/keys/alipay/app_public_key.pem`) over every non-empty parameter but `sign`; common
  parameter errors answer 40001 / 40002 with Alipay's `isv.*` sub codes; an unknown method gets
  an unsigned `error_response`. Every other answer is signed with Alipay's private key
  (`alipay_private_key.pem`) over the exact response-node text, HTTP 200 whatever the code.
  Methods: `alipay.trade.precreate`, `alipay.trade.query`, `alipay.trade.close`,
  `alipay.trade.refund`, `alipay.trade.fastpay.refund.query`,
  `alipay.data.dataservice.bill.downloadurl.query`.
- `GET /qr/{code}`: the payer page behind the `qr_code` (what scanning the QR would open);
  `POST /qr/{code}` with `action=pay|cancel` (form or JSON) acts as the buyer and then sends the
  `trade_status_sync` notification (TRADE_SUCCESS, or TRADE_CLOSED on cancel) to the
  `notify_url` given at precreate, retried until the receiver answers `success` on Alipay's
  schedule (4m, 10m, 10m, 1h, 2h, 6h, 15h, scaled by `notify_time_scale`).
- `GET /bill/{token}`: the statement behind `bill_download_url` (valid 30 seconds, as Alipay's).
- `/control/...`: faults, the order book and statement discrepancies (`adapters.simkit`).

Faults: `core.inject()` runs at the start of every `gateway.do` call; an injected error answers
`code 20000 / isp.unknow-error` (signed, HTTP 200, as Alipay does); an injected timeout sleeps
and then answers normally (the call took effect).

Where the simulator differs from the real channel:

- The trade exists from precreate on, in WAIT_BUYER_PAY. The real Alipay creates it only when
  a buyer scans the code, so its query / close answer ACQ.TRADE_NOT_EXIST until then (the
  adapter handles both). Orders are keyed by `out_trade_no` alone (not per app / merchant),
  and any `app_id` is accepted (its requests must verify with the one application key).
- An unpaid trade past `time_expire` / `timeout_express` (default 2 hours) is closed lazily,
  when next touched, without the TRADE_CLOSED notification the real channel may send for a
  timed-out trade; a close through the API sends no notification (the caller has the answer).
  A payer's cancel does notify TRADE_CLOSED, so that the gateway learns of it.
- Refunds complete synchronously (`fund_change=Y`) and notify on the same trade with
  `out_biz_no`, `refund_fee` (total refunded) and `gmt_refund`; trades never reach
  TRADE_FINISHED (no refund-window expiry).
- The bill is served as one GBK-encoded CSV (`text/csv; charset=GBK`), not as the real zip of
  GBK CSVs (detail + summary); its detail table has the real columns and `#` header and footer
  lines. It lists the payments *paid* and the refunds *completed* on the bill date, in China
  time (UTC+8), and the current day's bill is available at once (the real one only for past
  days, from the next morning). Only daily `trade` bills exist. A `status` statement fault is
  written into the `业务类型` column (normally 交易 / 退款), since the bill has no status column.
- Only RSA2 in public-key mode (no certificate mode, no AES content encryption, no RSA1).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.alipay import bill
from adapters.alipay import protocol as p
from adapters.chinatime import CHINA_TZ, china_date, china_midnight
from adapters.kernel.crypto import load_private_key, load_public_key
from adapters.money import fen_to_yuan, yuan_to_fen
from adapters.simkit import (
    FaultAction,
    Sender,
    SimOrder,
    SimRefund,
    SimulatorCore,
    SimulatorSettings,
    now,
    public_base,
    read_payer_action,
    render_payer_page,
)

log = structlog.get_logger("simulator.alipay")

ADAPTER = "alipay"
SELLER_ID = "2088102177846880"
"""The simulated merchant's Alipay user id (`seller_id`, the bill's account)."""
MAX_AMOUNT = 100_000_000_00
"""100,000,000.00 yuan: Alipay's ceiling for one trade."""
DEFAULT_EXPIRY = timedelta(hours=2)
BILL_LINK_TTL = timedelta(seconds=30)
FEE_PER_MILLE = 6
"""The simulated service fee: 0.6% of each payment, refunded pro rata with refunds."""


@dataclass(frozen=True, slots=True)
class SimulatorKeys:
    alipay_private: rsa.RSAPrivateKey
    """Alipay's own key: signs responses and notifications."""
    app_public: rsa.RSAPublicKey
    """The application's public key, as uploaded to the open platform: verifies requests."""


def load_keys(config_dir: str) -> SimulatorKeys:
    folder = Path(config_dir) / "keys" / ADAPTER
    return SimulatorKeys(
        alipay_private=load_private_key((folder / "alipay_private_key.pem").read_bytes()),
        app_public=load_public_key((folder / "app_public_key.pem").read_bytes()),
    )


def _ok(**fields: Any) -> dict[str, Any]:
    return {"code": p.CODE_SUCCESS, "msg": p.CODE_MESSAGES[p.CODE_SUCCESS], **fields}


def _fail(code: str, sub_code: str, detail: str = "", **fields: Any) -> dict[str, Any]:
    message = p.SUB_MESSAGES.get(sub_code, sub_code)
    return {
        "code": code,
        "msg": p.CODE_MESSAGES.get(code, "Business Failed"),
        "sub_code": sub_code,
        "sub_msg": f"{message}: {detail}" if detail else message,
        **fields,
    }


def _business(sub_code: str, detail: str = "", **fields: Any) -> dict[str, Any]:
    return _fail(p.CODE_BUSINESS, sub_code, detail, **fields)


def _trade_no(moment: datetime) -> str:
    """28 digits like Alipay's: the China date, 22001, then 15 random digits."""
    day = moment.astimezone(CHINA_TZ).strftime("%Y%m%d")
    return f"{day}22001{secrets.randbelow(10**15):015d}"


def _yuan_of(value: Any) -> int:
    """A biz_content amount (a yuan string, or a JSON number as some SDKs send) in fen."""
    if isinstance(value, bool):
        raise ValueError("not an amount")
    if isinstance(value, int):
        return value * 100
    if isinstance(value, float):
        return yuan_to_fen(repr(value))
    if isinstance(value, str):
        return yuan_to_fen(value)
    raise ValueError("not an amount")


def _expiry(biz: Mapping[str, Any], created: datetime) -> datetime:
    """`time_expire` ("yyyy-MM-dd HH:mm:ss", China time) or `timeout_express` ("90m", "2h",
    "1d", "1c" = the end of today); ValueError when malformed."""
    time_expire = biz.get("time_expire")
    if time_expire:
        return p.parse_time(str(time_expire))
    express = str(biz.get("timeout_express") or "")
    if not express:
        return created + DEFAULT_EXPIRY
    number, unit = express[:-1], express[-1:]
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"bad timeout_express {express!r}")
    count = int(number)
    if unit == "m":
        return created + timedelta(minutes=count)
    if unit == "h":
        return created + timedelta(hours=count)
    if unit == "d":
        return created + timedelta(days=count)
    if unit == "c":
        return china_midnight(china_date(created)) + timedelta(days=1)
    raise ValueError(f"bad timeout_express {express!r}")


def _service_fee(amount: int) -> int:
    return (amount * FEE_PER_MILLE + 500) // 1000


def _chinese_day(day: date) -> str:
    return f"{day.year}年{day.month:02d}月{day.day:02d}日"


def _refunded(order: SimOrder) -> int:
    return sum(r.amount for r in order.refunds.values() if r.status == p.REFUND_SUCCESS)


Handler = Callable[[web.Request, dict[str, str], dict[str, Any]], dict[str, Any]]


class AlipaySimulator:
    def __init__(self, core: SimulatorCore, keys: SimulatorKeys) -> None:
        self.core = core
        self.keys = keys
        self.by_qr: dict[str, str] = {}
        self.by_trade_no: dict[str, str] = {}
        self.bill_links: dict[str, tuple[date, datetime]] = {}
        self._handlers: dict[str, Handler] = {
            p.PRECREATE: self._precreate,
            p.QUERY: self._query,
            p.CLOSE: self._close,
            p.REFUND: self._refund,
            p.REFUND_QUERY: self._refund_query,
            p.BILL_URL_QUERY: self._bill_url,
        }

    # ---- the open API -------------------------------------------------------------------
    async def gateway(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        method = params.get("method", "")
        if not method:
            return self._respond("error_response", _fail(p.CODE_MISSING, "isv.missing-method"))
        if method not in self._handlers:
            return self._respond("error_response", _fail(p.CODE_INVALID, "isv.invalid-method"))
        name = p.response_key(method)
        action = await self.core.inject()
        if action is FaultAction.ERROR:
            return self._respond(name, _fail(p.CODE_UNAVAILABLE, p.SUB_UNKNOWN_ERROR))
        problem = self._check_common(params)
        if problem is not None:
            log.info("sim_alipay_request_refused", method=method, sub_code=problem["sub_code"])
            return self._respond(name, problem)
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            biz = None
        if not isinstance(biz, dict):
            return self._respond(
                name, _business(p.SUB_INVALID_PARAMETER, "biz_content is not a JSON object")
            )
        node = self._handlers[method](request, params, biz)
        return self._respond(name, node)

    async def _params(self, request: web.Request) -> dict[str, str]:
        params: dict[str, str] = {}
        for key, value in request.query.items():
            params.setdefault(key, value)
        if request.method == "POST" and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            for key, field in form.items():
                if isinstance(field, str):
                    params.setdefault(key, field)
        return params

    def _check_common(self, params: Mapping[str, str]) -> dict[str, Any] | None:
        if not params.get("app_id"):
            return _fail(p.CODE_MISSING, "isv.missing-app-id")
        if not params.get("sign"):
            return _fail(p.CODE_MISSING, "isv.missing-signature")
        sign_type = params.get("sign_type")
        if not sign_type:
            return _fail(p.CODE_MISSING, "isv.missing-signature-type")
        if sign_type != p.SIGN_TYPE:
            return _fail(p.CODE_INVALID, "isv.invalid-signature-type")
        timestamp = params.get("timestamp")
        if not timestamp:
            return _fail(p.CODE_MISSING, "isv.missing-timestamp")
        try:
            p.parse_time(timestamp)
        except ValueError:
            return _fail(p.CODE_INVALID, "isv.invalid-timestamp")
        if params.get("charset", p.CHARSET).lower() not in ("utf-8", "utf8"):
            return _fail(p.CODE_INVALID, "isv.invalid-charset")
        if params.get("format", p.FORMAT).upper() != p.FORMAT:
            return _fail(p.CODE_INVALID, "isv.invalid-format")
        if not p.verify_request(params, self.keys.app_public):
            return _fail(p.CODE_INVALID, "isv.invalid-signature")
        return None

    def _respond(self, name: str, node: Mapping[str, Any]) -> web.Response:
        key = None if name == "error_response" else self.keys.alipay_private
        return web.Response(
            body=p.encode_response(name, node, key).encode("utf-8"),
            content_type="application/json",
            charset="utf-8",
        )

    # ---- order book ---------------------------------------------------------------------
    def _find(self, biz: Mapping[str, Any]) -> SimOrder | None:
        out_trade_no = biz.get("out_trade_no")
        if not out_trade_no and biz.get("trade_no"):
            out_trade_no = self.by_trade_no.get(str(biz["trade_no"]))
        order = self.core.orders.get(str(out_trade_no)) if out_trade_no else None
        if order is not None:
            self._refresh(order)
        return order

    def _refresh(self, order: SimOrder) -> None:
        """Close an unpaid trade whose time is up."""
        if order.status != p.WAIT_BUYER_PAY:
            return
        expires = datetime.fromisoformat(order.extra["time_expire"])
        if now() >= expires:
            order.status = p.TRADE_CLOSED
            order.closed_at = expires

    def _precreate(
        self, request: web.Request, params: dict[str, str], biz: dict[str, Any]
    ) -> dict[str, Any]:
        out_trade_no = biz.get("out_trade_no")
        subject = biz.get("subject")
        if not isinstance(out_trade_no, str) or not 0 < len(out_trade_no) <= 64:
            return _business(p.SUB_INVALID_PARAMETER, "out_trade_no")
        if not isinstance(subject, str) or not 0 < len(subject) <= 256:
            return _business(p.SUB_INVALID_PARAMETER, "subject")
        try:
            amount = _yuan_of(biz.get("total_amount"))
        except ValueError:
            return _business(p.SUB_INVALID_PARAMETER, "total_amount")
        if amount < 1:
            return _business(p.SUB_INVALID_PARAMETER, "total_amount")
        if amount > MAX_AMOUNT:
            return _business(p.SUB_TOTAL_FEE_EXCEED)
        created = now()
        try:
            expires = _expiry(biz, created)
        except ValueError as exc:
            return _business(p.SUB_INVALID_PARAMETER, str(exc))
        existing = self._find(biz)
        if existing is not None:
            if existing.status in (p.TRADE_SUCCESS, p.TRADE_FINISHED):
                return _business(p.SUB_TRADE_HAS_SUCCESS, out_trade_no=out_trade_no)
            if existing.status == p.TRADE_CLOSED:
                return _business(p.SUB_TRADE_HAS_CLOSE, out_trade_no=out_trade_no)
            if existing.amount != amount or existing.description != subject:
                return _business(p.SUB_CONTEXT_INCONSISTENT, out_trade_no=out_trade_no)
            # Alipay's precreate is idempotent by out_trade_no: the same QR code again
            return _ok(out_trade_no=out_trade_no, qr_code=existing.extra["qr_code"])
        if expires <= created:
            return _business(p.SUB_INVALID_PARAMETER, "time_expire is in the past")
        code = "bax0" + secrets.token_hex(10)
        qr_code = f"{public_base(request)}/qr/{code}"
        trade_no = _trade_no(created)
        order = SimOrder(
            channel_order_id=out_trade_no,
            amount=amount,
            currency="CNY",
            description=subject,
            notify_url=params.get("notify_url", ""),
            status=p.WAIT_BUYER_PAY,
            channel_trade_no=trade_no,
            created_at=created,
            extra={
                "app_id": params["app_id"],
                "qr_code": qr_code,
                "time_expire": expires.isoformat(),
            },
        )
        self.core.orders[out_trade_no] = order
        self.by_qr[code] = out_trade_no
        self.by_trade_no[trade_no] = out_trade_no
        log.info("sim_alipay_precreate", out_trade_no=out_trade_no, amount=amount)
        return _ok(out_trade_no=out_trade_no, qr_code=qr_code)

    def _query(
        self, request: web.Request, params: dict[str, str], biz: dict[str, Any]
    ) -> dict[str, Any]:
        order = self._find(biz)
        if order is None:
            return _business(p.SUB_TRADE_NOT_EXIST, out_trade_no=biz.get("out_trade_no"))
        yuan = fen_to_yuan(order.amount)
        paid = order.paid_at is not None
        node = _ok(
            trade_no=order.channel_trade_no,
            out_trade_no=order.channel_order_id,
            trade_status=order.status,
            total_amount=yuan,
            buyer_pay_amount=yuan if paid else "0.00",
            point_amount="0.00",
            invoice_amount=yuan if paid else "0.00",
            receipt_amount=yuan if paid else "0.00",
        )
        if order.paid_at is not None:
            node.update(
                buyer_logon_id=order.extra["buyer_logon_id"],
                buyer_user_id=order.extra["buyer_id"],
                send_pay_date=p.format_time(order.paid_at),
                fund_bill_list=[{"fund_channel": "ALIPAYACCOUNT", "amount": yuan}],
            )
        return node

    def _close(
        self, request: web.Request, params: dict[str, str], biz: dict[str, Any]
    ) -> dict[str, Any]:
        order = self._find(biz)
        if order is None:
            return _business(p.SUB_TRADE_NOT_EXIST)
        if order.status != p.WAIT_BUYER_PAY:
            return _business(p.SUB_TRADE_STATUS_ERROR, out_trade_no=order.channel_order_id)
        order.status = p.TRADE_CLOSED
        order.closed_at = now()
        return _ok(trade_no=order.channel_trade_no, out_trade_no=order.channel_order_id)

    def _refund(
        self, request: web.Request, params: dict[str, str], biz: dict[str, Any]
    ) -> dict[str, Any]:
        zero = {"refund_fee": "0.00", "send_back_fee": "0.00"}
        order = self._find(biz)
        if order is None:
            return _business(p.SUB_TRADE_NOT_EXIST, **zero)
        ids = {"trade_no": order.channel_trade_no, "out_trade_no": order.channel_order_id}
        try:
            amount = _yuan_of(biz.get("refund_amount"))
        except ValueError:
            return _business(p.SUB_INVALID_PARAMETER, "refund_amount", **ids, **zero)
        if amount < 1:
            return _business(p.SUB_REFUND_FEE_ERR, **ids, **zero)
        given_id = biz.get("out_request_no")
        request_no = str(given_id) if given_id else order.channel_order_id
        refunded = _refunded(order)
        previous = order.refunds.get(request_no)
        if previous is not None:
            if previous.amount != amount:
                return _business(p.SUB_DISCORDANT_REPEAT_REQUEST, **ids, **zero)
            # a repeat of a refund that was made: no money moves this time
            return _ok(
                **ids,
                buyer_logon_id=order.extra.get("buyer_logon_id", ""),
                buyer_user_id=order.extra.get("buyer_id", ""),
                fund_change="N",
                refund_fee=fen_to_yuan(refunded),
                send_back_fee="0.00",
                gmt_refund_pay=p.format_time(previous.completed_at or previous.created_at),
            )
        if order.status == p.WAIT_BUYER_PAY:
            return _business(p.SUB_TRADE_STATUS_ERROR, **ids, **zero)
        if order.status == p.TRADE_FINISHED:
            return _business(p.SUB_TRADE_HAS_FINISHED, **ids, **zero)
        if order.status == p.TRADE_CLOSED:
            return _business(p.SUB_TRADE_HAS_CLOSE, **ids, **zero)
        if not given_id and amount != order.amount:
            return _business(p.SUB_REFUND_AMT_NOT_EQUAL_TOTAL, **ids, **zero)
        if refunded + amount > order.amount:
            return _business(p.SUB_REFUND_FEE_ERR, **ids, **zero)
        moment = now()
        refund = SimRefund(
            channel_refund_id=request_no,
            refund_no=secrets.token_hex(8),
            amount=amount,
            status=p.REFUND_SUCCESS,
            created_at=moment,
            completed_at=moment,
        )
        order.refunds[request_no] = refund
        refunded += amount
        if refunded == order.amount:
            order.status = p.TRADE_CLOSED
            order.closed_at = moment
        log.info("sim_alipay_refund", out_trade_no=order.channel_order_id, amount=amount)
        self._notify(order, self._refund_fields(order, refund, refunded))
        return _ok(
            **ids,
            buyer_logon_id=order.extra.get("buyer_logon_id", ""),
            buyer_user_id=order.extra.get("buyer_id", ""),
            fund_change="Y",
            refund_fee=fen_to_yuan(refunded),
            send_back_fee=fen_to_yuan(amount),
            gmt_refund_pay=p.format_time(moment),
        )

    def _refund_query(
        self, request: web.Request, params: dict[str, str], biz: dict[str, Any]
    ) -> dict[str, Any]:
        if not biz.get("out_request_no"):
            return _business(p.SUB_INVALID_PARAMETER, "out_request_no")
        order = self._find(biz)
        if order is None:
            return _business(p.SUB_TRADE_NOT_EXIST)
        ids = {"trade_no": order.channel_trade_no, "out_trade_no": order.channel_order_id}
        refund = order.refunds.get(str(biz["out_request_no"]))
        if refund is None:
            return _ok(**ids)  # Alipay: no refund data means no refund happened
        return _ok(
            **ids,
            out_request_no=refund.channel_refund_id,
            total_amount=fen_to_yuan(order.amount),
            refund_amount=fen_to_yuan(refund.amount),
            refund_status=refund.status,
            gmt_refund_pay=p.format_time(refund.completed_at or refund.created_at),
        )

    def _bill_url(
        self, request: web.Request, params: dict[str, str], biz: dict[str, Any]
    ) -> dict[str, Any]:
        if biz.get("bill_type") != bill.BILL_TYPE_TRADE:
            return _business(p.SUB_INVALID_PARAMETER, "bill_type (only trade)")
        try:
            day = date.fromisoformat(str(biz.get("bill_date")))
        except ValueError:
            return _business(p.SUB_INVALID_PARAMETER, "bill_date (yyyy-MM-dd)")
        if day > china_date(now()):
            return _business(p.SUB_BILL_NOT_EXIST)
        token = secrets.token_urlsafe(18)
        self.bill_links = {k: v for k, v in self.bill_links.items() if v[1] > now()}
        self.bill_links[token] = (day, now() + BILL_LINK_TTL)
        return _ok(bill_download_url=f"{public_base(request)}/bill/{token}")

    # ---- the payer ----------------------------------------------------------------------
    def _order_for_code(self, request: web.Request) -> SimOrder:
        out_trade_no = self.by_qr.get(request.match_info["code"])
        order = self.core.orders.get(out_trade_no) if out_trade_no else None
        if order is None:
            raise web.HTTPNotFound(text="unknown QR code")
        self._refresh(order)
        return order

    async def payer_page(self, request: web.Request) -> web.Response:
        order = self._order_for_code(request)
        url = f"{public_base(request)}/qr/{request.match_info['code']}"
        page = render_payer_page(
            "Alipay (simulator)", order, f"¥{fen_to_yuan(order.amount)}", action_url=url
        )
        return web.Response(text=page, content_type="text/html")

    async def payer_action(self, request: web.Request) -> web.Response:
        order = self._order_for_code(request)
        action = await read_payer_action(request)
        wants_json = request.content_type == "application/json"
        if action is None:
            return web.json_response({"error": "action must be pay or cancel"}, status=400)
        if order.status != p.WAIT_BUYER_PAY:
            body = {"error": f"the trade is {order.status}", "trade_status": order.status}
            return web.json_response(body, status=409)
        moment = now()
        if action == "pay":
            order.status = p.TRADE_SUCCESS
            order.paid_at = moment
            order.extra["buyer_id"] = f"2088{secrets.randbelow(10**12):012d}"
            order.extra["buyer_logon_id"] = "buy***@example.com"
        else:
            order.status = p.TRADE_CLOSED
            order.closed_at = moment
        log.info("sim_alipay_payer", out_trade_no=order.channel_order_id, action=action)
        self._notify(order, self._trade_fields(order))
        if wants_json:
            return web.json_response(
                {
                    "out_trade_no": order.channel_order_id,
                    "trade_no": order.channel_trade_no,
                    "trade_status": order.status,
                }
            )
        return await self.payer_page(request)

    # ---- notifications ------------------------------------------------------------------
    def _base_fields(self, order: SimOrder, status: str) -> dict[str, str]:
        app_id = str(order.extra["app_id"])
        return {
            "notify_type": p.NOTIFY_TYPE,
            "notify_id": secrets.token_hex(18),
            "app_id": app_id,
            "auth_app_id": app_id,
            "charset": p.CHARSET,
            "version": p.VERSION,
            "trade_no": order.channel_trade_no,
            "out_trade_no": order.channel_order_id,
            "seller_id": SELLER_ID,
            "subject": order.description,
            "trade_status": status,
            "total_amount": fen_to_yuan(order.amount),
            "gmt_create": p.format_time(order.created_at),
        }

    def _paid_fields(self, order: SimOrder) -> dict[str, str]:
        if order.paid_at is None:
            return {}
        yuan = fen_to_yuan(order.amount)
        return {
            "buyer_id": str(order.extra["buyer_id"]),
            "buyer_logon_id": str(order.extra["buyer_logon_id"]),
            "receipt_amount": yuan,
            "invoice_amount": yuan,
            "buyer_pay_amount": yuan,
            "point_amount": "0.00",
            "gmt_payment": p.format_time(order.paid_at),
            "fund_bill_list": json.dumps(
                [{"amount": yuan, "fundChannel": "ALIPAYACCOUNT"}], separators=(",", ":")
            ),
        }

    def _trade_fields(self, order: SimOrder) -> dict[str, str]:
        fields = self._base_fields(order, order.status)
        fields.update(self._paid_fields(order))
        if order.closed_at is not None:
            fields["gmt_close"] = p.format_time(order.closed_at)
        return fields

    def _refund_fields(self, order: SimOrder, refund: SimRefund, refunded: int) -> dict[str, str]:
        fields = self._trade_fields(order)
        fields.update(
            out_biz_no=refund.channel_refund_id,
            refund_fee=fen_to_yuan(refunded),
            gmt_refund=p.format_time_ms(refund.completed_at or refund.created_at),
        )
        return fields

    def _notify(self, order: SimOrder, fields: dict[str, str]) -> None:
        if not order.notify_url:
            return
        self.core.notify(order, self._sender(fields))

    def _sender(self, fields: Mapping[str, str]) -> Sender:
        """One notification (a snapshot of the event), signed afresh at every attempt with a
        new notify_time, as Alipay does."""
        key = self.keys.alipay_private

        async def send(http: aiohttp.ClientSession, order: SimOrder) -> bool:
            data = dict(fields)
            data["notify_time"] = p.format_time(now())
            signed = p.sign_notification(data, key)
            async with http.post(
                order.notify_url,
                data=urlencode(signed).encode("ascii"),
                headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
                allow_redirects=False,
            ) as resp:
                text = await resp.text(errors="replace")
                return resp.status == 200 and text.strip() == "success"

        return send

    # ---- statements ---------------------------------------------------------------------
    async def bill(self, request: web.Request) -> web.StreamResponse:
        link = self.bill_links.get(request.match_info["token"])
        if link is None or link[1] <= now():
            raise web.HTTPNotFound(text="the bill link is unknown or expired")
        day = link[0]
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=GBK",
                "Content-Disposition": (
                    f'attachment; filename="{SELLER_ID}_{day:%Y%m%d}_trade_detail.csv"'
                ),
            }
        )
        await response.prepare(request)
        for line in self.bill_lines(day):
            await response.write(line.encode(bill.BILL_ENCODING, errors="replace"))
        await response.write_eof()
        return response

    def bill_lines(self, day: date) -> Iterator[str]:
        """The detail CSV of the trade bill for one China date, with the statement faults."""
        faults = self.core.statement_faults
        rows: list[str] = []
        payments = refunds = 0
        for order in list(self.core.orders.values()):
            order_id = order.channel_order_id
            if order_id in faults.missing:
                continue
            logon = str(order.extra.get("buyer_logon_id", ""))
            if order.paid_at is not None and china_date(order.paid_at) == day:
                amount = faults.amount.get(order_id, order.amount)
                rows.append(
                    self._bill_row(
                        order.channel_trade_no,
                        order_id,
                        faults.status.get(order_id, bill.BIZ_TYPE_TRADE),
                        order.description,
                        order.created_at,
                        order.paid_at,
                        logon,
                        amount,
                        "",
                        -_service_fee(amount),
                    )
                )
                payments += 1
            for refund in order.refunds.values():
                done = refund.completed_at
                if refund.status != p.REFUND_SUCCESS or done is None:
                    continue
                if china_date(done) != day:
                    continue
                rows.append(
                    self._bill_row(
                        order.channel_trade_no,
                        order_id,
                        bill.BIZ_TYPE_REFUND,
                        order.description,
                        order.created_at,
                        done,
                        logon,
                        -refund.amount,
                        refund.channel_refund_id,
                        _service_fee(refund.amount),
                    )
                )
                refunds += 1
        for extra in faults.extra:
            moment = china_midnight(day) + timedelta(hours=12)
            amount = int(extra["amount"])
            rows.append(
                self._bill_row(
                    _trade_no(moment),
                    str(extra["channel_order_id"]),
                    bill.BIZ_TYPE_TRADE,
                    "extra",
                    moment,
                    moment,
                    "ext***@example.com",
                    amount,
                    "",
                    -_service_fee(amount),
                )
            )
            payments += 1
        next_day = day + timedelta(days=1)
        yield bill.BILL_TITLE + "\r\n"
        yield f"#账号：[{SELLER_ID}0156]\r\n"
        yield (
            f"#起始日期：[{_chinese_day(day)} 00:00:00]   "
            f"终止日期：[{_chinese_day(next_day)} 00:00:00]\r\n"
        )
        yield bill.BILL_LIST_START + "\r\n"
        yield ",".join(bill.BILL_COLUMNS) + "\r\n"
        yield from rows
        yield bill.BILL_LIST_END + "\r\n"
        yield f"#交易合计：{payments}笔，退款合计：{refunds}笔\r\n"
        exported = now().astimezone(CHINA_TZ)
        yield f"#导出时间：[{_chinese_day(exported.date())} {exported:%H:%M:%S}]\r\n"

    @staticmethod
    def _bill_row(
        trade_no: str,
        out_trade_no: str,
        biz_type: str,
        subject: str,
        created: datetime,
        finished: datetime,
        buyer: str,
        amount: int,
        refund_no: str,
        fee: int,
    ) -> str:
        yuan = bill.signed_yuan(amount)
        zero = "0.00"
        return bill.bill_row(
            [
                trade_no,
                out_trade_no,
                biz_type,
                " ".join(subject.split()),
                p.format_time(created),
                p.format_time(finished),
                "",
                "",
                "",
                "",
                buyer,
                yuan,
                yuan,
                zero,
                zero,
                zero,
                zero,
                zero,
                "",
                zero,
                zero,
                refund_no,
                bill.signed_yuan(fee),
                zero,
                "",
            ]
        )


SIMULATOR = web.AppKey("alipay_simulator", AlipaySimulator)


def build_app(settings: SimulatorSettings) -> web.Application:
    """The simulated Alipay, to be mounted with `simkit.mount(parent, "alipay", app)`."""
    core = SimulatorCore(ADAPTER, settings, p.NOTIFY_SCHEDULE_S)
    sim = AlipaySimulator(core, load_keys(settings.config_dir))
    app = web.Application()
    app[SIMULATOR] = sim
    app.router.add_get(p.GATEWAY_PATH, sim.gateway, allow_head=False)
    app.router.add_post(p.GATEWAY_PATH, sim.gateway)
    app.router.add_get("/qr/{code}", sim.payer_page)
    app.router.add_post("/qr/{code}", sim.payer_action)
    app.router.add_get("/bill/{token}", sim.bill)
    core.add_control_routes(app)
    return app


__all__ = ["SIMULATOR", "AlipaySimulator", "build_app", "load_keys"]
