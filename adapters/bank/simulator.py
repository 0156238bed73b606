"""The bank's side of the `bank` channel: a simulated acquiring bank with its hosted card page.

It plays the protocol of `adapters.bank.protocol` faithfully: it verifies the merchant's request
signatures (``config/keys/bank/merchant_public.pem``), refuses replayed nonces and stale
timestamps (code 63), signs every answer and notification with the bank's key
(``bank_private.pem``), keeps its order book in a `SimulatorCore`, renders the hosted card page
at the ``pay_url`` it returns, notifies the order's ``notify_url`` after the card holder acts and
after each refund, redelivering on the bank's schedule (15 s, 1 min, 5 min, 30 min, 1 h, 6 h,
times ``notify_time_scale``) until it gets HTTP 200 with ``{"code": "SUCCESS"}``.

Where it differs from a real bank:

- one merchant: any merchant id is accepted with the one development merchant key, and the
  order book is keyed by order number alone;
- the card page takes a bare card number (no expiry, CVV, 3-D Secure); test cards decide the
  issuer's answer (see the protocol); ``4000000000000009`` stays PROCESSING for
  2 s x ``notify_time_scale`` and then approves;
- a decline ends the order (FAILED, notified): real hosted pages often let the card holder try
  another card first, and fail the order only when it expires;
- refunds complete synchronously (SUCCESS) and are notified at once; a real bank may take days;
- the statement of the current day is served at any time (a real bank publishes the previous
  day's after a cut-off, typically 10:00); days in the future are 25 (not ready). Statement
  lines are cut by the UTC+8 day a payment was paid or a refund completed;
- orders expire lazily: an unpaid order past its ``expire_time`` turns CLOSED the next time it
  is looked at; nothing is notified for closes and expiries (as most banks do).

Statement faults (``PUT /sim/bank/control/statement``): ``missing`` drops every line of an
order, ``amount`` and ``status`` (bank vocabulary: SUCCESS, FAILED, ...) change its payment line,
and each ``extra`` line lands on the statement of its optional ``"day"`` (``YYYYMMDD`` or
``YYYY-MM-DD``), by default today's in UTC+8.

Faults (``PUT /sim/bank/control/faults``): an injected error answers HTTP 500 with code 96,
signed; an injected timeout sleeps ``timeout_sleep_s`` and then processes the request normally
(so a create that timed out at the gateway does exist at the bank, as in real life).
"""

from __future__ import annotations

import asyncio
import csv
import html
import io
import re
import secrets
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ValidationError

from adapters import simkit
from adapters.bank import protocol as p
from adapters.chinatime import CHINA_TZ
from adapters.kernel.crypto import load_private_key, load_public_key
from adapters.simkit import FaultAction, SimOrder, SimRefund, SimulatorCore, SimulatorSettings

log = structlog.get_logger("simulator.bank")

PROCESSING_DELAY_S = 2.0
"""How long a PROCESSING test card takes to approve, before `notify_time_scale`."""

_M = TypeVar("_M", bound=BaseModel)
_DAY = re.compile(r"^[0-9]{8}$")
_CHUNK = 16 * 1024


NONCE_WINDOW_S = 900.0


