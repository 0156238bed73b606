"""The wechat adapter against the wechat simulator, in process: payments, notifications,
close, refunds, faults, signatures and the trade bill."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters import simkit
from adapters.base import (
    AdapterContext,
    CreatePayment,
    CreateRefund,
    Decision,
    IncomingRequest,
    NotificationKind,
    NotificationRejected,
    Outcome,
    ResponseVerificationError,
    StatementKind,
)
from adapters.simkit import SimulatorSettings
from adapters.wechat import protocol as p
from adapters.wechat.adapter import WechatAdapter, build
from adapters.wechat.simulator import SIMULATOR, WechatSimulator, build_app

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "config"
KEYS = CONFIG_DIR / "keys" / "wechat"
MCHID = "1900000109"
APPID = "wxd678efh567hg6787"


@dataclass
class Receiver:
    """The gateway's notify endpoint, reduced: records every request, answers with the
    adapter's ack (or a failure while `fail_next` > 0)."""

    adapter: WechatAdapter | None = None
    requests: list[IncomingRequest] = field(default_factory=list)
    fail_next: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        incoming = IncomingRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=await request.read(),
            content_type=request.content_type,
        )
        self.requests.append(incoming)
        self.arrived.set()
        assert self.adapter is not None
        if self.fail_next > 0:
            self.fail_next -= 1
            ack = self.adapter.ack(False)
        else:
            try:
                self.adapter.parse_notification(incoming)
                ack = self.adapter.ack(True)
            except NotificationRejected:
                ack = self.adapter.ack(False)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)

    async def wait_for(self, count: int, within_s: float = 3.0) -> list[IncomingRequest]:
        async with asyncio.timeout(within_s):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests


@dataclass
class Env:
    base: str
    sim: WechatSimulator
    adapter: WechatAdapter
    receiver: Receiver
    http: aiohttp.ClientSession
    notify_url: str
    make_adapter: Callable[..., WechatAdapter]

    async def faults(self, **patch: Any) -> None:
        async with self.http.put(f"{self.base}/control/faults", json=patch) as resp:
            assert resp.status == 200, await resp.text()

    async def pay(self, url: str, action: str = "pay") -> dict[str, Any]:
        async with self.http.post(url, json={"action": action}) as resp:
            data: dict[str, Any] = await resp.json()
            data["_status"] = resp.status
            return data


def adapter_config(base: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "base_url": base,
        "mchid": MCHID,
        "appid": APPID,
        "merchant_private_key_path": "keys/wechat/apiclient_key.pem",
        "merchant_cert_path": "keys/wechat/apiclient_cert.pem",
        "platform_cert_path": "keys/wechat/platform_cert.pem",
        "apiv3_key_path": "keys/wechat/apiv3_key.txt",
        "timeout_ms": 3000,
    }
    config.update(overrides)
    return config


@pytest.fixture
async def env(aiohttp_server: Any) -> AsyncIterator[Env]:
    settings = SimulatorSettings(
        config_dir=str(CONFIG_DIR), notify_time_scale=0.001, timeout_sleep_s=2
    )
    sim_app = build_app(settings)
    receiver = Receiver()
    parent = web.Application()
    simkit.mount(parent, "wechat", sim_app)
    parent.router.add_post("/notify/wechat", receiver.handle)
    server = await aiohttp_server(parent)
    root = str(server.make_url("")).rstrip("/")
    base = f"{root}/sim/wechat"
    async with aiohttp.ClientSession() as http:
        ctx = AdapterContext(http=http, config_dir=str(CONFIG_DIR))

        def make_adapter(**overrides: Any) -> WechatAdapter:
            adapter = build("wechat_main", adapter_config(base, **overrides), ctx)
            assert isinstance(adapter, WechatAdapter)
            return adapter

        adapter = make_adapter()
        receiver.adapter = adapter
        yield Env(
            base=base,
            sim=sim_app[SIMULATOR],
            adapter=adapter,
            receiver=receiver,
            http=http,
            notify_url=f"{root}/notify/wechat",
            make_adapter=make_adapter,
        )


async def eventually(check: Callable[[], bool], within_s: float = 2.0) -> None:
    for _ in range(int(within_s / 0.005)):
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


