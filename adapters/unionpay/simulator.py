"""A simulator of the UnionPay online gateway 5.1.0 (merchant-presented QR codes), mounted at
`/sim/unionpay`.

It serves the real endpoints under its root, speaks the real wire format (URL-encoded form
requests, non-encoded ``k=v&...`` answers, form-POST notifications acknowledged by HTTP 200)
and signs like UnionPay (signMethod 01, its signing certificate in ``signPubKeyCert`` with CRLF
line ends, from `config/keys/unionpay/`). It verifies every request: ``certId`` must be the
serial of the merchant certificate in `config/keys/unionpay/merchant_sign_cert.pem` and the
signature must verify with it (else respCode 11).

- ``POST /gateway/api/backTransReq.do``: QR application (01/07: answers ``qrCode``, the payer
  page of this simulator), refund (04: accepted with 00, completed and notified shortly after),
  undo (31).
- ``POST /gateway/api/queryTrans.do``: status query (00) by ``orderId`` + ``txnTime``.
- ``POST /gateway/api/fileTransReq.do``: reconciliation file (76).
- ``GET /qr/{orderId}``: the payer page; ``POST`` with ``action=pay|cancel`` (form or JSON)
  pays or cancels and sends the notification to ``backUrl``, retried until HTTP 200 at 1, 2,
  4, 8 and 16 minutes (times ``notify_time_scale``).
- ``/control/...`` of `adapters.simkit`.

Where it differs from the real gateway (on purpose, to keep it small):

- the payer page stands for the UnionPay app scanning the QR code; the real ``qrCode`` is an
  EMV QR URL (``https://qr.95516.com/...``). Codes do not expire at ``payTimeout`` here.
- a payer's cancel sends a failure notification (respCode 01) so the gateway learns it at once;
  the real gateway notifies successful transactions.
- a queryId is given to an order when its QR code is issued, and queries of a waiting order
  answer respCode 00 / origRespCode 05 with it; an undo (31) of such an *unpaid* order closes it
  (the real gateway has no close for a QR order: the code just expires). An undo of a paid order
  reverses it, as the real one does, and a query of a closed order answers origRespCode 45.
- refunds complete ``REFUND_DELAY_S`` (times ``notify_time_scale``) after acceptance; a refund
  above what is left of the payment is refused with 36.
- the reconciliation file is a CSV text (see `protocol.STATEMENT_COLUMNS`), deflated and base64
  encoded in ``fileContent`` like the real one, but not a zip of fixed-width files. It lists, by
  China (UTC+8) date, the consumptions paid that day and the refunds and undos completed that
  day (the real settlement day turns at 23:00 Beijing time; here at midnight). Fees are a
  flat 0.38 % of consumptions, for show.
- the system-error fault answers a signed respCode 96; a timeout fault sleeps, then answers
  normally (the caller has given up: the order exists, only a query can tell).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters import simkit
from adapters.chinatime import CHINA_TZ, china_date
from adapters.kernel.crypto import certificate_key, load_certificates, load_private_key
from adapters.money import fen_to_yuan
from adapters.simkit import FaultAction, SimOrder, SimRefund, SimulatorCore, SimulatorSettings
from adapters.unionpay import protocol as p
from adapters.unionpay import statement

log = structlog.get_logger("simulator.unionpay")

NOTIFY_SCHEDULE_S = (60.0, 120.0, 240.0, 480.0, 960.0)
"""Waits between notification attempts after the first (1, 2, 4, 8, 16 minutes)."""
REFUND_DELAY_S = 2.0
FEE_RATE_BP = 38

# order statuses (the simulator's own vocabulary)
WAITING = "WAITING"
PAID = "PAID"
FAILED = "FAILED"  # the payer cancelled
CLOSED = "CLOSED"  # undone before payment
REVOKED = "REVOKED"  # undone after payment: money returned
# refund statuses
PROCESSING = "PROCESSING"
SUCCESS = "SUCCESS"

_ORIG_CODES = {WAITING: "05", PAID: "00", REVOKED: "00", FAILED: "01", CLOSED: "45"}
_ECHO = ("version", "encoding", "bizType", "txnType", "txnSubType", "accessType", "merId")
_ECHO_TXN = ("orderId", "txnTime", "reqReserved", "channelType")
_REQUIRED = (
    "version",
    "encoding",
    "signMethod",
    "txnType",
    "txnSubType",
    "bizType",
    "accessType",
    "merId",
    "certId",
    "signature",
)


@dataclass(slots=True)
class _Txn:
    """Every transaction the simulator knows, by its orderId (payments, refunds, undos)."""

    kind: str  # TXN_CONSUME | TXN_REFUND | TXN_UNDO
    order_id: str  # the payment's orderId
    txn_time: str
    query_id: str
    mer_id: str
    req_reserved: str = ""
    back_url: str = ""


def _query_id() -> str:
    """A 21-digit queryId like UnionPay's: China time and 7 random digits."""
    return p.china_now().strftime("%Y%m%d%H%M%S") + f"{secrets.randbelow(10**7):07d}"