class NonceWindow:
    """The nonces seen in the last `window_s` seconds. Forgetting is amortised O(1) per use
    (oldest first, from a queue): the bank refuses a replayed nonce at any request rate
    without rescanning what it remembers."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()

    def use(self, nonce: str, now: float) -> bool:
        """True for a nonce not seen within the window (it is remembered from now on)."""
        horizon = now - self.window_s
        while self._order and self._order[0][0] <= horizon:
            at, old = self._order.popleft()
            if self._seen.get(old) == at:
                del self._seen[old]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        self._order.append((now, nonce))
        return True

    def __len__(self) -> int:
        return len(self._seen)


class BankSimulator:
    """One simulated bank: its keys, its order book and its handlers."""

    def __init__(self, settings: SimulatorSettings) -> None:
        keys = Path(settings.config_dir) / "keys" / "bank"
        self.merchant_key: rsa.RSAPublicKey = load_public_key(
            (keys / "merchant_public.pem").read_bytes()
        )
        self.bank_key: rsa.RSAPrivateKey = load_private_key(
            (keys / "bank_private.pem").read_bytes()
        )
        self.core = SimulatorCore("bank", settings, p.NOTIFY_RETRY_SCHEDULE_S)
        self.refund_index: dict[str, str] = {}
        """refund_no -> order_no."""
        self._nonces = NonceWindow(NONCE_WINDOW_S)
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- signing --------------------------------------------------------------------------
    def _verify_request(self, request: web.Request, body: bytes) -> str | web.Response:
        """The merchant id of a correctly signed request, or the signed 63 answer."""
        merchant = request.headers.get(p.HEADER_MERCHANT, "")
        timestamp = request.headers.get(p.HEADER_TIMESTAMP, "")
        nonce = request.headers.get(p.HEADER_NONCE, "")
        signature = request.headers.get(p.HEADER_SIGNATURE, "")
        reason = None
        if not merchant or not timestamp.isdigit() or not p.NONCE_PATTERN.match(nonce):
            reason = "missing or malformed signature headers"
        elif abs(time.time() - int(timestamp)) > p.TIMESTAMP_WINDOW_S:
            reason = "timestamp out of window"
        elif not p.verify(
            self.merchant_key,
            p.request_message(request.method, request.raw_path, timestamp, nonce, body),
            signature,
        ):
            reason = "invalid signature"
        elif not self._use_nonce(nonce):
            reason = "nonce replayed"
        if reason is not None:
            log.info("sim_bank_request_refused", reason=reason, path=request.raw_path)
            return self._answer(request, p.RespCode.SECURITY_VIOLATION, message=reason)
        return merchant

    def _use_nonce(self, nonce: str) -> bool:
        return self._nonces.use(nonce, time.monotonic())

    def _signed(
        self, request: web.Request, status: int, body: bytes, content_type: str
    ) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            content_type=content_type,
            headers=self._signature_headers(request, status, body),
        )

    def _signature_headers(self, request: web.Request, status: int, body: bytes) -> dict[str, str]:
        nonce = request.headers.get(p.HEADER_NONCE, "")
        if not p.NONCE_PATTERN.match(nonce):
            nonce = secrets.token_urlsafe(24)
        timestamp = str(int(time.time()))
        message = p.response_message(status, request.raw_path, timestamp, nonce, body)
        return {
            p.HEADER_TIMESTAMP: timestamp,
            p.HEADER_NONCE: nonce,
            p.HEADER_SIGNATURE: p.sign(self.bank_key, message),
        }

    def _answer(
        self,
        request: web.Request,
        code: str,
        *,
        order: SimOrder | None = None,
        refund: tuple[SimOrder, SimRefund] | None = None,
        message: str | None = None,
    ) -> web.Response:
        payload: dict[str, Any] = {"resp_code": code, "resp_msg": message or p.resp_message(code)}
        if order is not None:
            payload["order"] = order_json(order)
        if refund is not None:
            payload["refund"] = refund_json(*refund)
        status = p.HTTP_STATUS_FOR_CODE.get(code, 200)
        return self._signed(request, status, orjson.dumps(payload), "application/json")

    async def _enter(self, request: web.Request, body: bytes) -> str | web.Response:
        """Every API handler starts here: faults, then the request's signature. Returns the
        merchant id, or the answer to give."""
        action = await self.core.inject()
        if action is FaultAction.ERROR:
            return self._answer(request, p.RespCode.SYSTEM_MALFUNCTION)
        verified = self._verify_request(request, body)
        return verified

    def _parse(self, model: type[_M], body: bytes) -> _M | None:
        try:
            return model.model_validate_json(body)
        except ValidationError:
            return None

    # ---- orders ---------------------------------------------------------------------------
    def _order(self, order_no: str) -> SimOrder | None:
        order = self.core.orders.get(order_no)
        if order is not None:
            expire(order)
        return order

    async def create_order(self, request: web.Request) -> web.Response:
        # read first, then act shielded: the bank acts even if the caller gives up waiting
        body = await request.read()
        return await asyncio.shield(self._create_order(request, body))

    async def _create_order(self, request: web.Request, body: bytes) -> web.Response:
        merchant = await self._enter(request, body)
        if isinstance(merchant, web.Response):
            return merchant
        req = self._parse(p.CreateOrderRequest, body)
        if req is None:
            return self._answer(request, p.RespCode.FORMAT_ERROR)
        if req.merchant_id != merchant:
            return self._answer(request, p.RespCode.SECURITY_VIOLATION, message="merchant")
        if req.currency not in p.SUPPORTED_CURRENCIES:
            return self._answer(request, p.RespCode.FORMAT_ERROR, message="currency")
        try:
            p.parse_time(req.expire_time)
        except ValueError:
            return self._answer(request, p.RespCode.FORMAT_ERROR, message="expire_time")
        existing = self._order(req.order_no)
        if existing is not None:
            if existing.extra.get("reserved"):
                return self._answer(request, p.RespCode.INVALID_TRANSACTION, message="closed")
            same = (
                existing.amount == req.amount
                and existing.currency == req.currency
                and existing.extra["merchant_id"] == req.merchant_id
            )
            if not same:
                return self._answer(request, p.RespCode.DUPLICATE_TRANSMISSION)
            return self._answer(request, p.RespCode.APPROVED, order=existing)
        order = SimOrder(
            channel_order_id=req.order_no,
            amount=req.amount,
            currency=req.currency,
            description=req.description,
            notify_url=req.notify_url,
            status=p.OrderStatus.CREATED.value,
            channel_trade_no=simkit.new_trade_no("B"),
            created_at=simkit.now(),
            extra={
                "merchant_id": req.merchant_id,
                "return_url": req.return_url,
                "expire_time": req.expire_time,
                "pay_url": f"{simkit.public_base(request)}/pay/{req.order_no}",
                "resp_code": p.RespCode.IN_PROGRESS.value,
                "payer_ip": req.payer_ip,
            },
        )
        self.core.orders[order.channel_order_id] = order
        log.info("sim_bank_order_created", order=order.channel_order_id, amount=order.amount)
        return self._answer(request, p.RespCode.APPROVED, order=order)

    async def query_order(self, request: web.Request) -> web.Response:
        entered = await self._enter(request, await request.read())
        if isinstance(entered, web.Response):
            return entered
        order = self._order(request.match_info["order_no"])
        if order is None or order.extra.get("reserved"):
            return self._answer(request, p.RespCode.RECORD_NOT_FOUND)
        return self._answer(request, p.RespCode.APPROVED, order=order)

    async def close_order(self, request: web.Request) -> web.Response:
        # read first, then act shielded: the bank acts even if the caller gives up waiting
        body = await request.read()
        return await asyncio.shield(self._close_order(request, body))

    async def _close_order(self, request: web.Request, body: bytes) -> web.Response:
        merchant = await self._enter(request, body)
        if isinstance(merchant, web.Response):
            return merchant
        req = self._parse(p.CloseRequest, body)
        if req is None:
            return self._answer(request, p.RespCode.FORMAT_ERROR)
        order_no = request.match_info["order_no"]
        order = self._order(order_no)
        if order is None:
            # reserve the number: a create arriving late must not open it
            order = reserved_order(order_no, merchant)
            self.core.orders[order_no] = order
            return self._answer(request, p.RespCode.APPROVED, order=order)
        status = p.OrderStatus(order.status)
        if status is p.OrderStatus.CREATED:
            close(order, simkit.now())
        elif status is p.OrderStatus.PROCESSING:
            return self._answer(request, p.RespCode.IN_PROGRESS, order=order)
        elif status is p.OrderStatus.SUCCESS:
            return self._answer(request, p.RespCode.INVALID_TRANSACTION, order=order)
        return self._answer(request, p.RespCode.APPROVED, order=order)

    # ---- refunds --------------------------------------------------------------------------
    async def create_refund(self, request: web.Request) -> web.Response:
        # read first, then act shielded: the bank acts even if the caller gives up waiting
        body = await request.read()
        return await asyncio.shield(self._create_refund(request, body))

    async def _create_refund(self, request: web.Request, body: bytes) -> web.Response:
        merchant = await self._enter(request, body)
        if isinstance(merchant, web.Response):
            return merchant
        req = self._parse(p.RefundRequest, body)
        if req is None:
            return self._answer(request, p.RespCode.FORMAT_ERROR)
        if req.merchant_id != merchant:
            return self._answer(request, p.RespCode.SECURITY_VIOLATION, message="merchant")
        known = self.refund_index.get(req.refund_no)
        if known is not None:
            prior_order = self.core.orders[known]
            prior = prior_order.refunds[req.refund_no]
            if known != req.order_no or prior.amount != req.amount:
                return self._answer(request, p.RespCode.DUPLICATE_TRANSMISSION)
            return self._answer(request, p.RespCode.APPROVED, refund=(prior_order, prior))
        order = self._order(req.order_no)
        if order is None or order.extra.get("reserved"):
            return self._answer(request, p.RespCode.RECORD_NOT_FOUND)
        if order.status != p.OrderStatus.SUCCESS:
            return self._answer(request, p.RespCode.INVALID_TRANSACTION, message="not paid")
        if req.currency != order.currency:
            return self._answer(request, p.RespCode.FORMAT_ERROR, message="currency")
        if refunded(order) + req.amount > order.amount:
            return self._answer(request, p.RespCode.INVALID_AMOUNT)
        now = simkit.now()
        refund = SimRefund(
            channel_refund_id=req.refund_no,  # the merchant's number
            refund_no=simkit.new_trade_no("R"),  # the bank's refund transaction id
            amount=req.amount,
            status=p.RefundStatus.SUCCESS.value,
            created_at=now,
            completed_at=now,
        )
        order.refunds[req.refund_no] = refund
        self.refund_index[req.refund_no] = order.channel_order_id
        log.info("sim_bank_refunded", order=order.channel_order_id, refund=req.refund_no)
        self.core.notify(order, self._refund_sender(order, refund))
        return self._answer(request, p.RespCode.APPROVED, refund=(order, refund))

    async def query_refund(self, request: web.Request) -> web.Response:
        entered = await self._enter(request, await request.read())
        if isinstance(entered, web.Response):
            return entered
        refund_no = request.match_info["refund_no"]
        order_no = self.refund_index.get(refund_no)
        if order_no is None:
            return self._answer(request, p.RespCode.RECORD_NOT_FOUND)
        order = self.core.orders[order_no]
        return self._answer(request, p.RespCode.APPROVED, refund=(order, order.refunds[refund_no]))

    # ---- statement ------------------------------------------------------------------------
    async def statement(self, request: web.Request) -> web.StreamResponse:
        entered = await self._enter(request, await request.read())
        if isinstance(entered, web.Response):
            return entered
        day = request.match_info["day"]
        try:
            if not _DAY.match(day):
                raise ValueError(day)
            datetime.strptime(day, "%Y%m%d")
        except ValueError:
            return self._answer(request, p.RespCode.FORMAT_ERROR, message="day")
        if day > p.china_day(simkit.now()):
            return self._answer(request, p.RespCode.RECORD_NOT_FOUND, message="not ready")
        body = self.statement_csv(day).encode()
        response = web.StreamResponse(
            status=200, headers=self._signature_headers(request, 200, body)
        )
        response.content_type = "text/csv"
        response.charset = "utf-8"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), _CHUNK):
            await response.write(body[start : start + _CHUNK])
        await response.write_eof()
        return response

    def statement_csv(self, day: str) -> str:
        """The day's statement, with the configured statement faults applied."""
        faults = self.core.statement_faults
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(p.STATEMENT_COLUMNS)
        count = payments = refunds = 0
        for order in list(self.core.orders.values()):
            if order.channel_order_id in faults.missing:
                continue
            paid = order.paid_at
            if order.status == p.OrderStatus.SUCCESS and paid and p.china_day(paid) == day:
                amount = faults.amount.get(order.channel_order_id, order.amount)
                writer.writerow(
                    p.statement_row(
                        record_type="PAYMENT",
                        order_no=order.channel_order_id,
                        txn_id=order.channel_trade_no,
                        currency=order.currency,
                        amount=amount,
                        fee=p.fee_for(amount),
                        status=faults.status.get(order.channel_order_id, order.status),
                        resp_code=order.extra["resp_code"],
                        trans_time=paid,
                    )
                )
                count += 1
                payments += amount
            for refund in order.refunds.values():
                done = refund.completed_at
                if refund.status != p.RefundStatus.SUCCESS or done is None:
                    continue
                if p.china_day(done) != day:
                    continue
                writer.writerow(
                    p.statement_row(
                        record_type="REFUND",
                        order_no=order.channel_order_id,
                        txn_id=order.channel_trade_no,
                        refund_no=refund.channel_refund_id,
                        refund_txn_id=refund.refund_no,
                        currency=order.currency,
                        amount=refund.amount,
                        fee=0,
                        status=refund.status,
                        resp_code=p.RespCode.APPROVED.value,
                        trans_time=done,
                    )
                )
                count += 1
                refunds += refund.amount
        noon = datetime.strptime(day + "12", "%Y%m%d%H").replace(tzinfo=CHINA_TZ)
        today = p.china_day(simkit.now())
        for extra in faults.extra:
            if str(extra.get("day", today)).replace("-", "") != day:
                continue
            amount = int(extra["amount"])
            writer.writerow(
                p.statement_row(
                    record_type="PAYMENT",
                    order_no=str(extra["channel_order_id"]),
                    txn_id=simkit.new_trade_no("B"),
                    currency="CNY",
                    amount=amount,
                    fee=p.fee_for(amount),
                    status=p.OrderStatus.SUCCESS.value,
                    resp_code=p.RespCode.APPROVED.value,
                    trans_time=noon,
                )
            )
            count += 1
            payments += amount
        writer.writerow(p.summary_row(count, payments, refunds))
        return out.getvalue()

    # ---- the hosted card page -------------------------------------------------------------
    async def payer_page(self, request: web.Request) -> web.Response:
        order = self._order(request.match_info["order_no"])
        if order is None or order.extra.get("reserved"):
            return web.Response(status=404, text="No such order.")
        return web.Response(text=render_card_page(order), content_type="text/html")

    async def payer_action(self, request: web.Request) -> web.Response:
        wants_json = request.content_type == "application/json"
        order = self._order(request.match_info["order_no"])
        if order is None or order.extra.get("reserved"):
            return _payer_reply(wants_json, 404, None, "No such order.")
        action = await simkit.read_payer_action(request)
        if action is None:
            return _payer_reply(wants_json, 400, order, "action must be pay or cancel")
        if order.status != p.OrderStatus.CREATED:
            return _payer_reply(wants_json, 409, order, f"The order is {order.status}.")
        card = await _card_number(request)
        now = simkit.now()
        if action == "cancel":
            settle(order, p.OrderStatus.FAILED, p.RespCode.CUSTOMER_CANCELLATION.value, now)
        else:
            code = p.card_decision(card)
            if code == p.RespCode.IN_PROGRESS:
                order.status = p.OrderStatus.PROCESSING.value
                order.extra["resp_code"] = code
                self._spawn(self._finish_processing(order))
                return _payer_reply(wants_json, 200, order, "Your payment is being processed.")
            if code == p.RespCode.APPROVED:
                settle(order, p.OrderStatus.SUCCESS, code, now)
            else:
                settle(order, p.OrderStatus.FAILED, code, now)
        log.info("sim_bank_payer", order=order.channel_order_id, status=order.status)
        self.core.notify(order, self._payment_sender(order))
        return _payer_reply(wants_json, 200, order, _outcome_text(order))

    async def _finish_processing(self, order: SimOrder) -> None:
        await asyncio.sleep(PROCESSING_DELAY_S * self.core.settings.notify_time_scale)
        if order.status == p.OrderStatus.PROCESSING:
            settle(order, p.OrderStatus.SUCCESS, p.RespCode.APPROVED.value, simkit.now())
            self.core.notify(order, self._payment_sender(order))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- notifications --------------------------------------------------------------------
    def _payment_sender(self, order: SimOrder) -> simkit.Sender:
        event = {
            "notify_type": "PAYMENT",
            "notify_id": simkit.new_trade_no("N"),
            "merchant_id": order.extra["merchant_id"],
            "order_no": order.channel_order_id,
            "txn_id": order.channel_trade_no,
            "amount": order.amount,
            "currency": order.currency,
            "status": order.status,
            "resp_code": order.extra["resp_code"],
            "resp_msg": p.resp_message(order.extra["resp_code"]),
            "paid_time": p.format_time(order.paid_at) if order.paid_at else None,
        }
        return self._sender(event, str(order.extra["merchant_id"]))

    def _refund_sender(self, order: SimOrder, refund: SimRefund) -> simkit.Sender:
        event = {
            "notify_type": "REFUND",
            "notify_id": simkit.new_trade_no("N"),
            "merchant_id": order.extra["merchant_id"],
            "order_no": order.channel_order_id,
            "txn_id": order.channel_trade_no,
            "refund_no": refund.channel_refund_id,
            "refund_txn_id": refund.refund_no,
            "amount": refund.amount,
            "currency": order.currency,
            "status": refund.status,
            "resp_code": p.RespCode.APPROVED.value,
            "resp_msg": p.resp_message(p.RespCode.APPROVED.value),
            "refunded_time": p.format_time(refund.completed_at) if refund.completed_at else None,
        }
        return self._sender(event, str(order.extra["merchant_id"]))

    def _sender(self, event: dict[str, Any], merchant_id: str) -> simkit.Sender:
        async def send(http: aiohttp.ClientSession, order: SimOrder) -> bool:
            body = orjson.dumps({**event, "notify_time": p.format_time(simkit.now())})
            timestamp = str(int(time.time()))
            nonce = secrets.token_urlsafe(24)
            message = p.notification_message(merchant_id, timestamp, nonce, body)
            headers = {
                "Content-Type": "application/json",
                p.HEADER_TIMESTAMP: timestamp,
                p.HEADER_NONCE: nonce,
                p.HEADER_SIGNATURE: p.sign(self.bank_key, message),
            }
            async with http.post(
                order.notify_url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                answer = await resp.read()
                if resp.status != 200:
                    return False
            try:
                data = orjson.loads(answer)
            except orjson.JSONDecodeError:
                return False
            return isinstance(data, dict) and data.get("code") == p.ACK_SUCCESS

        return send


# ---- order book helpers -------------------------------------------------------------------


def refunded(order: SimOrder) -> int:
    return sum(r.amount for r in order.refunds.values() if r.status == p.RefundStatus.SUCCESS)


def settle(order: SimOrder, status: p.OrderStatus, code: str, moment: datetime) -> None:
    order.status = status.value
    order.extra["resp_code"] = code
    if status is p.OrderStatus.SUCCESS:
        order.paid_at = moment
    else:
        order.closed_at = moment


def close(order: SimOrder, moment: datetime) -> None:
    order.status = p.OrderStatus.CLOSED.value
    order.extra["resp_code"] = p.RespCode.APPROVED.value
    order.closed_at = moment


def expire(order: SimOrder) -> None:
    """Close an unpaid order past its expiry time (lazily, when it is looked at)."""
    if order.status != p.OrderStatus.CREATED:
        return
    expires = p.parse_time(order.extra["expire_time"])
    if simkit.now() >= expires:
        close(order, expires)


def reserved_order(order_no: str, merchant_id: str) -> SimOrder:
    """An order number closed before any create reached the bank."""
    now = simkit.now()
    return SimOrder(
        channel_order_id=order_no,
        amount=0,
        currency="CNY",
        description="",
        notify_url="",
        status=p.OrderStatus.CLOSED.value,
        channel_trade_no=simkit.new_trade_no("B"),
        created_at=now,
        closed_at=now,
        extra={
            "merchant_id": merchant_id,
            "reserved": True,
            "resp_code": p.RespCode.APPROVED.value,
            "expire_time": p.format_time(now),
            "pay_url": None,
        },
    )


def order_json(order: SimOrder) -> dict[str, Any]:
    return {
        "order_no": order.channel_order_id,
        "txn_id": order.channel_trade_no,
        "merchant_id": order.extra["merchant_id"],
        "amount": order.amount,
        "currency": order.currency,
        "description": order.description,
        "status": order.status,
        "resp_code": order.extra["resp_code"],
        "resp_msg": p.resp_message(order.extra["resp_code"]),
        "pay_url": order.extra.get("pay_url"),
        "created_time": p.format_time(order.created_at),
        "paid_time": p.format_time(order.paid_at) if order.paid_at else None,
        "expire_time": order.extra["expire_time"],
        "refunded_amount": refunded(order),
    }


def refund_json(order: SimOrder, refund: SimRefund) -> dict[str, Any]:
    return {
        "refund_no": refund.channel_refund_id,
        "refund_txn_id": refund.refund_no,
        "order_no": order.channel_order_id,
        "amount": refund.amount,
        "currency": order.currency,
        "status": refund.status,
        "resp_code": p.RespCode.APPROVED.value,
        "resp_msg": p.resp_message(p.RespCode.APPROVED.value),
        "created_time": p.format_time(refund.created_at),
        "refunded_time": p.format_time(refund.completed_at) if refund.completed_at else None,
    }


# ---- the card page ------------------------------------------------------------------------


async def _card_number(request: web.Request) -> str:
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            return p.TEST_CARD_APPROVE
        value = data.get("card_number") if isinstance(data, dict) else None
    else:
        value = (await request.post()).get("card_number")
    return value if isinstance(value, str) and value.strip() else p.TEST_CARD_APPROVE


def _outcome_text(order: SimOrder) -> str:
    code = str(order.extra["resp_code"])
    if order.status == p.OrderStatus.SUCCESS:
        return "Payment approved."
    return f"Payment not completed: {p.resp_message(code)} ({code})."


def _payer_reply(wants_json: bool, status: int, order: SimOrder | None, text: str) -> web.Response:
    if wants_json:
        body: dict[str, Any] = {"message": text}
        if order is not None:
            body.update(
                order_no=order.channel_order_id,
                status=order.status,
                resp_code=order.extra["resp_code"],
                return_url=order.extra.get("return_url"),
            )
        return web.json_response(body, status=status)
    back = ""
    if order is not None and order.extra.get("return_url"):
        url = html.escape(str(order.extra["return_url"]))
        back = f'<p><a href="{url}">Return to the merchant</a></p>'
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Bank payment</title>'
        '</head><body style="font-family:sans-serif;max-width:28em;margin:3em auto">'
        f"<h1>Bank payment</h1><p>{html.escape(text)}</p>{back}</body></html>"
    )
    return web.Response(status=status, text=page, content_type="text/html")