_seq = 0


def payment(env: Env, amount: int = 1999, **kw: Any) -> CreatePayment:
    global _seq
    _seq += 1
    base = CreatePayment(
        channel_order_id=f"pay_{datetime.now(UTC):%H%M%S%f}_{_seq}",
        amount=amount,
        currency="CNY",
        method="wechat_qr",
        description="Order A1001",
        notify_url=env.notify_url,
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        payer_ip="203.0.113.9",
    )
    return replace(base, **kw)


async def paid_order(env: Env, amount: int = 1999) -> CreatePayment:
    req = payment(env, amount)
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    assert (await env.pay(created.next_action.url))["trade_state"] == "SUCCESS"
    await env.receiver.wait_for(len(env.receiver.requests) + 1)
    return req


# ---- the happy path ----------------------------------------------------------------------


async def test_create_pay_notification_query(env: Env) -> None:
    req = payment(env)
    created = await env.adapter.create_payment(req)
    assert created.outcome is Outcome.WAITING
    assert created.next_action is not None
    assert created.next_action.type == "qr_code"
    assert created.next_action.url.startswith(f"{env.base}/qr/")

    before = await env.adapter.query_payment(req.channel_order_id)
    assert (before.outcome, before.channel_code) == (Outcome.WAITING, "NOTPAY")
    assert before.amount == 1999 and before.channel_trade_no is None

    async with env.http.get(created.next_action.url) as resp:
        page = await resp.text()
        assert resp.status == 200 and req.channel_order_id in page and "19.99" in page

    answer = await env.pay(created.next_action.url)
    assert answer == {
        "out_trade_no": req.channel_order_id,
        "trade_state": "SUCCESS",
        "_status": 200,
    }

    [incoming] = await env.receiver.wait_for(1)
    assert incoming.headers["Wechatpay-Signature-Type"] == p.SCHEMA
    note = env.adapter.parse_notification(incoming)
    assert note.kind is NotificationKind.PAYMENT
    assert note.channel_order_id == req.channel_order_id
    assert note.result.outcome is Outcome.SUCCEEDED
    assert note.result.amount == 1999
    order = env.sim.core.orders[req.channel_order_id]
    assert note.result.channel_trade_no == order.channel_trade_no
    assert note.result.paid_at is not None
    await eventually(lambda: env.sim.core.notifications_sent == 1)
    await asyncio.sleep(0.05)
    assert env.sim.core.notifications_sent == 1  # acknowledged the first time: no retry

    after = await env.adapter.query_payment(req.channel_order_id)
    assert (after.outcome, after.channel_code) == (Outcome.SUCCEEDED, "SUCCESS")
    assert after.channel_trade_no == order.channel_trade_no and after.amount == 1999
    assert after.paid_at == note.result.paid_at

    async with env.http.get(f"{env.base}/control/orders/{req.channel_order_id}") as resp:
        view = await resp.json()
        assert view["status"] == "SUCCESS" and view["amount"] == 1999


async def test_create_repeats_are_idempotent_and_conflicts_final(env: Env) -> None:
    req = payment(env)
    first = await env.adapter.create_payment(req)
    again = await env.adapter.create_payment(req)
    assert first.next_action == again.next_action and again.outcome is Outcome.WAITING
    other = await env.adapter.create_payment(replace(req, amount=5))
    assert (other.outcome, other.decision) == (Outcome.FAILED, Decision.FINAL)
    assert other.channel_code == p.OUT_TRADE_NO_USED
    assert len(env.sim.core.orders) == 1


async def test_invalid_parameters_are_a_final_refusal(env: Env) -> None:
    result = await env.adapter.create_payment(payment(env, currency="USD"))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        p.PARAM_ERROR,
    )
    assert env.sim.core.orders == {}


async def test_cancel_fails_the_payment_without_notification(env: Env) -> None:
    req = payment(env)
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    async with env.http.post(created.next_action.url, data={"action": "cancel"}) as resp:
        assert resp.status == 200 and "PAYERROR" in await resp.text()
    result = await env.adapter.query_payment(req.channel_order_id)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        "PAYERROR",
    )
    assert (await env.pay(created.next_action.url))["_status"] == 409
    await asyncio.sleep(0.1)
    assert env.receiver.requests == []


