"""The `alipay` adapter against its simulator, in-process: precreate, the payer, notifications,
query, close, refunds, fault injection, signatures both ways and the statement."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pydantic
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters import simkit
from adapters.alipay import protocol as p
from adapters.alipay.adapter import AlipayAdapter, StatementUnavailable, build
from adapters.alipay.simulator import SIMULATOR, AlipaySimulator, build_app
from adapters.base import (
    AdapterContext,
    CreatePayment,
    CreateRefund,
    Decision,
    IncomingRequest,
    Notification,
    NotificationKind,
    NotificationRejected,
    Outcome,
    StatementKind,
    StatementLine,
)
from adapters.simkit import SimulatorSettings

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
KEYS = CONFIG_DIR / "keys" / "alipay"
APP_ID = "2021000000000001"
ALIPAY_PRIVATE = p.load_private_key((KEYS / "alipay_private_key.pem").read_bytes())
APP_PRIVATE = p.load_private_key((KEYS / "app_private_key.pem").read_bytes())
_counter = iter(range(1, 1_000_000))


@dataclass
class Receiver:
    """The gateway's `/notify/alipay`, reduced to parse + ack."""

    adapter: AlipayAdapter | None = None
    accepted: list[Notification] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    raw: list[tuple[str, bytes]] = field(default_factory=list)
    refuse_next: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        assert self.adapter is not None
        body = await request.read()
        self.raw.append((request.headers.get("Content-Type", ""), body))
        incoming = IncomingRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            content_type=request.content_type,
        )
        try:
            notification = self.adapter.parse_notification(incoming)
        except NotificationRejected as exc:
            self.rejected.append(str(exc))
            ack = self.adapter.ack(False)
        else:
            if self.refuse_next > 0:
                self.refuse_next -= 1
                ack = self.adapter.ack(False)
            else:
                self.accepted.append(notification)
                ack = self.adapter.ack(True)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)

    def fields(self, index: int) -> dict[str, str]:
        return dict(parse_qsl(self.raw[index][1].decode("ascii"), keep_blank_values=True))


