"""The `unionpay` adapter against its simulator, in-process: QR application, payer, signed
notifications, queries, close (undo), refunds, faults, forged messages and the reconciliation
file. No database or Redis needed."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters import simkit
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
)
from adapters.simkit import SimulatorSettings
from adapters.unionpay import devkeys
from adapters.unionpay import protocol as p
from adapters.unionpay.adapter import UnionPayAdapter, build
from adapters.unionpay.simulator import SIMULATOR, UnionPaySimulator, build_app

CONFIG = Path(__file__).resolve().parents[3] / "config"
MER_ID = devkeys.DEV_MER_ID
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def gateway_id(prefix: str) -> str:
    """An id shaped like the gateway's (prefix, 10 characters of milliseconds, 14 random)."""
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(millis, 10)}{_encode(secrets.randbits(70), 14)}"


@dataclass
class Env:
    server_url: str
    http: aiohttp.ClientSession
    adapter: UnionPayAdapter
    sim: UnionPaySimulator
    notify_url: str
    notifications: list[Notification] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    def make_adapter(self, **overrides: Any) -> UnionPayAdapter:
        config = {"base_url": f"{self.server_url}/sim/unionpay", "mer_id": MER_ID}
        config |= overrides
        adapter = build("unionpay_test", config, AdapterContext(self.http, str(CONFIG)))
        assert isinstance(adapter, UnionPayAdapter)
        return adapter

    def payment(self, amount: int = 1999) -> CreatePayment:
        adapter = self.adapter
        return CreatePayment(
            channel_order_id=adapter.channel_order_id(gateway_id("pay"), 1),
            amount=amount,
            currency="CNY",
            method="unionpay_qr",
            description="Order A1001",
            notify_url=self.notify_url,
            expires_at=datetime.now(UTC) + timedelta(minutes=15),
        )

    async def payer(self, url: str, action: str) -> tuple[int, dict[str, Any]]:
        async with self.http.post(url, json={"action": action}) as resp:
            return resp.status, await resp.json()

    async def wait_for(self, predicate: Callable[[], bool], within: float = 3.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting")
            await asyncio.sleep(0.01)

    async def put(self, path: str, body: dict[str, Any]) -> None:
        async with self.http.put(f"{self.server_url}/sim/unionpay{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()


def _tamper_app(
    target: Callable[[], str], change: Callable[[dict[str, str]], None]
) -> web.Application:
    """A proxy in front of the simulator that alters its answers after they were signed."""

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                target() + "/" + request.match_info["tail"],
                data=body,
                headers={"Content-Type": request.headers["Content-Type"]},
            ) as resp:
                text = await resp.text()
        fields = p.parse_message(text)
        change(fields)
        return web.Response(text=p.encode_message(fields), content_type="text/plain")

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    return app


@pytest.fixture
async def env(aiohttp_server: Any) -> AsyncIterator[Env]:
    settings = SimulatorSettings(
        config_dir=str(CONFIG), notify_time_scale=0.001, timeout_sleep_s=0.6
    )
    parent = web.Application()
    sim_app = build_app(settings)
    simkit.mount(parent, "unionpay", sim_app)
    holder: dict[str, Env] = {}

    async def receive(request: web.Request) -> web.Response:
        current = holder["env"]
        body = await request.read()
        current.bodies.append(body)
        incoming = IncomingRequest(
            request.method, request.path, dict(request.headers), body, request.content_type
        )
        try:
            current.notifications.append(current.adapter.parse_notification(incoming))
            ack = current.adapter.ack(True)
        except NotificationRejected as exc:
            current.rejected.append(str(exc))
            ack = current.adapter.ack(False)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)

    parent.router.add_post("/notify/unionpay", receive)
    url_box: dict[str, str] = {}

    def strip_time(fields: dict[str, str]) -> None:
        fields["respMsg"] = "tampered"

    parent.add_subapp("/tamper", _tamper_app(lambda: url_box["sim"], strip_time))
    server = await aiohttp_server(parent)
    server_url = str(server.make_url("")).rstrip("/")
    url_box["sim"] = f"{server_url}/sim/unionpay"
    async with aiohttp.ClientSession() as http:
        env = Env(
            server_url=server_url,
            http=http,
            adapter=None,  # type: ignore[arg-type]
            sim=sim_app[SIMULATOR],
            notify_url=f"{server_url}/notify/unionpay",
        )
        env.adapter = env.make_adapter(timeout_ms=2000)
        holder["env"] = env
        yield env