async def test_close_then_query_says_closed(env: Env) -> None:
    req = payment(env)
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert closed.outcome is Outcome.SUCCEEDED
    assert (await env.adapter.close_payment(req.channel_order_id)).outcome is Outcome.SUCCEEDED
    result = await env.adapter.query_payment(req.channel_order_id)
    assert (result.outcome, result.channel_code) == (Outcome.FAILED, "CLOSED")
    answer = await env.pay(created.next_action.url)
    assert answer["_status"] == 409 and answer["trade_state"] == "CLOSED"
    recreate = await env.adapter.create_payment(req)
    assert (recreate.outcome, recreate.channel_code) == (Outcome.FAILED, p.ORDER_CLOSED)


async def test_close_paid_order_is_refused(env: Env) -> None:
    req = await paid_order(env)
    result = await env.adapter.close_payment(req.channel_order_id)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        p.ORDERPAID,
    )


async def test_query_unknown_order_is_failed(env: Env) -> None:
    result = await env.adapter.query_payment("never_created_1")
    assert (result.outcome, result.channel_code) == (Outcome.FAILED, p.ORDER_NOT_EXIST)


async def test_expired_order_cannot_be_paid(env: Env) -> None:
    req = payment(env, expires_at=datetime.now(UTC) + timedelta(seconds=1))
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    env.sim.core.orders[req.channel_order_id].extra["time_expire"] = p.format_time(
        datetime.now(UTC) - timedelta(seconds=1)
    )
    assert (await env.pay(created.next_action.url))["_status"] == 409
    result = await env.adapter.query_payment(req.channel_order_id)
    assert (result.outcome, result.channel_code) == (Outcome.WAITING, "NOTPAY")


# ---- refunds -----------------------------------------------------------------------------


def refund_req(req: CreatePayment, refund_id: str, amount: int) -> CreateRefund:
    return CreateRefund(
        channel_order_id=req.channel_order_id,
        channel_refund_id=refund_id,
        amount=amount,
        total_amount=req.amount,
        currency="CNY",
        notify_url=req.notify_url,
        reason="customer asked",
    )


async def test_refund_notification_and_query(env: Env) -> None:
    req = await paid_order(env, 1000)
    refund = refund_req(req, "re_A1", 400)
    result = await env.adapter.refund(refund)
    assert (result.outcome, result.channel_code) == (Outcome.WAITING, "PROCESSING")
    assert result.amount == 400 and result.channel_trade_no

    again = await env.adapter.refund(refund)  # the same out_refund_no: the same refund
    assert again.channel_trade_no == result.channel_trade_no

    incoming = (await env.receiver.wait_for(2))[1]
    note = env.adapter.parse_notification(incoming)
    assert note.kind is NotificationKind.REFUND
    assert (note.channel_order_id, note.channel_refund_id) == (req.channel_order_id, "re_A1")
    assert note.result.outcome is Outcome.SUCCEEDED and note.result.amount == 400
    assert note.result.channel_trade_no == result.channel_trade_no

    queried = await env.adapter.query_refund(req.channel_order_id, "re_A1")
    assert (queried.outcome, queried.amount) == (Outcome.SUCCEEDED, 400)
    assert queried.paid_at is not None

    payment_now = await env.adapter.query_payment(req.channel_order_id)
    assert (payment_now.outcome, payment_now.channel_code) == (Outcome.SUCCEEDED, "REFUND")

    too_much = await env.adapter.refund(refund_req(req, "re_A2", 601))
    assert (too_much.outcome, too_much.decision, too_much.channel_code) == (
        Outcome.FAILED,
        Decision.FINAL,
        p.INVALID_REQUEST,
    )
    rest = await env.adapter.refund(refund_req(req, "re_A3", 600))
    assert rest.outcome in (Outcome.WAITING, Outcome.SUCCEEDED)

    missing = await env.adapter.query_refund(req.channel_order_id, "re_nope")
    assert (missing.outcome, missing.channel_code) == (Outcome.FAILED, p.RESOURCE_NOT_EXISTS)


