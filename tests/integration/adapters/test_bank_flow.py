"""The `bank` adapter against its simulator, in-process: create, pay on the hosted page,
notifications, query, close, refunds, faults, signatures and the statement."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters import simkit
from adapters.bank import protocol as p
from adapters.bank.adapter import BankAdapter, StatementUnavailable, build
from adapters.bank.simulator import SIMULATOR, BankSimulator, build_app
from adapters.base import (
    AdapterContext,
    ChannelResult,
    CreatePayment,
    CreateRefund,
    Decision,
    IncomingRequest,
    Notification,
    NotificationKind,
    NotificationRejected,
    Outcome,
    StatementKind,
)
from adapters.simkit import SimulatorSettings

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
CHANNEL = "bank_test"
MERCHANT = "M100200300"


@dataclass
class Receiver:
    """The gateway's notify endpoint, reduced to parse + ack."""

    adapter: BankAdapter | None = None
    accepted: list[Notification] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refuse_next: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        assert self.adapter is not None
        body = await request.read()
        self.raw.append((dict(request.headers), body))
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


@dataclass
class Env:
    adapter: BankAdapter
    sim: BankSimulator
    server: TestServer
    receiver: Receiver
    notify_url: str
    http: aiohttp.ClientSession
    config: dict[str, Any]

    def make_adapter(self, **changes: Any) -> BankAdapter:
        adapter = build(
            CHANNEL, {**self.config, **changes}, AdapterContext(self.http, str(CONFIG_DIR))
        )
        assert isinstance(adapter, BankAdapter)
        return adapter

    def payment(self, order_no: str | None = None, amount: int = 1999) -> CreatePayment:
        return CreatePayment(
            channel_order_id=order_no or f"pay_{secrets.token_hex(6)}_1",
            amount=amount,
            currency="CNY",
            method="card",
            description="Order A1001",
            notify_url=self.notify_url,
            expires_at=datetime.now(UTC) + timedelta(minutes=15),
            return_url="https://shop.example/done",
        )

    async def payer(self, url: str, action: str = "pay", **extra: str) -> dict[str, Any]:
        async with self.http.post(url, json={"action": action, **extra}) as resp:
            data: dict[str, Any] = await resp.json()
            data["http_status"] = resp.status
            return data

    async def faults(self, **patch: Any) -> None:
        url = self.server.make_url("/sim/bank/control/faults")
        async with self.http.put(url, json=patch) as resp:
            assert resp.status == 200

    async def created(self, amount: int = 1999) -> tuple[CreatePayment, ChannelResult]:
        req = self.payment(amount=amount)
        result = await self.adapter.create_payment(req)
        assert result.outcome is Outcome.WAITING
        return req, result

    async def paid(self, amount: int = 1999) -> tuple[CreatePayment, Notification]:
        req, result = await self.created(amount)
        assert result.next_action is not None
        await self.payer(result.next_action.url)
        notes = await wait_for(lambda: self.notes(req.channel_order_id))
        return req, notes[0]

    def notes(
        self, order_no: str, kind: NotificationKind = NotificationKind.PAYMENT
    ) -> list[Notification]:
        return [
            n for n in self.receiver.accepted if n.channel_order_id == order_no and n.kind is kind
        ]