@dataclass
class Env:
    adapter: AlipayAdapter
    sim: AlipaySimulator
    server: TestServer
    receiver: Receiver
    notify_url: str
    http: aiohttp.ClientSession
    config: dict[str, Any]

    def make_adapter(self, **changes: Any) -> AlipayAdapter:
        adapter = build(
            "alipay_test", {**self.config, **changes}, AdapterContext(self.http, str(CONFIG_DIR))
        )
        assert isinstance(adapter, AlipayAdapter)
        return adapter

    def payment(
        self, order_no: str | None = None, amount: int = 1999, **changes: Any
    ) -> CreatePayment:
        values: dict[str, Any] = {
            "channel_order_id": order_no or f"pay_t{next(_counter)}_{id(self) % 10000}_1",
            "amount": amount,
            "currency": "CNY",
            "method": "alipay_qr",
            "description": "Order A1001 订单",
            "notify_url": self.notify_url,
            "expires_at": datetime.now(UTC) + timedelta(minutes=15),
        }
        values.update(changes)
        return CreatePayment(**values)

    async def create(self, amount: int = 1999) -> tuple[CreatePayment, str]:
        req = self.payment(amount=amount)
        result = await self.adapter.create_payment(req)
        assert result.outcome is Outcome.WAITING, result
        assert result.next_action is not None
        return req, result.next_action.url

    async def payer(self, url: str, action: str = "pay") -> tuple[int, dict[str, Any]]:
        async with self.http.post(url, json={"action": action}) as resp:
            return resp.status, await resp.json()

    async def paid(self, amount: int = 1999) -> CreatePayment:
        req, url = await self.create(amount)
        status, body = await self.payer(url)
        assert (status, body["trade_status"]) == (200, "TRADE_SUCCESS")
        await eventually(
            lambda: any(n.channel_order_id == req.channel_order_id for n in self.receiver.accepted)
        )
        return req

    async def faults(self, **patch: Any) -> None:
        async with self.http.put(
            self.server.make_url("/sim/alipay/control/faults"), json=patch
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def statement_faults(self, **data: Any) -> None:
        async with self.http.put(
            self.server.make_url("/sim/alipay/control/statement"), json=data
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def statement(self) -> list[StatementLine]:
        return [
            line async for line in self.adapter.download_statement(p.china_date(datetime.now(UTC)))
        ]

    def notifications_for(self, order_id: str) -> list[Notification]:
        return [n for n in self.receiver.accepted if n.channel_order_id == order_id]


async def eventually(predicate: Callable[[], bool], within_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def env(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> AsyncIterator[Env]:
    parent = web.Application()
    settings = SimulatorSettings(
        config_dir=str(CONFIG_DIR), notify_time_scale=0.001, timeout_sleep_s=2
    )
    sim_app = build_app(settings)
    simkit.mount(parent, "alipay", sim_app)
    receiver = Receiver()
    parent.router.add_post("/notify/alipay", receiver.handle)
    server = await aiohttp_server(parent)
    http = aiohttp.ClientSession()
    config = {
        "base_url": str(server.make_url("/sim/alipay")),
        "app_id": APP_ID,
        "app_private_key_path": "keys/alipay/app_private_key.pem",
        "alipay_public_key_path": "keys/alipay/alipay_public_key.pem",
        "timeout_ms": 2000,
    }
    adapter = build("alipay_test", config, AdapterContext(http, str(CONFIG_DIR)))
    assert isinstance(adapter, AlipayAdapter)
    receiver.adapter = adapter
    try:
        yield Env(
            adapter=adapter,
            sim=sim_app[SIMULATOR],
            server=server,
            receiver=receiver,
            notify_url=str(server.make_url("/notify/alipay")),
            http=http,
            config=config,
        )
    finally:
        await http.close()


# ---- the happy path ---------------------------------------------------------------------------


async def test_precreate_pay_notify_query(env: Env) -> None:
    req = env.payment()
    created = await env.adapter.create_payment(req)
    assert created.outcome is Outcome.WAITING
    assert created.channel_code == "10000"
    assert created.next_action is not None
    assert created.next_action.type == "qr_code"
    url = created.next_action.url
    assert url.startswith(str(env.server.make_url("/sim/alipay/qr/")))
    order = env.sim.core.orders[req.channel_order_id]
    assert (order.amount, order.status, order.notify_url) == (
        1999,
        "WAIT_BUYER_PAY",
        env.notify_url,
    )
    assert order.description == "Order A1001 订单"

    waiting = await env.adapter.query_payment(req.channel_order_id)
    assert (waiting.outcome, waiting.channel_code, waiting.amount) == (
        Outcome.WAITING,
        "WAIT_BUYER_PAY",
        1999,
    )

    async with env.http.get(url) as resp:
        page = await resp.text()
        assert resp.status == 200
        assert req.channel_order_id in page and "19.99" in page

    status, body = await env.payer(url)
    assert status == 200
    assert body == {
        "out_trade_no": req.channel_order_id,
        "trade_no": order.channel_trade_no,
        "trade_status": "TRADE_SUCCESS",
    }

    await eventually(lambda: len(env.receiver.accepted) == 1)
    notification = env.receiver.accepted[0]
    assert notification.kind is NotificationKind.PAYMENT
    assert notification.channel_order_id == req.channel_order_id
    assert notification.result.outcome is Outcome.SUCCEEDED
    assert notification.result.channel_trade_no == order.channel_trade_no
    assert notification.result.amount == 1999
    assert notification.result.paid_at is not None
    content_type, _ = env.receiver.raw[0]
    assert content_type.startswith("application/x-www-form-urlencoded")
    fields = env.receiver.fields(0)
    assert fields["notify_type"] == "trade_status_sync"
    assert fields["sign_type"] == "RSA2"
    assert fields["app_id"] == APP_ID
    assert fields["total_amount"] == fields["receipt_amount"] == "19.99"

    paid = await env.adapter.query_payment(req.channel_order_id)
    assert paid.outcome is Outcome.SUCCEEDED
    assert (paid.channel_code, paid.channel_trade_no, paid.amount) == (
        "TRADE_SUCCESS",
        order.channel_trade_no,
        1999,
    )
    assert paid.paid_at is not None and abs(paid.paid_at - datetime.now(UTC)) < timedelta(seconds=5)
    # acknowledged with "success": no more deliveries
    await asyncio.sleep(0.35)
    assert env.sim.core.notifications_sent == 1
    assert env.receiver.rejected == []

    async with env.http.get(
        env.server.make_url(f"/sim/alipay/control/orders/{req.channel_order_id}")
    ) as resp:
        assert (await resp.json())["status"] == "TRADE_SUCCESS"


async def test_precreate_is_idempotent_by_out_trade_no(env: Env) -> None:
    req = env.payment()
    first = await env.adapter.create_payment(req)
    again = await env.adapter.create_payment(req)
    assert first.next_action == again.next_action
    assert len(env.sim.by_qr) == 1
    changed = await env.adapter.create_payment(env.payment(req.channel_order_id, amount=2000))
    assert (changed.outcome, changed.decision, changed.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        "ACQ.CONTEXT_INCONSISTENT",
    )
    assert first.next_action is not None
    await env.payer(first.next_action.url)
    after_paid = await env.adapter.create_payment(req)
    assert (after_paid.outcome, after_paid.channel_code) == (Outcome.SUCCEEDED, "TRADE_SUCCESS")


async def test_unsupported_method_fails_over(env: Env) -> None:
    result = await env.adapter.create_payment(env.payment(method="wechat_qr"))
    assert (result.outcome, result.decision) == (Outcome.SYSTEM_ERROR, Decision.FAILOVER)
    assert env.sim.core.orders == {}


# ---- cancel and close -------------------------------------------------------------------------


async def test_payer_cancel_fails_the_payment(env: Env) -> None:
    req, url = await env.create()
    # the HTML form, as a person would press the button
    async with env.http.post(url, data={"action": "cancel"}) as resp:
        assert resp.status == 200
        assert "TRADE_CLOSED" in await resp.text()
    await eventually(lambda: len(env.receiver.accepted) == 1)
    notification = env.receiver.accepted[0]
    assert (notification.kind, notification.result.outcome, notification.result.channel_code) == (
        NotificationKind.PAYMENT,
        Outcome.FAILED,
        "TRADE_CLOSED",
    )
    query = await env.adapter.query_payment(req.channel_order_id)
    assert (query.outcome, query.channel_code) == (Outcome.FAILED, "TRADE_CLOSED")
    status, body = await env.payer(url)
    assert (status, body["trade_status"]) == (409, "TRADE_CLOSED")


async def test_close(env: Env) -> None:
    req, url = await env.create()
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert (closed.outcome, closed.channel_code) == (Outcome.SUCCEEDED, "10000")
    query = await env.adapter.query_payment(req.channel_order_id)
    assert (query.outcome, query.channel_code) == (Outcome.FAILED, "TRADE_CLOSED")
    # closing again: Alipay says ACQ.TRADE_STATUS_ERROR, the adapter sees it is closed
    again = await env.adapter.close_payment(req.channel_order_id)
    assert (again.outcome, again.channel_code) == (Outcome.SUCCEEDED, "TRADE_CLOSED")
    status, _ = await env.payer(url)
    assert status == 409
    # nothing to close: a precreated code nobody scanned, at the real Alipay
    unknown = await env.adapter.close_payment("pay_never_created_1")
    assert (unknown.outcome, unknown.channel_code) == (Outcome.SUCCEEDED, "ACQ.TRADE_NOT_EXIST")
    assert env.receiver.accepted == []  # an API close sends no notification


async def test_close_after_payment_is_refused(env: Env) -> None:
    req = await env.paid()
    result = await env.adapter.close_payment(req.channel_order_id)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        "ACQ.TRADE_STATUS_ERROR",
    )


async def test_query_unknown_order_keeps_waiting(env: Env) -> None:
    result = await env.adapter.query_payment("pay_never_created_1")
    assert (result.outcome, result.channel_code) == (Outcome.WAITING, "ACQ.TRADE_NOT_EXIST")


# ---- refunds ----------------------------------------------------------------------------------


def refund_req(order: CreatePayment, refund_id: str, amount: int) -> CreateRefund:
    return CreateRefund(
        channel_order_id=order.channel_order_id,
        channel_refund_id=refund_id,
        amount=amount,
        total_amount=order.amount,
        currency="CNY",
        notify_url="unused",
        reason="customer asked",
    )


async def test_refunds(env: Env) -> None:
    order = await env.paid()
    early, _ = await env.create()
    not_paid = await env.adapter.refund(refund_req(early, "re_early", 100))
    assert (not_paid.outcome, not_paid.channel_code) == (Outcome.FAILED, "ACQ.TRADE_STATUS_ERROR")

    partial = await env.adapter.refund(refund_req(order, "re_1", 500))
    assert (partial.outcome, partial.amount, partial.channel_code) == (
        Outcome.SUCCEEDED,
        500,
        "10000",
    )
    await eventually(lambda: any(n.kind is NotificationKind.REFUND for n in env.receiver.accepted))
    refund_note = next(n for n in env.receiver.accepted if n.kind is NotificationKind.REFUND)
    assert refund_note.channel_order_id == order.channel_order_id
    assert refund_note.channel_refund_id == "re_1"
    assert refund_note.result.outcome is Outcome.SUCCEEDED
    assert refund_note.result.raw["refund_fee"] == "5.00"
    assert refund_note.result.raw["trade_status"] == "TRADE_SUCCESS"

    queried = await env.adapter.query_refund(order.channel_order_id, "re_1")
    assert (queried.outcome, queried.amount, queried.channel_code) == (
        Outcome.SUCCEEDED,
        500,
        "REFUND_SUCCESS",
    )

    # a repeat with the same out_request_no: fund_change=N, confirmed by a refund query
    repeat = await env.adapter.refund(refund_req(order, "re_1", 500))
    assert (repeat.outcome, repeat.amount) == (Outcome.SUCCEEDED, 500)
    assert order.channel_order_id in env.sim.core.orders
    assert len(env.sim.core.orders[order.channel_order_id].refunds) == 1
    discordant = await env.adapter.refund(refund_req(order, "re_1", 600))
    assert (discordant.outcome, discordant.channel_code) == (
        Outcome.FAILED,
        "ACQ.DISCORDANT_REPEAT_REQUEST",
    )

    too_much = await env.adapter.refund(refund_req(order, "re_2", 1500))
    assert (too_much.outcome, too_much.decision, too_much.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        "ACQ.REASON_TRADE_REFUND_FEE_ERR",
    )
    missing = await env.adapter.query_refund(order.channel_order_id, "re_2")
    assert (missing.outcome, missing.decision) == (Outcome.FAILED, Decision.RETRY)

    rest = await env.adapter.refund(refund_req(order, "re_3", 1499))
    assert (rest.outcome, rest.amount) == (Outcome.SUCCEEDED, 1499)
    # fully refunded: the trade is closed, but the payment did succeed
    query = await env.adapter.query_payment(order.channel_order_id)
    assert (query.outcome, query.channel_code) == (Outcome.SUCCEEDED, "TRADE_CLOSED")
    await eventually(
        lambda: len([n for n in env.receiver.accepted if n.kind is NotificationKind.REFUND]) == 2
    )
    last = [n for n in env.receiver.accepted if n.kind is NotificationKind.REFUND][-1]
    assert (
        last.channel_refund_id,
        last.result.raw["trade_status"],
        last.result.raw["refund_fee"],
    ) == (
        "re_3",
        "TRADE_CLOSED",
        "19.99",
    )
    after_close = await env.adapter.refund(refund_req(order, "re_4", 1))
    assert (after_close.outcome, after_close.channel_code) == (
        Outcome.FAILED,
        "ACQ.TRADE_HAS_CLOSE",
    )


# ---- notification modes -----------------------------------------------------------------------


async def test_notify_duplicate(env: Env) -> None:
    await env.faults(notify="duplicate")
    order = await env.paid()
    await eventually(lambda: len(env.notifications_for(order.channel_order_id)) == 2)
    first, second = env.notifications_for(order.channel_order_id)
    assert first.result.outcome is second.result.outcome is Outcome.SUCCEEDED
    assert env.receiver.fields(0)["notify_id"] == env.receiver.fields(1)["notify_id"]


async def test_notify_drop_query_still_tells(env: Env) -> None:
    await env.faults(notify="drop")
    req, url = await env.create()
    await env.payer(url)
    await asyncio.sleep(0.3)
    assert env.receiver.raw == []
    result = await env.adapter.query_payment(req.channel_order_id)
    assert result.outcome is Outcome.SUCCEEDED


async def test_notification_sent_again_until_success(env: Env) -> None:
    env.receiver.refuse_next = 1
    _, url = await env.create()
    await env.payer(url)
    await eventually(lambda: len(env.receiver.accepted) == 1)
    assert len(env.receiver.raw) == 2  # 4 minutes later at Alipay's pace, 0.24 s here
    assert env.receiver.fields(0)["notify_id"] == env.receiver.fields(1)["notify_id"]


async def test_forged_and_tampered_notifications_are_rejected(env: Env) -> None:
    await env.paid()
    genuine = env.receiver.fields(0)

    def incoming(
        fields: dict[str, str],
        method: str = "POST",
        content_type: str = "application/x-www-form-urlencoded",
    ) -> IncomingRequest:
        return IncomingRequest(
            method=method,
            path="/notify/alipay",
            headers={},
            body=urlencode(fields).encode(),
            content_type=content_type,
        )

    assert env.adapter.parse_notification(incoming(genuine)).result.outcome is Outcome.SUCCEEDED
    unsigned = {k: v for k, v in genuine.items() if k not in ("sign", "sign_type")}
    cases = {
        "tampered amount": {**genuine, "total_amount": "0.01"},
        "tampered status": {**genuine, "trade_status": "TRADE_CLOSED"},
        "no signature": {k: v for k, v in genuine.items() if k != "sign"},
        "signed by the app key": p.sign_notification(unsigned, APP_PRIVATE),
        "another app": p.sign_notification(
            {**unsigned, "app_id": "2021999999999999"}, ALIPAY_PRIVATE
        ),
        "not a trade_status_sync": p.sign_notification(
            {**unsigned, "notify_type": "x"}, ALIPAY_PRIVATE
        ),
    }
    for name, fields in cases.items():
        with pytest.raises(NotificationRejected):
            env.adapter.parse_notification(incoming(fields))
            pytest.fail(name)
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(incoming(genuine, method="GET"))
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(incoming(genuine, content_type="application/json"))
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(
            IncomingRequest(
                "POST", "/notify/alipay", {}, "a=订单".encode(), "application/x-www-form-urlencoded"
            )
        )
    assert env.adapter.ack(False).body == b"failure"
    assert env.adapter.ack(True).body == b"success"

    # a forged notification over HTTP: refused, answered "failure", and Alipay would resend
    async with env.http.post(
        env.notify_url,
        data=urlencode(cases["tampered amount"]).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    ) as resp:
        assert await resp.text() == "failure"
    assert env.receiver.rejected


# ---- faults and signatures ----------------------------------------------------------------------


async def test_error_rate_fails_over_at_create(env: Env) -> None:
    await env.faults(error_rate=1)
    req = env.payment()
    result = await env.adapter.create_payment(req)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "isp.unknow-error",
    )
    assert req.channel_order_id not in env.sim.core.orders
    query = await env.adapter.query_payment(req.channel_order_id)
    assert (query.outcome, query.decision) == (Outcome.UNKNOWN, Decision.RETRY)
    refund = await env.adapter.refund(refund_req(req, "re_x", 1))
    assert (refund.outcome, refund.decision) == (Outcome.UNKNOWN, Decision.RETRY)


async def test_timeout_is_unknown(env: Env) -> None:
    adapter = env.make_adapter(timeout_ms=300)
    await env.faults(timeout_rate=1)
    started = asyncio.get_running_loop().time()
    result = await adapter.create_payment(env.payment())
    assert asyncio.get_running_loop().time() - started < 1.5
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "TIMEOUT",
    )
    assert result.next_action is None


async def test_connection_refused_fails_over(env: Env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = env.make_adapter(base_url=f"http://127.0.0.1:{port}/sim/alipay", timeout_ms=1000)
    result = await adapter.create_payment(env.payment())
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "CONNECT_ERROR",
    )
    query = await adapter.query_payment("pay_x_1")
    assert query.outcome is Outcome.UNKNOWN


async def test_http_errors_and_dropped_connections(
    env: Env, aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]
) -> None:
    """A front door answering 502 (retried, then failed over: nothing was created) and a
    connection cut after the request was sent (UNKNOWN: it may have been created)."""
    hits = {"502": 0, "drop": 0}

    async def bad_gateway(request: web.Request) -> web.Response:
        hits["502"] += 1
        return web.Response(status=502, text="Bad Gateway")

    async def drop(request: web.Request) -> web.Response:
        hits["drop"] += 1
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response(text="never sent")

    app = web.Application()
    app.router.add_post("/502/gateway.do", bad_gateway)
    app.router.add_post("/drop/gateway.do", drop)
    server = await aiohttp_server(app)

    failing = env.make_adapter(base_url=str(server.make_url("/502")))
    result = await failing.create_payment(env.payment())
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "HTTP_ERROR",
    )
    assert hits["502"] == 2  # max_attempts: precreate is idempotent by out_trade_no
    query = await failing.query_payment("pay_x_1")
    assert (query.outcome, query.decision) == (Outcome.UNKNOWN, Decision.RETRY)

    dropping = env.make_adapter(base_url=str(server.make_url("/drop")), max_attempts=1)
    dropped = await dropping.create_payment(env.payment())
    assert (dropped.outcome, dropped.decision, dropped.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "CONNECTION_DROPPED",
    )
    refund = await dropping.refund(refund_req(env.payment(), "re_drop", 100))
    assert refund.outcome is Outcome.UNKNOWN