async def test_refund_of_unpaid_order_is_refused(env: Env) -> None:
    req = payment(env)
    await env.adapter.create_payment(req)
    result = await env.adapter.refund(refund_req(req, "re_B1", 100))
    assert (result.outcome, result.decision) == (Outcome.FAILED, Decision.FINAL)
    unknown = await env.adapter.refund(refund_req(payment(env), "re_B2", 100))
    assert unknown.channel_code == p.RESOURCE_NOT_EXISTS


# ---- notification modes ------------------------------------------------------------------


async def test_duplicate_mode_sends_two_notifications(env: Env) -> None:
    await env.faults(notify="duplicate")
    req = payment(env)
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    await env.pay(created.next_action.url)
    first, second = await env.receiver.wait_for(2)
    a, b = (env.adapter.parse_notification(x) for x in (first, second))
    assert a.channel_order_id == b.channel_order_id == req.channel_order_id
    assert a.result.outcome is b.result.outcome is Outcome.SUCCEEDED
    assert json.loads(first.body)["id"] == json.loads(second.body)["id"]  # the same event


async def test_drop_mode_sends_nothing_but_query_tells_the_truth(env: Env) -> None:
    await env.faults(notify="drop")
    req = payment(env)
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    await env.pay(created.next_action.url)
    await asyncio.sleep(0.2)
    assert env.receiver.requests == []
    result = await env.adapter.query_payment(req.channel_order_id)
    assert result.outcome is Outcome.SUCCEEDED


async def test_refused_notification_is_sent_again(env: Env) -> None:
    env.receiver.fail_next = 2
    req = payment(env)
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    await env.pay(created.next_action.url)
    requests = await env.receiver.wait_for(3)  # 15 s and 15 s scaled by 0.001
    assert len({json.loads(r.body)["id"] for r in requests}) == 1
    assert env.adapter.parse_notification(requests[-1]).result.outcome is Outcome.SUCCEEDED
    ack = env.adapter.ack(False)
    assert ack.status == 500 and json.loads(ack.body)["code"] == "FAIL"


async def test_forged_and_tampered_notifications_are_rejected(env: Env) -> None:
    await paid_order(env)
    genuine = env.receiver.requests[0]
    env.adapter.parse_notification(genuine)  # the genuine one passes

    envelope = json.loads(genuine.body)
    envelope["event_type"] = "TRANSACTION.SUCCESS "  # tampered body, old signature
    tampered = replace(genuine, body=json.dumps(envelope).encode())
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(tampered)

    # A forger with a key of its own: right serial, wrong key.
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = p.build_notification(
        apiv3_key=env.sim.keys.apiv3_key,
        event_id="EV-forged",
        create_time=datetime.now(UTC),
        event_type=p.EVENT_TRANSACTION_SUCCESS,
        summary="支付成功",
        original_type="transaction",
        resource={"mchid": MCHID, "out_trade_no": "x", "trade_state": "SUCCESS"},
    )
    headers = p.sign_headers(forger, env.sim.keys.platform_serial, body)
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(replace(genuine, headers=headers, body=body))

    # Signed by the platform but encrypted with another APIv3 key.
    body = p.build_notification(
        apiv3_key=b"0" * 32,
        event_id="EV-wrong-key",
        create_time=datetime.now(UTC),
        event_type=p.EVENT_TRANSACTION_SUCCESS,
        summary="支付成功",
        original_type="transaction",
        resource={"mchid": MCHID, "out_trade_no": "x", "trade_state": "SUCCESS"},
    )
    headers = p.sign_headers(env.sim.keys.platform_key, env.sim.keys.platform_serial, body)
    with pytest.raises(NotificationRejected, match="decrypt"):
        env.adapter.parse_notification(replace(genuine, headers=headers, body=body))

    # A replay of a genuine notification, signed long ago.
    stale = p.sign_headers(
        env.sim.keys.platform_key,
        env.sim.keys.platform_serial,
        genuine.body,
        timestamp=int(datetime.now(UTC).timestamp()) - 3600,
    )
    with pytest.raises(NotificationRejected, match="window"):
        env.adapter.parse_notification(replace(genuine, headers=stale))

    unsigned = {k: v for k, v in genuine.headers.items() if k != "Wechatpay-Signature"}
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(replace(genuine, headers=unsigned))