async def wait_for(check: Callable[[], Any], within: float = 3.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def env(aiohttp_server: Any) -> AsyncIterator[Env]:
    parent = web.Application()
    sim_app = build_app(
        SimulatorSettings(config_dir=str(CONFIG_DIR), notify_time_scale=0.001, timeout_sleep_s=2)
    )
    simkit.mount(parent, "bank", sim_app)
    server = await aiohttp_server(parent)

    receiver = Receiver()
    receiver_app = web.Application()
    receiver_app.router.add_post(f"/notify/{CHANNEL}", receiver.handle)
    receiver_server = await aiohttp_server(receiver_app)

    http = aiohttp.ClientSession()
    config = {
        "base_url": str(server.make_url("/sim/bank")),
        "merchant_id": MERCHANT,
        "merchant_private_key": "keys/bank/merchant_private.pem",
        "bank_public_key": "keys/bank/bank_public.pem",
        "timeout_ms": 2000,
    }
    adapter = build(CHANNEL, config, AdapterContext(http=http, config_dir=str(CONFIG_DIR)))
    assert isinstance(adapter, BankAdapter)
    receiver.adapter = adapter
    yield Env(
        adapter=adapter,
        sim=sim_app[SIMULATOR],
        server=server,
        receiver=receiver,
        notify_url=str(receiver_server.make_url(f"/notify/{CHANNEL}")),
        http=http,
        config=config,
    )
    await http.close()


# ---- payments -----------------------------------------------------------------------------


async def test_create_pay_notify_query(env: Env) -> None:
    req, created = await env.created()
    assert created.decision is Decision.RETRY
    assert created.next_action is not None
    assert created.next_action.type == "redirect"
    assert created.next_action.url.endswith(f"/sim/bank/pay/{req.channel_order_id}")
    assert created.channel_trade_no

    async with env.http.get(created.next_action.url) as page:
        assert page.status == 200
        html = await page.text()
    assert req.channel_order_id in html and "CNY 19.99" in html and 'name="card_number"' in html

    waiting = await env.adapter.query_payment(req.channel_order_id)
    assert waiting.outcome is Outcome.WAITING

    answer = await env.payer(created.next_action.url)
    assert answer["http_status"] == 200
    assert answer["status"] == "SUCCESS" and answer["resp_code"] == "00"

    notes = await wait_for(lambda: env.notes(req.channel_order_id))
    note = notes[0]
    order = env.sim.core.orders[req.channel_order_id]
    assert note.kind is NotificationKind.PAYMENT
    assert note.result.outcome is Outcome.SUCCEEDED
    assert note.result.channel_trade_no == order.channel_trade_no == created.channel_trade_no
    assert note.result.amount == 1999
    assert note.result.paid_at is not None
    assert env.receiver.rejected == []

    paid = await env.adapter.query_payment(req.channel_order_id)
    assert paid.outcome is Outcome.SUCCEEDED
    assert paid.channel_trade_no == order.channel_trade_no
    assert paid.amount == 1999
    assert paid.paid_at == order.paid_at.replace(microsecond=0)  # type: ignore[union-attr]

    again = await env.payer(created.next_action.url)
    assert again["http_status"] == 409


async def test_create_is_idempotent_by_order_no(env: Env) -> None:
    req, first = await env.created()
    second = await env.adapter.create_payment(req)
    assert second.outcome is Outcome.WAITING
    assert second.channel_trade_no == first.channel_trade_no
    conflicting = await env.adapter.create_payment(replace(req, amount=1))
    assert conflicting.outcome is Outcome.FAILED
    assert conflicting.decision is Decision.FINAL
    assert conflicting.channel_code == "94"
    assert len(env.sim.core.orders) == 1


async def test_non_card_method_fails_over_without_calling(env: Env) -> None:
    result = await env.adapter.create_payment(replace(env.payment(), method="wechat_qr"))
    assert result.outcome is Outcome.SYSTEM_ERROR and result.decision is Decision.FAILOVER
    assert env.sim.core.orders == {}


@pytest.mark.parametrize("code", p.DECLINE_CODES)
async def test_declined_card_fails_final(env: Env, code: str) -> None:
    req, created = await env.created()
    assert created.next_action is not None
    answer = await env.payer(created.next_action.url, card_number=f"40000000000000{code}")
    assert answer["status"] == "FAILED" and answer["resp_code"] == code
    note = (await wait_for(lambda: env.notes(req.channel_order_id)))[0]
    assert note.result.outcome is Outcome.FAILED
    assert note.result.decision is Decision.FINAL
    assert note.result.channel_code == code
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert (queried.outcome, queried.channel_code) == (Outcome.FAILED, code)


async def test_card_form_post_renders_the_result(env: Env) -> None:
    req, created = await env.created()
    assert created.next_action is not None
    form = {"action": "pay", "card_number": "4000000000000051"}
    async with env.http.post(created.next_action.url, data=form) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assert "Insufficient funds (51)" in page and "https://shop.example/done" in page
    assert env.sim.core.orders[req.channel_order_id].status == "FAILED"
    async with env.http.get(created.next_action.url.replace(req.channel_order_id, "x")) as resp:
        assert resp.status == 404
    async with env.http.post(created.next_action.url, data={"action": "steal"}) as resp:
        assert resp.status == 400


async def test_processing_card_then_approved(env: Env) -> None:
    req, created = await env.created()
    assert created.next_action is not None
    answer = await env.payer(created.next_action.url, card_number=p.TEST_CARD_PROCESSING)
    assert answer["status"] == "PROCESSING"
    note = (await wait_for(lambda: env.notes(req.channel_order_id)))[0]
    assert note.result.outcome is Outcome.SUCCEEDED


async def test_cancel_fails(env: Env) -> None:
    req, created = await env.created()
    assert created.next_action is not None
    answer = await env.payer(created.next_action.url, action="cancel")
    assert answer["status"] == "FAILED"
    note = (await wait_for(lambda: env.notes(req.channel_order_id)))[0]
    assert note.result.outcome is Outcome.FAILED
    assert note.result.channel_code == "17"
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert queried.outcome is Outcome.FAILED
    # a failed order cannot be closed any more: the caller is told to look
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert (closed.outcome, closed.channel_code) == (Outcome.FAILED, "17")


async def test_close_then_query_and_pay(env: Env) -> None:
    req, created = await env.created()
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert closed.outcome is Outcome.SUCCEEDED
    again = await env.adapter.close_payment(req.channel_order_id)
    assert again.outcome is Outcome.SUCCEEDED
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert (queried.outcome, queried.channel_code) == (Outcome.FAILED, "CLOSED")
    assert created.next_action is not None
    answer = await env.payer(created.next_action.url)
    assert answer["http_status"] == 409 and answer["status"] == "CLOSED"


async def test_close_paid_order_is_refused(env: Env) -> None:
    req, _ = await env.paid()
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert (closed.outcome, closed.channel_code) == (Outcome.FAILED, "12")


async def test_close_before_create_reserves_the_number(env: Env) -> None:
    req = env.payment()
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert closed.outcome is Outcome.SUCCEEDED
    late = await env.adapter.create_payment(req)
    assert (late.outcome, late.channel_code) == (Outcome.FAILED, "12")
    missing = await env.adapter.query_payment(req.channel_order_id)
    assert (missing.outcome, missing.channel_code) == (Outcome.FAILED, "25")


async def test_expired_order_closes(env: Env) -> None:
    req = replace(env.payment(), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    await env.adapter.create_payment(req)
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert (queried.outcome, queried.channel_code) == (Outcome.FAILED, "CLOSED")


async def test_query_unknown_order_is_failed(env: Env) -> None:
    result = await env.adapter.query_payment("pay_never_1")
    assert (result.outcome, result.channel_code) == (Outcome.FAILED, "25")


# ---- refunds ------------------------------------------------------------------------------


async def test_refund_query_and_notification(env: Env) -> None:
    req, _ = await env.paid()
    refund = CreateRefund(
        channel_order_id=req.channel_order_id,
        channel_refund_id="re_a1",
        amount=500,
        total_amount=1999,
        currency="CNY",
        notify_url=env.notify_url,
        reason="customer asked",
    )
    done = await env.adapter.refund(refund)
    assert done.outcome is Outcome.SUCCEEDED
    assert done.amount == 500 and done.channel_trade_no

    note = (await wait_for(lambda: env.notes(req.channel_order_id, NotificationKind.REFUND)))[0]
    assert note.channel_refund_id == "re_a1"
    assert note.result.outcome is Outcome.SUCCEEDED
    assert note.result.channel_trade_no == done.channel_trade_no
    assert note.result.amount == 500

    queried = await env.adapter.query_refund(req.channel_order_id, "re_a1")
    assert queried.outcome is Outcome.SUCCEEDED
    assert queried.channel_trade_no == done.channel_trade_no

    repeat = await env.adapter.refund(refund)
    assert repeat.outcome is Outcome.SUCCEEDED
    assert repeat.channel_trade_no == done.channel_trade_no
    order = env.sim.core.orders[req.channel_order_id]
    assert len(order.refunds) == 1

    too_much = await env.adapter.refund(replace(refund, channel_refund_id="re_a2", amount=1500))
    assert (too_much.outcome, too_much.decision, too_much.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        "13",
    )
    unknown = await env.adapter.query_refund(req.channel_order_id, "re_none")
    assert (unknown.outcome, unknown.channel_code) == (Outcome.FAILED, "25")


async def test_refund_of_unpaid_order_is_refused(env: Env) -> None:
    req, _ = await env.created()
    result = await env.adapter.refund(
        CreateRefund(req.channel_order_id, "re_b1", 100, 1999, "CNY", env.notify_url)
    )
    assert (result.outcome, result.channel_code) == (Outcome.FAILED, "12")


# ---- notification modes -------------------------------------------------------------------


async def test_notify_duplicate_sends_twice(env: Env) -> None:
    await env.faults(notify="duplicate")
    req, _ = await env.paid()
    notes = await wait_for(
        lambda: len(env.notes(req.channel_order_id)) >= 2 and env.notes(req.channel_order_id)
    )
    assert len(notes) == 2
    assert all(n.result.outcome is Outcome.SUCCEEDED for n in notes)


async def test_notify_drop_sends_nothing_but_query_tells(env: Env) -> None:
    await env.faults(notify="drop")
    req, created = await env.created()
    assert created.next_action is not None
    await env.payer(created.next_action.url)
    await asyncio.sleep(0.1)
    assert env.receiver.raw == []
    result = await env.adapter.query_payment(req.channel_order_id)
    assert result.outcome is Outcome.SUCCEEDED


async def test_unacknowledged_notification_is_sent_again(env: Env) -> None:
    env.receiver.refuse_next = 1
    req, _ = await env.paid()
    assert len(env.receiver.raw) == 2  # refused once, accepted on the bank's retry
    assert len(env.notes(req.channel_order_id)) == 1


async def test_forged_and_tampered_notifications_are_rejected(env: Env) -> None:
    req, _ = await env.paid()
    headers, body = env.receiver.raw[0]

    def incoming(h: dict[str, str], b: bytes) -> IncomingRequest:
        return IncomingRequest("POST", f"/notify/{CHANNEL}", h, b, "application/json")

    assert env.adapter.parse_notification(incoming(headers, body)).result.amount == 1999
    tampered = body.replace(b'"amount":1999', b'"amount":1')
    assert tampered != body
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(incoming(headers, tampered))
    without = {k: v for k, v in headers.items() if k.lower() != "x-bank-signature"}
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(incoming(without, body))

    # signed by someone else's key
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ts, nonce = str(int(time.time())), secrets.token_urlsafe(24)
    forged = {
        p.HEADER_TIMESTAMP: ts,
        p.HEADER_NONCE: nonce,
        p.HEADER_SIGNATURE: p.sign(forger, p.notification_message(MERCHANT, ts, nonce, body)),
    }
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(incoming(forged, body))

    # correctly signed by the bank, but for another merchant
    other = orjson.loads(body)
    other["merchant_id"] = "M999"
    other_body = orjson.dumps(other)
    signed = {
        p.HEADER_TIMESTAMP: ts,
        p.HEADER_NONCE: nonce,
        p.HEADER_SIGNATURE: p.sign(
            env.sim.bank_key, p.notification_message("M999", ts, nonce, other_body)
        ),
    }
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(incoming(signed, other_body))

    # a forged POST to the endpoint is refused with a non-success ack
    bank_headers = {k: v for k, v in headers.items() if k.lower().startswith("x-bank-")}
    async with env.http.post(env.notify_url, data=tampered, headers=bank_headers) as resp:
        assert resp.status == 500
        assert (await resp.json())["code"] != "SUCCESS"
    assert env.receiver.rejected
    assert len(env.notes(req.channel_order_id)) == 1


# ---- faults -------------------------------------------------------------------------------


async def test_system_error_fails_over_on_create(env: Env) -> None:
    await env.faults(error_rate=1)
    req = env.payment()
    result = await env.adapter.create_payment(req)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "96",
    )
    assert env.sim.core.orders == {}
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert (queried.outcome, queried.decision, queried.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "96",
    )


async def test_timeout_is_unknown_and_never_fails_over(env: Env) -> None:
    await env.faults(timeout_rate=1)
    adapter = env.make_adapter(timeout_ms=200)
    req = env.payment()
    started = time.monotonic()
    result = await adapter.create_payment(req)
    assert time.monotonic() - started < 1.0
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "TIMEOUT",
    )
    await env.faults(timeout_rate=0)
    # the bank carried on after our timeout: the order exists, as a query later tells
    await wait_for(lambda: req.channel_order_id in env.sim.core.orders, within=4)
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert queried.outcome is Outcome.WAITING