async def test_bad_response_signature_is_not_trusted(env: Env) -> None:
    # verify Alipay's answers with the wrong public key: nothing it says may be believed
    adapter = env.make_adapter(alipay_public_key_path=str(KEYS / "app_public_key.pem"))
    req = env.payment()
    with structlog.testing.capture_logs() as logs:
        result = await adapter.create_payment(req)
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "INVALID_SIGNATURE")
    assert result.next_action is None
    assert any(e["event"] == "alipay_response_signature_invalid" for e in logs)
    assert req.channel_order_id in env.sim.core.orders  # it was created: hence UNKNOWN
    query = await adapter.query_payment(req.channel_order_id)
    assert (query.outcome, query.channel_code) == (Outcome.UNKNOWN, "INVALID_SIGNATURE")


async def test_simulator_checks_request_signatures(env: Env) -> None:
    adapter = env.make_adapter(app_private_key_path="keys/alipay/alipay_private_key.pem")
    req = env.payment()
    result = await adapter.create_payment(req)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "isv.invalid-signature",
    )
    assert req.channel_order_id not in env.sim.core.orders
    # an unknown method: an unsigned error_response, as Alipay answers it
    async with env.http.post(
        env.config["base_url"] + "/gateway.do", data={"method": "alipay.nope"}
    ) as resp:
        body = await resp.json()
    assert body == {
        "error_response": {
            "code": "40002",
            "msg": "Invalid Arguments",
            "sub_code": "isv.invalid-method",
            "sub_msg": "不存在的方法名",
        }
    }