def render_card_page(order: SimOrder) -> str:
    esc = html.escape
    amount = f"{order.currency} {order.amount // 100}.{order.amount % 100:02d}"
    cards = "".join(
        f"<li><code>{esc(number)}</code> declines with {esc(code)} "
        f"({esc(p.resp_message(code))})</li>"
        for number, code in p.TEST_CARDS_DECLINE.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bank card payment (simulator)</title>
<style>body{{font-family:sans-serif;max-width:30em;margin:3em auto}}
input{{font-size:1.1em;width:100%}}button{{font-size:1.1em;margin:.3em;padding:.4em 1.2em}}</style>
</head><body><h1>Card payment</h1>
<p>Order <code>{esc(order.channel_order_id)}</code></p>
<p>{esc(order.description)}</p>
<p><strong>{esc(amount)}</strong></p>
<p>Status: <em>{esc(order.status)}</em></p>
<form method="post">
<label>Card number <input name="card_number" value="{p.TEST_CARD_APPROVE}"
 inputmode="numeric" autocomplete="off"></label>
<p><button name="action" value="pay">Pay</button>
<button name="action" value="cancel">Cancel</button></p>
</form>
<details><summary>Test cards</summary><ul>
<li><code>{p.TEST_CARD_APPROVE}</code> approves</li>
<li><code>{p.TEST_CARD_PROCESSING}</code> is processed for a moment, then approves</li>
{cards}</ul></details>
</body></html>"""


SIMULATOR = web.AppKey("bank_simulator", BankSimulator)
"""The simulator instance behind an app (for tests and tools)."""


def build_app(settings: SimulatorSettings) -> web.Application:
    sim = BankSimulator(settings)
    app = web.Application()
    app[SIMULATOR] = sim
    app.router.add_post(p.PATH_ORDERS, sim.create_order)
    app.router.add_get(p.PATH_ORDERS + "/{order_no}", sim.query_order)
    app.router.add_post(p.PATH_ORDERS + "/{order_no}/close", sim.close_order)
    app.router.add_post(p.PATH_REFUNDS, sim.create_refund)
    app.router.add_get(p.PATH_REFUNDS + "/{refund_no}", sim.query_refund)
    app.router.add_get(p.PATH_STATEMENTS + "/{day}", sim.statement)
    app.router.add_get("/pay/{order_no}", sim.payer_page)
    app.router.add_post("/pay/{order_no}", sim.payer_action)
    sim.core.add_control_routes(app)

    async def _cleanup(_: web.Application) -> None:
        await sim.aclose()

    app.on_cleanup.append(_cleanup)
    return app