# ---- faults ------------------------------------------------------------------------------


async def test_error_rate_gives_system_error_and_failover(env: Env) -> None:
    await env.faults(error_rate=1)
    req = payment(env)
    result = await env.adapter.create_payment(req)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        p.SYSTEM_ERROR,
    )
    assert env.sim.core.orders == {}  # nothing was created
    query = await env.adapter.query_payment(req.channel_order_id)
    assert (query.outcome, query.decision) == (Outcome.UNKNOWN, Decision.RETRY)
    await env.faults(error_rate=0)
    assert (await env.adapter.create_payment(req)).outcome is Outcome.WAITING


async def test_timeout_is_unknown_never_failover(env: Env) -> None:
    await env.faults(timeout_rate=1)
    adapter = env.make_adapter(timeout_ms=200)
    result = await adapter.create_payment(payment(env))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        p.TIMEOUT,
    )


async def test_connection_refused_before_sending_fails_over(env: Env) -> None:
    adapter = env.make_adapter(base_url="http://127.0.0.1:9/sim/wechat", timeout_ms=1000)
    result = await adapter.create_payment(payment(env))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        p.CONNECTION_REFUSED,
    )
    query = await adapter.query_payment("whatever_1")
    assert query.outcome is Outcome.UNKNOWN


async def test_connection_dropped_after_sending_is_unknown(env: Env, aiohttp_server: Any) -> None:
    hits: list[str] = []

    async def hang_up(request: web.Request) -> web.Response:
        hits.append(request.path)
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    dropper = web.Application()
    dropper.router.add_post("/v3/pay/transactions/native", hang_up)
    server = await aiohttp_server(dropper)
    adapter = env.make_adapter(base_url=str(server.make_url("")).rstrip("/"))
    result = await adapter.create_payment(payment(env))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        p.CONNECTION_ERROR,
    )
    assert len(hits) == 3  # retried (create is idempotent by out_trade_no), then gave up