def test_config_is_validated() -> None:
    base = {
        "base_url": "http://127.0.0.1:1/sim/alipay",
        "app_id": APP_ID,
        "app_private_key_path": "keys/alipay/app_private_key.pem",
        "alipay_public_key_path": "keys/alipay/alipay_public_key.pem",
    }

    async def check() -> None:
        async with aiohttp.ClientSession() as http:
            ctx = AdapterContext(http, str(CONFIG_DIR))
            assert isinstance(build("a", base, ctx), AlipayAdapter)
            for bad in (
                {"surprise": 1},
                {"base_url": "ftp://x"},
                {"timeout_ms": 0},
                {"app_id": ""},
            ):
                with pytest.raises(pydantic.ValidationError):
                    build("a", {**base, **bad}, ctx)
            with pytest.raises(FileNotFoundError):
                build("a", {**base, "app_private_key_path": "keys/alipay/nope.pem"}, ctx)

    asyncio.run(check())


# ---- statements -------------------------------------------------------------------------------


async def test_statement_lists_payments_and_refunds(env: Env) -> None:
    paid = await env.paid()
    await env.adapter.refund(refund_req(paid, "re_s1", 500))
    other = await env.paid(amount=100)
    unpaid, _ = await env.create()

    lines = await env.statement()
    by_kind = {(x.kind, x.channel_order_id): x for x in lines}
    payment = by_kind[(StatementKind.PAYMENT, paid.channel_order_id)]
    trade_no = env.sim.core.orders[paid.channel_order_id].channel_trade_no
    assert (payment.amount, payment.status, payment.channel_trade_no, payment.fee) == (
        1999,
        "succeeded",
        trade_no,
        12,
    )
    refund = by_kind[(StatementKind.REFUND, paid.channel_order_id)]
    assert (refund.amount, refund.channel_refund_id, refund.status) == (500, "re_s1", "succeeded")
    assert (StatementKind.PAYMENT, other.channel_order_id) in by_kind
    assert all(x.channel_order_id != unpaid.channel_order_id for x in lines)
    assert len(lines) == 3

    await env.statement_faults(
        missing=[other.channel_order_id],
        extra=[{"channel_order_id": "ghost_1", "amount": 777}],
        amount={paid.channel_order_id: 1000},
        status={paid.channel_order_id: "TRADE_CLOSED"},
    )
    faulty = {(x.kind, x.channel_order_id): x for x in await env.statement()}
    assert (StatementKind.PAYMENT, other.channel_order_id) not in faulty
    assert faulty[(StatementKind.PAYMENT, "ghost_1")].amount == 777
    changed = faulty[(StatementKind.PAYMENT, paid.channel_order_id)]
    assert (changed.amount, changed.status) == (1000, "trade_closed")
    assert (StatementKind.REFUND, paid.channel_order_id) in faulty


async def test_statement_days(env: Env) -> None:
    await env.paid()
    today = p.china_date(datetime.now(UTC))
    yesterday = [x async for x in env.adapter.download_statement(today - timedelta(days=1))]
    assert yesterday == []
    with pytest.raises(StatementUnavailable):
        async for _ in env.adapter.download_statement(today + timedelta(days=2)):
            pass
    # the bill file itself: GBK, '#' header and footer lines, the real columns
    node = {"bill_type": "trade", "bill_date": today.isoformat()}
    params = p.sign_request(
        p.build_request(APP_ID, p.BILL_URL_QUERY, node, datetime.now(UTC)), APP_PRIVATE
    )
    async with env.http.post(env.config["base_url"] + "/gateway.do", data=params) as resp:
        url = p.extract_response(await resp.text(), p.BILL_URL_QUERY).node["bill_download_url"]
    async with env.http.get(url) as resp:
        assert resp.headers["Content-Type"] == "text/csv; charset=GBK"
        text = (await resp.read()).decode("gbk")
    lines = text.splitlines()
    assert lines[0] == "#支付宝业务明细查询"
    assert lines[4].startswith("支付宝交易号,商户订单号,业务类型")
    assert lines[-2] == "#交易合计：1笔，退款合计：0笔"