class UnionPaySimulator:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.core = SimulatorCore("unionpay", settings, NOTIFY_SCHEDULE_S)
        keydir = Path(settings.config_dir) / "keys" / "unionpay"
        self._key = load_private_key((keydir / "unionpay_sign_key.pem").read_bytes())
        self._signer_pem = p.cert_pem(
            load_certificates((keydir / "unionpay_sign_cert.pem").read_bytes())[0]
        )
        merchant = load_certificates((keydir / "merchant_sign_cert.pem").read_bytes())[0]
        self._merchant_keys: dict[str, rsa.RSAPublicKey] = {
            p.cert_id(merchant): certificate_key(merchant)
        }
        self.txns: dict[str, _Txn] = {}
        self._by_query_id: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- helpers --------------------------------------------------------------------------
    def signed(self, fields: dict[str, str]) -> dict[str, str]:
        return p.sign_with_cert(fields, self._key, self._signer_pem)

    def _answer(
        self, req: dict[str, str], code: str, extra: dict[str, str] | None = None
    ) -> web.Response:
        fields = {k: req[k] for k in (*_ECHO, *_ECHO_TXN) if req.get(k)}
        fields |= {
            "version": p.VERSION,
            "encoding": p.ENCODING,
            "signMethod": p.SIGN_METHOD_RSA,
            "respCode": code,
            "respMsg": p.resp_message(code),
        }
        fields |= extra or {}
        return web.Response(
            text=p.encode_message(self.signed(fields)), content_type="text/plain", charset="utf-8"
        )

    async def _read(self, request: web.Request) -> tuple[dict[str, str], str | None]:
        """The request's fields and the error code to answer with, if any."""
        try:
            fields = p.parse_form(await request.read())
        except (UnicodeDecodeError, ValueError):
            return {}, "10"
        missing = [k for k in _REQUIRED if not fields.get(k)]
        if missing:
            return fields, "13"
        if (
            fields["version"] != p.VERSION
            or fields["signMethod"] != p.SIGN_METHOD_RSA
            or fields["encoding"].upper() != p.ENCODING
        ):
            return fields, "10"
        key = self._merchant_keys.get(fields["certId"])
        if key is None or not p.verify(key, fields):
            log.info("sim_unionpay_bad_request_signature", order_id=fields.get("orderId"))
            return fields, p.BAD_SIGNATURE
        return fields, None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shielded(self, work: Coroutine[Any, Any, web.Response]) -> web.Response:
        """Run a request to its end even when the caller hangs up (as UnionPay does: a
        timed-out request may still have been carried out)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _sender(self, url: str, fields: dict[str, str]) -> simkit.Sender:
        """A notification, signed once, sent as the same bytes on every retry."""
        body = p.encode_form(self.signed(fields))

        async def send(http: aiohttp.ClientSession, order: SimOrder) -> bool:
            async with http.post(
                url,
                data=body,
                headers={"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"},
                allow_redirects=False,
            ) as resp:
                await resp.read()
                return resp.status == 200

        return send

    # ---- API handlers ---------------------------------------------------------------------
    async def back_trans(self, request: web.Request) -> web.Response:
        fields, error = await self._read(request)
        return await self._shielded(self._back_trans(request, fields, error))

    async def _back_trans(
        self, request: web.Request, fields: dict[str, str], error: str | None
    ) -> web.Response:
        fault = await self.core.inject()
        if fault is FaultAction.ERROR:
            return self._answer(fields, p.SYSTEM_FAILURE)
        if error:
            return self._answer(fields, error)
        txn_type, sub_type = fields["txnType"], fields["txnSubType"]
        if txn_type == p.TXN_CONSUME and sub_type == p.SUB_QR_APPLY:
            return self._apply_qr(request, fields)
        if txn_type == p.TXN_REFUND:
            return self._refund(fields)
        if txn_type == p.TXN_UNDO:
            return self._undo(fields)
        return self._answer(fields, "10")

    def _check_new(self, fields: dict[str, str]) -> str | None:
        if fields.get("bizType") != p.BIZ_TYPE_QR:
            return "32"
        if not p.ORDER_ID_RE.match(fields.get("orderId", "")):
            return "10"
        try:
            p.parse_txn_time(fields.get("txnTime", ""))
            p.parse_amount(fields.get("txnAmt", ""))
        except ValueError:
            return "10"
        if fields["orderId"] in self.txns:
            return p.DUPLICATE
        return None

    def _apply_qr(self, request: web.Request, fields: dict[str, str]) -> web.Response:
        error = self._check_new(fields)
        if error is None and fields.get("currencyCode") != p.CURRENCY_CNY:
            error = "10"
        if error is None and not fields.get("backUrl", "").startswith(("http://", "https://")):
            error = "13"
        if error is None and fields.get("channelType") not in ("07", "08"):
            error = "10"
        if error:
            return self._answer(fields, error)
        order_id = fields["orderId"]
        query_id = _query_id()
        qr_code = f"{simkit.public_base(request)}/qr/{order_id}"
        self.core.orders[order_id] = SimOrder(
            channel_order_id=order_id,
            amount=p.parse_amount(fields["txnAmt"]),
            currency="CNY",
            description=fields.get("orderDesc", ""),
            notify_url=fields["backUrl"],
            status=WAITING,
            channel_trade_no=query_id,
            created_at=simkit.now(),
            extra={
                "merId": fields["merId"],
                "txnTime": fields["txnTime"],
                "payTimeout": fields.get("payTimeout", ""),
                "reqReserved": fields.get("reqReserved", ""),
                "qrCode": qr_code,
            },
        )
        self.txns[order_id] = _Txn(
            p.TXN_CONSUME,
            order_id,
            fields["txnTime"],
            query_id,
            fields["merId"],
            fields.get("reqReserved", ""),
            fields["backUrl"],
        )
        self._by_query_id[query_id] = order_id
        log.info("sim_unionpay_qr_issued", order_id=order_id)
        return self._answer(fields, p.SUCCESS, {"qrCode": qr_code})

    def _original(self, fields: dict[str, str]) -> SimOrder | None:
        order_id = self._by_query_id.get(fields.get("origQryId", ""))
        order = self.core.orders.get(order_id or "")
        if order is None or order.extra.get("merId") != fields.get("merId"):
            return None
        return order

    def _refund(self, fields: dict[str, str]) -> web.Response:
        error = self._check_new(fields)
        if error:
            return self._answer(fields, error)
        order = self._original(fields)
        if order is None or order.status != PAID:
            return self._answer(fields, "35")
        amount = p.parse_amount(fields["txnAmt"])
        refunded = sum(r.amount for r in order.refunds.values())
        if refunded + amount > order.amount:
            return self._answer(fields, "36")
        refund_id = fields["orderId"]
        query_id = _query_id()
        refund = SimRefund(
            channel_refund_id=refund_id,
            refund_no=query_id,
            amount=amount,
            status=PROCESSING,
            created_at=simkit.now(),
        )
        order.refunds[refund_id] = refund
        txn = _Txn(
            p.TXN_REFUND,
            order.channel_order_id,
            fields["txnTime"],
            query_id,
            fields["merId"],
            fields.get("reqReserved", ""),
            fields.get("backUrl", ""),
        )
        self.txns[refund_id] = txn
        self._spawn(self._complete_refund(order, refund, txn, fields))
        return self._answer(fields, p.SUCCESS, {"queryId": query_id, "txnAmt": fields["txnAmt"]})

    async def _complete_refund(
        self, order: SimOrder, refund: SimRefund, txn: _Txn, req: dict[str, str]
    ) -> None:
        await asyncio.sleep(REFUND_DELAY_S * self.settings.notify_time_scale)
        refund.status = SUCCESS
        refund.completed_at = simkit.now()
        log.info("sim_unionpay_refund_done", refund_id=refund.channel_refund_id)
        if not txn.back_url:
            return
        done = p.china_now()
        fields = {
            "version": p.VERSION,
            "encoding": p.ENCODING,
            "signMethod": p.SIGN_METHOD_RSA,
            "txnType": p.TXN_REFUND,
            "txnSubType": p.SUB_DEFAULT,
            "bizType": p.BIZ_TYPE_QR,
            "accessType": p.ACCESS_TYPE_MERCHANT,
            "merId": txn.mer_id,
            "orderId": refund.channel_refund_id,
            "txnTime": txn.txn_time,
            "txnAmt": str(refund.amount),
            "currencyCode": p.CURRENCY_CNY,
            "origQryId": order.channel_trade_no,
            "queryId": refund.refund_no,
            "respCode": p.SUCCESS,
            "respMsg": p.resp_message(p.SUCCESS),
            "settleAmt": str(refund.amount),
            "settleCurrencyCode": p.CURRENCY_CNY,
            "settleDate": done.strftime("%m%d"),
            "traceNo": f"{secrets.randbelow(10**6):06d}",
            "traceTime": done.strftime("%m%d%H%M%S"),
        }
        if txn.req_reserved:
            fields["reqReserved"] = txn.req_reserved
        self.core.notify(order, self._sender(txn.back_url, fields))

    def _undo(self, fields: dict[str, str]) -> web.Response:
        error = self._check_new(fields)
        if error:
            return self._answer(fields, error)
        order = self._original(fields)
        if order is None or order.status not in (WAITING, PAID) or order.refunds:
            return self._answer(fields, "35")
        if p.parse_amount(fields["txnAmt"]) != order.amount:
            return self._answer(fields, "36")
        undo_id = fields["orderId"]
        query_id = _query_id()
        self.txns[undo_id] = _Txn(
            p.TXN_UNDO, order.channel_order_id, fields["txnTime"], query_id, fields["merId"]
        )
        stamp = simkit.now()
        if order.status == WAITING:
            order.status = CLOSED
            order.closed_at = stamp
        else:
            order.status = REVOKED
            order.refunds[undo_id] = SimRefund(
                channel_refund_id=undo_id,
                refund_no=query_id,
                amount=order.amount,
                status=SUCCESS,
                created_at=stamp,
                completed_at=stamp,
            )
        log.info("sim_unionpay_undone", order_id=order.channel_order_id, status=order.status)
        return self._answer(
            fields, p.SUCCESS, {"queryId": query_id, "origQryId": fields["origQryId"]}
        )

    async def query_trans(self, request: web.Request) -> web.Response:
        fields, error = await self._read(request)
        return await self._shielded(self._query_trans(request, fields, error))

    async def _query_trans(
        self, request: web.Request, fields: dict[str, str], error: str | None
    ) -> web.Response:
        fault = await self.core.inject()
        if fault is FaultAction.ERROR:
            return self._answer(fields, p.SYSTEM_FAILURE)
        if error:
            return self._answer(fields, error)
        if fields["txnType"] != p.TXN_QUERY:
            return self._answer(fields, "10")
        txn = self.txns.get(fields.get("orderId", ""))
        if txn is None or txn.txn_time != fields.get("txnTime") or txn.mer_id != fields["merId"]:
            return self._answer(fields, p.NOT_FOUND)
        order = self.core.orders[txn.order_id]
        extra: dict[str, str] = {"queryId": txn.query_id, "currencyCode": p.CURRENCY_CNY}
        if txn.kind == p.TXN_CONSUME:
            orig = _ORIG_CODES[order.status]
            extra["txnAmt"] = str(order.amount)
            if order.paid_at is not None:
                extra |= _settlement(order.amount, order.paid_at, order.extra)
        else:
            refund = order.refunds.get(fields["orderId"])
            if refund is None:  # an undo of an unpaid order
                orig = p.SUCCESS
                extra["txnAmt"] = str(order.amount)
            else:
                orig = p.SUCCESS if refund.status == SUCCESS else "05"
                extra["txnAmt"] = str(refund.amount)
                extra["origQryId"] = order.channel_trade_no
                if refund.completed_at is not None:
                    extra |= _settlement(refund.amount, refund.completed_at, {})
        extra |= {"origRespCode": orig, "origRespMsg": p.resp_message(orig)}
        return self._answer(fields, p.SUCCESS, extra)

    async def file_trans(self, request: web.Request) -> web.Response:
        fields, error = await self._read(request)
        return await self._shielded(self._file_trans(request, fields, error))

    async def _file_trans(
        self, request: web.Request, fields: dict[str, str], error: str | None
    ) -> web.Response:
        fault = await self.core.inject()
        if fault is FaultAction.ERROR:
            return self._answer(fields, p.SYSTEM_FAILURE)
        if error:
            return self._answer(fields, error)
        settle = fields.get("settleDate", "")
        if fields["txnType"] != p.TXN_FILE or fields.get("fileType") != p.FILE_TYPE_SETTLE:
            return self._answer(fields, "10")
        day = _resolve_settle_date(settle, p.china_now().date())
        if day is None:
            return self._answer(fields, "10")
        text = self.statement_text(fields["merId"], day)
        name = f"INN{day:%y%m%d}88ZM_{fields['merId']}"
        return self._answer(
            fields,
            p.SUCCESS,
            {
                "settleDate": settle,
                "fileType": p.FILE_TYPE_SETTLE,
                "fileName": name,
                "fileContent": statement.pack_file(text),
            },
        )

    def statement_text(self, mer_id: str, day: date) -> str:
        """The reconciliation file of one merchant and one China date, with the configured
        statement faults applied."""
        faults = self.core.statement_faults
        rows: list[statement.StatementRow] = []
        for order in self.core.orders.values():
            if order.extra.get("merId") != mer_id:
                continue
            txn = self.txns[order.channel_order_id]
            if order.paid_at is not None and china_date(order.paid_at) == day:
                rows.append(
                    statement.StatementRow(
                        txn_type=p.TXN_CONSUME,
                        order_id=order.channel_order_id,
                        orig_order_id="",
                        query_id=order.channel_trade_no,
                        orig_qry_id="",
                        txn_time=txn.txn_time,
                        complete_time=p.format_txn_time(order.paid_at),
                        amount=order.amount,
                        fee=order.amount * FEE_RATE_BP // 10_000,
                        resp_code=p.SUCCESS,
                        settle_date=f"{day:%m%d}",
                    )
                )
            for refund in order.refunds.values():
                if refund.completed_at is None or china_date(refund.completed_at) != day:
                    continue
                refund_txn = self.txns[refund.channel_refund_id]
                rows.append(
                    statement.StatementRow(
                        txn_type=refund_txn.kind,
                        order_id=refund.channel_refund_id,
                        orig_order_id=order.channel_order_id,
                        query_id=refund.refund_no,
                        orig_qry_id=order.channel_trade_no,
                        txn_time=refund_txn.txn_time,
                        complete_time=p.format_txn_time(refund.completed_at),
                        amount=refund.amount,
                        fee=0,
                        resp_code=p.SUCCESS,
                        settle_date=f"{day:%m%d}",
                    )
                )
        stamp = p.format_txn_time(simkit.now())
        for extra in faults.extra:
            rows.append(
                statement.StatementRow(
                    txn_type=p.TXN_CONSUME,
                    order_id=extra["channel_order_id"],
                    orig_order_id="",
                    query_id=_query_id(),
                    orig_qry_id="",
                    txn_time=stamp,
                    complete_time=stamp,
                    amount=extra["amount"],
                    fee=extra["amount"] * FEE_RATE_BP // 10_000,
                    resp_code=p.SUCCESS,
                    settle_date=f"{day:%m%d}",
                )
            )
        lines = [statement.statement_header()]
        for row in rows:
            if row.order_id in faults.missing:
                continue
            if row.order_id in faults.amount:
                row = replace(row, amount=faults.amount[row.order_id])
            if row.order_id in faults.status:
                row = replace(row, resp_code=faults.status[row.order_id])
            lines.append(row.line())
        return "".join(lines)

    # ---- the payer page -------------------------------------------------------------------
    async def payer_page(self, request: web.Request) -> web.Response:
        order = self.core.orders.get(request.match_info["order_id"])
        if order is None:
            raise web.HTTPNotFound(text="no such QR code")
        url = f"{simkit.public_base(request)}/qr/{order.channel_order_id}"
        page = simkit.render_payer_page(
            "UnionPay QR (simulator)", order, f"¥{fen_to_yuan(order.amount)}", url
        )
        return web.Response(text=page, content_type="text/html")

    async def payer_action(self, request: web.Request) -> web.Response:
        order = self.core.orders.get(request.match_info["order_id"])
        if order is None:
            raise web.HTTPNotFound(text="no such QR code")
        action = await simkit.read_payer_action(request)
        wants_json = request.content_type == "application/json"
        if action is None:
            return web.json_response({"error": "action must be pay or cancel"}, status=400)
        if order.status != WAITING:
            body = {
                "orderId": order.channel_order_id,
                "status": order.status,
                "error": "this QR code can no longer be paid",
            }
            return web.json_response(body, status=409)
        if action == "pay":
            self._pay(order)
        else:
            self._cancel(order)
        if wants_json:
            return web.json_response({"orderId": order.channel_order_id, "status": order.status})
        return await self.payer_page(request)

    def _notification(self, order: SimOrder, code: str) -> dict[str, str]:
        fields = {
            "version": p.VERSION,
            "encoding": p.ENCODING,
            "signMethod": p.SIGN_METHOD_RSA,
            "txnType": p.TXN_CONSUME,
            "txnSubType": p.SUB_QR_APPLY,
            "bizType": p.BIZ_TYPE_QR,
            "accessType": p.ACCESS_TYPE_MERCHANT,
            "merId": str(order.extra["merId"]),
            "orderId": order.channel_order_id,
            "txnTime": str(order.extra["txnTime"]),
            "txnAmt": str(order.amount),
            "currencyCode": p.CURRENCY_CNY,
            "queryId": order.channel_trade_no,
            "respCode": code,
            "respMsg": p.resp_message(code),
        }
        if order.extra.get("reqReserved"):
            fields["reqReserved"] = str(order.extra["reqReserved"])
        return fields

    def _pay(self, order: SimOrder) -> None:
        order.status = PAID
        order.paid_at = simkit.now()
        settlement = _settlement(order.amount, order.paid_at, order.extra)
        order.extra |= {k: settlement[k] for k in ("traceNo", "traceTime", "settleDate")}
        fields = self._notification(order, p.SUCCESS) | settlement
        log.info("sim_unionpay_paid", order_id=order.channel_order_id)
        self.core.notify(order, self._sender(order.notify_url, fields))

    def _cancel(self, order: SimOrder) -> None:
        order.status = FAILED
        order.closed_at = simkit.now()
        log.info("sim_unionpay_cancelled", order_id=order.channel_order_id)
        self.core.notify(order, self._sender(order.notify_url, self._notification(order, "01")))


def _settlement(amount: int, moment: datetime, known: dict[str, object]) -> dict[str, str]:
    china = moment.astimezone(CHINA_TZ)
    return {
        "settleAmt": str(amount),
        "settleCurrencyCode": p.CURRENCY_CNY,
        "settleDate": str(known.get("settleDate") or china.strftime("%m%d")),
        "traceNo": str(known.get("traceNo") or f"{secrets.randbelow(10**6):06d}"),
        "traceTime": str(known.get("traceTime") or china.strftime("%m%d%H%M%S")),
    }


def _resolve_settle_date(mmdd: str, today: date) -> date | None:
    """settleDate is MMDD: the latest such date not after today (China time)."""
    if len(mmdd) != 4 or not mmdd.isdigit():
        return None
    for back in range(5):  # Feb 29 may be up to four years back
        try:
            day = date(today.year - back, int(mmdd[:2]), int(mmdd[2:]))
        except ValueError:
            continue
        if day <= today:
            return day
    return None


SIMULATOR = web.AppKey("unionpay_simulator", UnionPaySimulator)
"""The simulator instance behind an app made by `build_app` (tests reach its state here)."""


def build_app(settings: SimulatorSettings) -> web.Application:
    sim = UnionPaySimulator(settings)
    app = web.Application()
    app[SIMULATOR] = sim
    app.router.add_post(p.BACK_TRANS_PATH, sim.back_trans)
    app.router.add_post(p.QUERY_PATH, sim.query_trans)
    app.router.add_post(p.FILE_PATH, sim.file_trans)
    app.router.add_get("/qr/{order_id}", sim.payer_page)
    app.router.add_post("/qr/{order_id}", sim.payer_action)
    sim.core.add_control_routes(app)

    async def _cleanup(_: web.Application) -> None:
        await sim.aclose()

    app.on_cleanup.append(_cleanup)
    return app