def _impostor_cert(tmp_path: Path, serial: int) -> Path:
    """A certificate with the platform's serial but another key: answers signed with the real
    platform key no longer verify against it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "impostor")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "impostor.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def test_bad_response_signature_is_not_trusted(env: Env, tmp_path: Path) -> None:
    serial = env.sim.keys.platform_cert.serial_number
    adapter = env.make_adapter(platform_cert_path=str(_impostor_cert(tmp_path, serial)))
    req = payment(env)
    created = await adapter.create_payment(req)
    assert (created.outcome, created.decision, created.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        p.INVALID_SIGNATURE,
    )
    assert created.next_action is None
    # The order does exist at the channel: the genuine adapter sees it.
    assert (await env.adapter.query_payment(req.channel_order_id)).outcome is Outcome.WAITING
    queried = await adapter.query_payment(req.channel_order_id)
    assert (queried.outcome, queried.channel_code) == (Outcome.UNKNOWN, p.INVALID_SIGNATURE)
    closed = await adapter.close_payment(req.channel_order_id)
    assert closed.outcome is Outcome.UNKNOWN


async def test_wrong_merchant_key_is_sign_error(env: Env, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "other_key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    serial = env.adapter._keys.merchant_serial
    adapter = env.make_adapter(
        merchant_private_key_path=str(path),
        merchant_cert_path=None,
        merchant_cert_serial_no=serial,
    )
    result = await adapter.create_payment(payment(env))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        p.SIGN_ERROR,
    )
    assert env.sim.core.orders == {}


# ---- the trade bill ----------------------------------------------------------------------


async def test_statement_lists_payment_and_refund_and_faults(env: Env) -> None:
    paid = await paid_order(env, 1999)
    other = await paid_order(env, 500)
    await env.adapter.refund(refund_req(paid, "re_S1", 999))
    unpaid = payment(env)
    await env.adapter.create_payment(unpaid)
    today = p.china_date(datetime.now(UTC))

    lines = [line async for line in env.adapter.download_statement(today)]
    payments = {x.channel_order_id: x for x in lines if x.kind is StatementKind.PAYMENT}
    refunds = [x for x in lines if x.kind is StatementKind.REFUND]
    assert set(payments) == {paid.channel_order_id, other.channel_order_id}
    line = payments[paid.channel_order_id]
    assert (line.amount, line.status, line.fee) == (1999, "success", 12)
    assert line.channel_trade_no == env.sim.core.orders[paid.channel_order_id].channel_trade_no
    assert line.occurred_at is not None
    [refund] = refunds
    assert (refund.channel_order_id, refund.channel_refund_id, refund.amount) == (
        paid.channel_order_id,
        "re_S1",
        999,
    )
    assert refund.status in ("processing", "success")

    async with env.http.put(
        f"{env.base}/control/statement",
        json={
            "missing": [other.channel_order_id],
            "extra": [{"channel_order_id": "ghost_order_1", "amount": 123}],
            "amount": {paid.channel_order_id: 1998},
            "status": {paid.channel_order_id: "REVOKED"},
        },
    ) as resp:
        assert resp.status == 200
    lines = [line async for line in env.adapter.download_statement(today)]
    payments = {x.channel_order_id: x for x in lines if x.kind is StatementKind.PAYMENT}
    assert set(payments) == {paid.channel_order_id, "ghost_order_1"}
    assert (payments[paid.channel_order_id].amount, payments[paid.channel_order_id].status) == (
        1998,
        "revoked",
    )
    assert payments["ghost_order_1"].amount == 123


async def test_statement_of_a_quiet_day_is_empty(env: Env) -> None:
    yesterday = p.china_date(datetime.now(UTC)) - timedelta(days=1)
    assert [line async for line in env.adapter.download_statement(yesterday)] == []


async def test_statement_hash_mismatch_is_refused(env: Env) -> None:
    await paid_order(env)
    sim = env.sim
    today = p.china_date(datetime.now(UTC))
    # Corrupt every stored bill right after the signed answer gives its hash.
    real_tradebill_answer = sim._answer

    def answer(status: int, data: Any) -> web.Response:
        response = real_tradebill_answer(status, data)
        for bill in sim.bills.values():
            bill.content = bill.content.replace(b"SUCCESS", b"REVOKED")
        return response

    sim._answer = answer  # type: ignore[method-assign]
    with pytest.raises(ResponseVerificationError):
        _ = [line async for line in env.adapter.download_statement(today)]


# ---- configuration -----------------------------------------------------------------------


async def test_config_is_validated_without_leaking_secrets() -> None:
    async with aiohttp.ClientSession() as http:
        ctx = AdapterContext(http=http, config_dir=str(CONFIG_DIR))
        base = "http://127.0.0.1:1/sim/wechat"
        secret = "S3cretS3cretS3cretS3cretS3cret!!"
        with pytest.raises(ValueError) as info:
            build("w", adapter_config(base, apiv3_key=secret), ctx)  # and apiv3_key_path
        assert "exactly one" in str(info.value) and secret not in str(info.value)
        with pytest.raises(ValueError, match="extra"):
            build("w", adapter_config(base, surprise=1), ctx)
        with pytest.raises(ValueError, match="base_url"):
            build("w", adapter_config("ftp://x"), ctx)
        with pytest.raises(ValueError, match="does not match"):
            build("w", adapter_config(base, merchant_cert_serial_no="ABCDEF"), ctx)
        with pytest.raises(ValueError, match="32 bytes"):
            build("w", adapter_config(base, apiv3_key_path=None, apiv3_key="short"), ctx)
        inline = build(
            "w",
            adapter_config(
                base, apiv3_key_path=None, apiv3_key=(KEYS / "apiv3_key.txt").read_text().strip()
            ),
            ctx,
        )
        assert isinstance(inline, WechatAdapter)
        assert build("w", adapter_config(base, mchid=1900000109), ctx).cfg.mchid == MCHID  # type: ignore[attr-defined]
        assert inline.channel_order_id("pay_x", 1) == "pay_x_1"
        refused = await inline.create_payment(
            CreatePayment(
                channel_order_id="pay_x_1",
                amount=1,
                currency="CNY",
                method="alipay_qr",
                description="d",
                notify_url="http://127.0.0.1:1/n",
                expires_at=datetime.now(UTC),
            )
        )
        assert (refused.outcome, refused.decision) == (Outcome.SYSTEM_ERROR, Decision.FAILOVER)