async def _paid(env: Env, amount: int = 1999) -> tuple[CreatePayment, Notification]:
    req = env.payment(amount)
    created = await env.adapter.create_payment(req)
    assert created.outcome is Outcome.WAITING, created
    assert created.next_action is not None
    status, body = await env.payer(created.next_action.url, "pay")
    assert (status, body["status"]) == (200, "PAID")
    await env.wait_for(
        lambda: any(n.channel_order_id == req.channel_order_id for n in env.notifications)
    )
    note = next(n for n in env.notifications if n.channel_order_id == req.channel_order_id)
    return req, note


async def test_create_pay_notify_query(env: Env) -> None:
    req = env.payment(1999)
    assert len(req.channel_order_id) == 29 and req.channel_order_id.isalnum()
    created = await env.adapter.create_payment(req)
    assert created.outcome is Outcome.WAITING
    assert created.channel_code == "00"
    assert created.next_action is not None and created.next_action.type == "qr_code"
    assert created.next_action.url == (f"{env.server_url}/sim/unionpay/qr/{req.channel_order_id}")
    # the simulator's order book, also through the control route
    async with env.http.get(
        f"{env.server_url}/sim/unionpay/control/orders/{req.channel_order_id}"
    ) as resp:
        view = await resp.json()
    assert view["status"] == "WAITING" and view["amount"] == 1999
    assert view["extra"]["txnTime"] == p.attempt_txn_time(req.channel_order_id)

    before = await env.adapter.query_payment(req.channel_order_id)
    assert before.outcome is Outcome.WAITING and before.channel_code == "05"

    async with env.http.get(created.next_action.url) as resp:
        page = await resp.text()
    assert resp.status == 200 and "¥19.99" in page and req.channel_order_id in page

    status, body = await env.payer(created.next_action.url, "pay")
    assert status == 200 and body == {"orderId": req.channel_order_id, "status": "PAID"}
    await env.wait_for(lambda: len(env.notifications) == 1)
    note = env.notifications[0]
    assert note.kind is NotificationKind.PAYMENT
    assert note.channel_order_id == req.channel_order_id
    assert note.result.outcome is Outcome.SUCCEEDED
    assert note.result.amount == 1999
    assert note.result.channel_trade_no and len(note.result.channel_trade_no) == 21
    assert note.result.paid_at is not None
    assert abs((note.result.paid_at - datetime.now(UTC)).total_seconds()) < 60
    # the wire: a URL-encoded form carrying the signer certificate with CRLF line ends
    fields = p.parse_form(env.bodies[0])
    assert fields["signPubKeyCert"].startswith("-----BEGIN CERTIFICATE-----\r\n")
    assert fields["txnType"] == "01" and fields["txnSubType"] == "07"

    after = await env.adapter.query_payment(req.channel_order_id)
    assert after.outcome is Outcome.SUCCEEDED
    assert after.channel_trade_no == note.result.channel_trade_no
    assert after.amount == 1999
    assert after.raw["settleDate"] == fields["settleDate"]
    # paid twice is refused by the payer page
    status, body = await env.payer(created.next_action.url, "pay")
    assert status == 409 and body["status"] == "PAID"


async def test_cancel_fails_the_payment(env: Env) -> None:
    req = env.payment()
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    # a browser's form POST, answered with the page
    async with env.http.post(created.next_action.url, data={"action": "cancel"}) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "FAILED" in await resp.text()
    await env.wait_for(lambda: len(env.notifications) == 1)
    assert env.notifications[0].result.outcome is Outcome.FAILED
    assert env.notifications[0].result.channel_code == "01"
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert queried.outcome is Outcome.FAILED and queried.channel_code == "01"


async def test_close_then_query_says_failed(env: Env) -> None:
    req = env.payment()
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert closed.outcome is Outcome.SUCCEEDED and closed.channel_code == "00"
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert queried.outcome is Outcome.FAILED and queried.channel_code == "45"
    status, _ = await env.payer(created.next_action.url, "pay")
    assert status == 409
    # closing again is idempotent: already closed
    again = await env.adapter.close_payment(req.channel_order_id)
    assert again.outcome is Outcome.SUCCEEDED
    # an order that never reached UnionPay is closed as well (nothing can be paid)
    never = await env.adapter.close_payment(env.payment().channel_order_id)
    assert never.outcome is Outcome.SUCCEEDED and never.channel_code == "34"