async def test_connection_refused_fails_over(env: Env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = env.make_adapter(base_url=f"http://127.0.0.1:{port}/sim/bank")
    result = await adapter.create_payment(env.payment())
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "CONNECTION_ERROR",
    )
    queried = await adapter.query_payment("pay_x_1")
    assert queried.outcome is Outcome.UNKNOWN


async def test_bad_response_signature_is_not_trusted(env: Env, tmp_path: Path) -> None:
    wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "wrong_bank_public.pem"
    pem.write_bytes(
        wrong.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    adapter = env.make_adapter(bank_public_key=str(pem))
    req = env.payment()
    result = await adapter.create_payment(req)
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "INVALID_SIGNATURE")
    assert result.next_action is None
    # the bank did act, which is why the answer is UNKNOWN and not a failure
    assert req.channel_order_id in env.sim.core.orders


async def test_bank_refuses_bad_and_replayed_request_signatures(env: Env) -> None:
    path = "/sim/bank/api/v1/orders/pay_zz_1"
    ts, nonce = str(int(time.time())), secrets.token_urlsafe(24)
    key = env.adapter._merchant_key
    headers = {
        p.HEADER_MERCHANT: MERCHANT,
        p.HEADER_TIMESTAMP: ts,
        p.HEADER_NONCE: nonce,
        p.HEADER_SIGNATURE: p.sign(key, p.request_message("GET", path, ts, nonce, b"")),
    }
    url = env.server.make_url(path)
    async with env.http.get(url, headers=headers) as resp:
        assert resp.status == 404 and (await resp.json())["resp_code"] == "25"
    async with env.http.get(url, headers=headers) as resp:
        assert resp.status == 401 and (await resp.json())["resp_code"] == "63"
    bad = {**headers, p.HEADER_NONCE: secrets.token_urlsafe(24)}
    async with env.http.get(url, headers=bad) as resp:
        assert resp.status == 401 and (await resp.json())["resp_code"] == "63"