async def test_close_of_a_paid_order_is_refused(env: Env) -> None:
    req, _ = await _paid(env)
    closed = await env.adapter.close_payment(req.channel_order_id)
    assert closed.outcome is Outcome.FAILED and closed.channel_code == "ORDER_PAID"
    assert env.sim.core.orders[req.channel_order_id].status == "PAID"  # no undo was sent


async def test_refund_notification_and_query(env: Env) -> None:
    req, paid = await _paid(env, 5000)
    refund_id = env.adapter.channel_refund_id(gateway_id("re"))
    assert len(refund_id) == 26 and refund_id.isalnum()
    refund = CreateRefund(
        channel_order_id=req.channel_order_id,
        channel_refund_id=refund_id,
        amount=1200,
        total_amount=5000,
        currency="CNY",
        notify_url=env.notify_url,
    )
    accepted = await env.adapter.refund(refund)
    assert accepted.outcome is Outcome.WAITING and accepted.channel_code == "00"
    assert accepted.channel_trade_no and accepted.channel_trade_no != paid.result.channel_trade_no
    await env.wait_for(lambda: any(n.kind is NotificationKind.REFUND for n in env.notifications))
    note = next(n for n in env.notifications if n.kind is NotificationKind.REFUND)
    assert note.channel_order_id == req.channel_order_id
    assert note.channel_refund_id == refund_id
    assert note.result.outcome is Outcome.SUCCEEDED and note.result.amount == 1200
    queried = await env.adapter.query_refund(req.channel_order_id, refund_id)
    assert queried.outcome is Outcome.SUCCEEDED
    assert queried.amount == 1200 and queried.channel_trade_no == accepted.channel_trade_no
    # the same refund again (a gateway retry): UnionPay answers 12, the adapter asks
    repeated = await env.adapter.refund(refund)
    assert repeated.outcome is Outcome.SUCCEEDED
    assert repeated.channel_trade_no == accepted.channel_trade_no
    assert sum(r.amount for r in env.sim.core.orders[req.channel_order_id].refunds.values()) == 1200
    # more than what is left is refused for good
    too_much = await env.adapter.refund(
        CreateRefund(
            req.channel_order_id,
            env.adapter.channel_refund_id(gateway_id("re")),
            4000,
            5000,
            "CNY",
            env.notify_url,
        )
    )
    assert too_much.outcome is Outcome.FAILED and too_much.decision is Decision.FINAL
    assert too_much.channel_code == "36"


async def test_refund_of_an_unpaid_payment_fails(env: Env) -> None:
    req = env.payment()
    await env.adapter.create_payment(req)
    result = await env.adapter.refund(
        CreateRefund(
            req.channel_order_id,
            env.adapter.channel_refund_id(gateway_id("re")),
            100,
            1999,
            "CNY",
            env.notify_url,
        )
    )
    assert result.outcome is Outcome.FAILED and result.channel_code == "35"


async def test_notify_duplicate_sends_two(env: Env) -> None:
    await env.put("/control/faults", {"notify": "duplicate"})
    req, _ = await _paid(env)
    await env.wait_for(lambda: len(env.notifications) == 2)
    assert [n.channel_order_id for n in env.notifications] == [req.channel_order_id] * 2
    assert env.notifications[0].result == env.notifications[1].result


async def test_notify_drop_sends_none_but_query_tells(env: Env) -> None:
    await env.put("/control/faults", {"notify": "drop"})
    req = env.payment()
    created = await env.adapter.create_payment(req)
    assert created.next_action is not None
    await env.payer(created.next_action.url, "pay")
    await asyncio.sleep(0.2)
    assert env.notifications == [] and env.sim.core.notifications_sent == 0
    queried = await env.adapter.query_payment(req.channel_order_id)
    assert queried.outcome is Outcome.SUCCEEDED and queried.amount == 1999


async def test_unacknowledged_notification_is_sent_again(env: Env) -> None:
    # the receiver refuses the first delivery; UnionPay retries on its schedule
    refusals = {"left": 1}
    original = env.adapter.parse_notification

    def flaky(request: IncomingRequest) -> Notification:
        if refusals["left"]:
            refusals["left"] -= 1
            raise NotificationRejected("not now")
        return original(request)

    env.adapter.parse_notification = flaky  # type: ignore[method-assign]
    _, note = await _paid(env)
    assert env.rejected == ["not now"]
    assert note.result.outcome is Outcome.SUCCEEDED
    assert env.sim.core.notifications_sent == 2