# ---- statement ----------------------------------------------------------------------------


async def test_statement_lists_payments_and_refunds_and_faults(env: Env) -> None:
    req, note = await env.paid(amount=1999)
    await env.adapter.refund(
        CreateRefund(req.channel_order_id, "re_s1", 300, 1999, "CNY", env.notify_url)
    )
    other, _ = await env.paid(amount=5000)
    unpaid, _ = await env.created(amount=700)
    day = datetime.now(p.CHINA_TZ).date()

    lines = [line async for line in env.adapter.download_statement(day)]
    by_kind = {(line.kind, line.channel_order_id): line for line in lines}
    payment = by_kind[(StatementKind.PAYMENT, req.channel_order_id)]
    assert payment.amount == 1999 and payment.status == "succeeded"
    assert payment.channel_trade_no == note.result.channel_trade_no
    assert payment.fee == 12
    refund = by_kind[(StatementKind.REFUND, req.channel_order_id)]
    assert refund.amount == 300 and refund.channel_refund_id == "re_s1"
    assert (StatementKind.PAYMENT, other.channel_order_id) in by_kind
    assert all(line.channel_order_id != unpaid.channel_order_id for line in lines)
    assert len(lines) == 3

    faults = {
        "missing": [other.channel_order_id],
        "extra": [{"channel_order_id": "pay_ghost_1", "amount": 4200}],
        "amount": {req.channel_order_id: 1998},
        "status": {req.channel_order_id: "FAILED"},
    }
    async with env.http.put(
        env.server.make_url("/sim/bank/control/statement"), json=faults
    ) as resp:
        assert resp.status == 200
    faulty = [line async for line in env.adapter.download_statement(day)]
    ids = {(line.kind, line.channel_order_id): line for line in faulty}
    assert (StatementKind.PAYMENT, other.channel_order_id) not in ids
    assert ids[(StatementKind.PAYMENT, "pay_ghost_1")].amount == 4200
    assert ids[(StatementKind.PAYMENT, req.channel_order_id)].amount == 1998
    assert ids[(StatementKind.PAYMENT, req.channel_order_id)].status == "failed"

    empty = [line async for line in env.adapter.download_statement(date(2020, 1, 1))]
    assert empty == []
    with pytest.raises(StatementUnavailable):
        _ = [line async for line in env.adapter.download_statement(day + timedelta(days=2))]


async def test_statement_with_bad_signature_is_refused(env: Env, tmp_path: Path) -> None:
    from adapters.base import ResponseVerificationError

    wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "wrong.pem"
    pem.write_bytes(
        wrong.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    await env.paid()
    adapter = env.make_adapter(bank_public_key=str(pem))
    with pytest.raises(ResponseVerificationError):
        _ = [line async for line in adapter.download_statement(datetime.now(p.CHINA_TZ).date())]