def _other_signer(cn: str) -> tuple[rsa.RSAPrivateKey, str]:
    """A signer with UnionPay's CN that does not chain to the trusted root."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])
    cert = devkeys.issue(name, key, name, key, ca=False, days=30)
    return key, p.cert_pem(cert)


async def test_forged_and_tampered_notifications_are_rejected(env: Env) -> None:
    await _paid(env)
    genuine = p.parse_form(env.bodies[0])

    def incoming(fields: dict[str, str]) -> IncomingRequest:
        return IncomingRequest(
            "POST",
            "/notify/unionpay",
            {"Content-Type": "application/x-www-form-urlencoded"},
            p.encode_form(fields),
            "application/x-www-form-urlencoded",
        )

    assert env.adapter.parse_notification(incoming(genuine)).result.amount == 1999
    tampered = genuine | {"txnAmt": "1"}
    with pytest.raises(NotificationRejected, match="signature"):
        env.adapter.parse_notification(incoming(tampered))
    unsigned = {k: v for k, v in genuine.items() if k != "signature"}
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(incoming(unsigned))
    key, pem = _other_signer("041@8310000000000001@中国银联股份有限公司@00000009")
    forged = p.sign_with_cert({k: v for k, v in genuine.items() if k != "signature"}, key, pem)
    with pytest.raises(NotificationRejected, match="chain"):
        env.adapter.parse_notification(incoming(forged))
    with pytest.raises(NotificationRejected):
        env.adapter.parse_notification(
            IncomingRequest("POST", "/", {}, b"\xff\xfe", "application/x-www-form-urlencoded")
        )
    # over HTTP the channel gets its own refusal (not 200: it will send again)
    async with env.http.post(
        env.notify_url,
        data=p.encode_form(tampered),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert resp.status == 500
    assert len(env.rejected) == 1


async def test_error_rate_fails_over(env: Env) -> None:
    await env.put("/control/faults", {"error_rate": 1})
    result = await env.adapter.create_payment(env.payment())
    assert result.outcome is Outcome.SYSTEM_ERROR
    assert result.decision is Decision.FAILOVER
    assert result.channel_code == "96"
    calls = []
    inject = env.sim.core.inject

    async def counting() -> simkit.FaultAction:
        calls.append(1)
        return await inject()

    env.sim.core.inject = counting  # type: ignore[method-assign]
    queried = await env.adapter.query_payment(env.payment().channel_order_id)
    assert queried.outcome is Outcome.UNKNOWN and queried.decision is Decision.RETRY
    assert queried.channel_code == "96"
    assert len(calls) == 2  # a query is safe to repeat: max_attempts (2) tries


async def test_timeout_is_unknown_and_query_resolves_it(env: Env) -> None:
    await env.put("/control/faults", {"timeout_rate": 1})
    adapter = env.make_adapter(timeout_ms=150)
    req = env.payment()
    started = time.monotonic()
    result = await adapter.create_payment(req)
    assert time.monotonic() - started < 0.5
    assert result.outcome is Outcome.UNKNOWN
    assert result.decision is not Decision.FAILOVER
    assert result.channel_code == "NO_ANSWER"
    await env.put("/control/faults", {"timeout_rate": 0})
    # the simulator went on and created the order after its delay: a query finds it
    await env.wait_for(lambda: req.channel_order_id in env.sim.core.orders)
    queried = await adapter.query_payment(req.channel_order_id)
    assert queried.outcome is Outcome.WAITING


async def test_connection_refused_fails_over(env: Env) -> None:
    async with aiohttp.ClientSession() as http:
        probe = web.Application()
        runner = web.AppRunner(probe)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await runner.cleanup()  # nothing listens there any more
        adapter = build(
            "unionpay_down",
            {"base_url": f"http://127.0.0.1:{port}/sim/unionpay", "mer_id": MER_ID},
            AdapterContext(http, str(CONFIG)),
        )
        result = await adapter.create_payment(env.payment())
    assert result.outcome is Outcome.SYSTEM_ERROR and result.decision is Decision.FAILOVER
    assert result.channel_code == "CONNECTION_FAILED"


async def test_bad_response_signature_is_not_trusted(env: Env) -> None:
    adapter = env.make_adapter(base_url=f"{env.server_url}/tamper")
    req = env.payment()
    with structlog.testing.capture_logs() as logs:
        created = await adapter.create_payment(req)
    assert created.outcome is Outcome.UNKNOWN
    assert created.channel_code == "INVALID_SIGNATURE"
    warning = next(e for e in logs if e["event"] == "unionpay_response_signature_invalid")
    assert warning["log_level"] == "warning" and "does not match" in warning["reason"]
    assert "BEGIN" not in repr(logs)  # no key or certificate material in the log
    assert created.next_action is None
    queried = await adapter.query_payment(req.channel_order_id)
    assert queried.outcome is Outcome.UNKNOWN and queried.channel_code == "INVALID_SIGNATURE"
    # the order exists all the same: the genuine answer says so
    assert (await env.adapter.query_payment(req.channel_order_id)).outcome is Outcome.WAITING


async def test_simulator_verifies_request_signatures(env: Env, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "041@x@someone@1")])
    cert = devkeys.issue(name, key, name, key, ca=False, days=30)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    adapter = env.make_adapter(
        sign_key_path=str(tmp_path / "key.pem"), sign_cert_path=str(tmp_path / "cert.pem")
    )
    req = env.payment()
    result = await adapter.create_payment(req)
    assert result.outcome is Outcome.SYSTEM_ERROR and result.decision is Decision.FAILOVER
    assert result.channel_code == "11"
    assert req.channel_order_id not in env.sim.core.orders


async def test_statement_lists_payment_and_refund_and_faults(env: Env) -> None:
    req, paid = await _paid(env, 3000)
    other, _ = await _paid(env, 700)
    refund_id = env.adapter.channel_refund_id(gateway_id("re"))
    await env.adapter.refund(
        CreateRefund(req.channel_order_id, refund_id, 1000, 3000, "CNY", env.notify_url)
    )
    await env.wait_for(lambda: any(n.kind is NotificationKind.REFUND for n in env.notifications))
    day = p.china_now().date()
    lines = [line async for line in env.adapter.download_statement(day)]
    payments = {x.channel_order_id: x for x in lines if x.kind is StatementKind.PAYMENT}
    refunds = [x for x in lines if x.kind is StatementKind.REFUND]
    assert payments[req.channel_order_id].amount == 3000
    assert payments[req.channel_order_id].channel_trade_no == paid.result.channel_trade_no
    assert payments[req.channel_order_id].status == "succeeded"
    assert payments[req.channel_order_id].fee == 3000 * 38 // 10_000
    assert payments[other.channel_order_id].amount == 700
    assert len(refunds) == 1
    assert refunds[0].channel_order_id == req.channel_order_id
    assert refunds[0].channel_refund_id == refund_id and refunds[0].amount == 1000
    # another day has none of them
    assert [line async for line in env.adapter.download_statement(day - timedelta(days=1))] == []

    extra_id = "ghost0000000000001"
    await env.put(
        "/control/statement",
        {
            "missing": [other.channel_order_id],
            "amount": {req.channel_order_id: 2999},
            "status": {refund_id: "01"},
            "extra": [{"channel_order_id": extra_id, "amount": 500}],
        },
    )
    faulty = [line async for line in env.adapter.download_statement(day)]
    by_id = {x.channel_refund_id or x.channel_order_id: x for x in faulty}
    assert other.channel_order_id not in by_id
    assert by_id[req.channel_order_id].amount == 2999
    assert by_id[refund_id].status == "failed"
    assert by_id[extra_id].amount == 500 and by_id[extra_id].kind is StatementKind.PAYMENT


async def test_statement_system_error_raises(env: Env) -> None:
    from adapters.unionpay.adapter import StatementUnavailable

    await env.put("/control/faults", {"error_rate": 1})
    with pytest.raises(StatementUnavailable, match="96"):
        [line async for line in env.adapter.download_statement(p.china_now().date())]


def test_build_validates_config() -> None:
    async def make(config: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as http:
            build("u", config, AdapterContext(http, str(CONFIG)))

    base = {"base_url": "http://127.0.0.1:1/sim/unionpay", "mer_id": MER_ID}
    asyncio.run(make(base))
    for bad in (
        base | {"unknown": 1},
        base | {"mer_id": "123"},
        base | {"base_url": "ftp://x"},
        base | {"sign_cert_path": "keys/unionpay/unionpay_sign_cert.pem"},  # not our key
        base | {"root_cert_path": "keys/unionpay/middle_ca.pem"},
        base | {"sign_key_path": "nope.pem"},
    ):
        with pytest.raises(ValueError):
            asyncio.run(make(bad))
