"""Our Alipay simulator and protocol against the real python-alipay-sdk (module `alipay`).

The SDK is synchronous (urllib), so the simulator runs on a real port in a background thread
with its own event loop. The SDK is pointed at the simulator without modifying the package: it
keeps its gateway URL in the instance attribute `_gateway` (set in `BaseAliPay.__init__` to
`https://openapi.alipay.com/gateway.do`, or the sandbox's when `debug=True`), and we assign
`<simulator>/gateway.do` to it after construction. It then sends every call as a GET with all
parameters in the query string, which the simulator accepts like the real gateway.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from alipay import AliPay
from alipay.exceptions import AliPayValidationError

from adapters import simkit
from adapters.alipay import protocol as p
from adapters.alipay.simulator import SIMULATOR, AlipaySimulator, build_app
from adapters.simkit import SimulatorSettings

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
KEYS = CONFIG_DIR / "keys" / "alipay"
APP_ID = "2021000000000001"
APP_PRIVATE_PEM = (KEYS / "app_private_key.pem").read_text()
ALIPAY_PUBLIC_PEM = (KEYS / "alipay_public_key.pem").read_text()
APP_PRIVATE = p.load_private_key(APP_PRIVATE_PEM.encode())
APP_PUBLIC = p.load_public_key((KEYS / "app_public_key.pem").read_bytes())
ALIPAY_PRIVATE = p.load_private_key((KEYS / "alipay_private_key.pem").read_bytes())


@dataclass
class Background:
    """The simulator and a notification receiver on 127.0.0.1:<port>, in their own thread."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    received: list[bytes] = field(default_factory=list)
    runner: web.AppRunner | None = None
    sim: AlipaySimulator | None = None
    base: str = ""
    thread: threading.Thread | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        self.received.append(await request.read())
        return web.Response(text="success")

    async def _start(self) -> str:
        parent = web.Application()
        sim_app = build_app(
            SimulatorSettings(
                config_dir=str(CONFIG_DIR), notify_time_scale=0.001, timeout_sleep_s=2
            )
        )
        simkit.mount(parent, "alipay", sim_app)
        self.sim = sim_app[SIMULATOR]
        parent.router.add_post("/notify/alipay", self._receive)
        self.runner = web.AppRunner(parent)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.base = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)
        self.loop.close()

    def notifications_for(self, out_trade_no: str) -> list[dict[str, str]]:
        forms = [dict(parse_qsl(body.decode("ascii"))) for body in list(self.received)]
        return [f for f in forms if f.get("out_trade_no") == out_trade_no]


@pytest.fixture(scope="module")
def background() -> Iterator[Background]:
    server = Background()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_sdk(background: Background, app_private_pem: str = APP_PRIVATE_PEM) -> AliPay:
    sdk = AliPay(
        appid=APP_ID,
        app_notify_url=f"{background.base}/notify/alipay",
        app_private_key_string=app_private_pem,
        alipay_public_key_string=ALIPAY_PUBLIC_PEM,
        sign_type="RSA2",
        debug=False,
    )
    assert sdk._gateway == "https://openapi.alipay.com/gateway.do"
    sdk._gateway = f"{background.base}/sim/alipay/gateway.do"  # the SDK's gateway URL
    return sdk


def pay_as_buyer(url: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps({"action": "pay"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def wait_for(predicate: Any, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_sdk_precreate_query_pay_and_verify_notification(background: Background) -> None:
    sdk = make_sdk(background)
    out_trade_no = f"pay_sdk{secrets.token_hex(4)}_1"

    created = sdk.api_alipay_trade_precreate(
        subject="SDK 订单", out_trade_no=out_trade_no, total_amount="12.34"
    )
    assert created["code"] == "10000", created
    assert created["out_trade_no"] == out_trade_no
    assert created["qr_code"].startswith(f"{background.base}/sim/alipay/qr/")
    assert background.sim is not None
    order = background.sim.core.orders[out_trade_no]
    assert (order.amount, order.description) == (1234, "SDK 订单")
    assert order.notify_url == f"{background.base}/notify/alipay"

    waiting = sdk.api_alipay_trade_query(out_trade_no=out_trade_no)
    assert (waiting["code"], waiting["trade_status"], waiting["total_amount"]) == (
        "10000",
        "WAIT_BUYER_PAY",
        "12.34",
    )

    assert pay_as_buyer(created["qr_code"])["trade_status"] == "TRADE_SUCCESS"
    wait_for(lambda: background.notifications_for(out_trade_no))
    data = background.notifications_for(out_trade_no)[0]
    assert data["trade_status"] == "TRADE_SUCCESS"
    signature = data.pop("sign")
    # the SDK's own verification: drops sign_type, sorts, joins, SHA256withRSA
    assert sdk.verify(dict(data), signature)
    assert not sdk.verify({**data, "total_amount": "0.01"}, signature)

    paid = sdk.api_alipay_trade_query(out_trade_no=out_trade_no)
    assert (paid["trade_status"], paid["trade_no"]) == ("TRADE_SUCCESS", order.channel_trade_no)
    assert paid["send_pay_date"]

    refund = sdk.api_alipay_trade_refund(
        refund_amount="1.00", out_trade_no=out_trade_no, out_request_no="re_sdk_1"
    )
    assert (refund["code"], refund["fund_change"], refund["refund_fee"]) == ("10000", "Y", "1.00")
    refund_query = sdk.api_alipay_trade_fastpay_refund_query("re_sdk_1", out_trade_no=out_trade_no)
    assert (refund_query["refund_status"], refund_query["refund_amount"]) == (
        "REFUND_SUCCESS",
        "1.00",
    )
    # the refund notification verifies with the SDK too
    wait_for(lambda: len(background.notifications_for(out_trade_no)) == 2)
    refund_note = background.notifications_for(out_trade_no)[1]
    assert refund_note["out_biz_no"] == "re_sdk_1"
    refund_signature = refund_note.pop("sign")
    assert sdk.verify(refund_note, refund_signature)


def test_sdk_close_and_business_errors(background: Background) -> None:
    sdk = make_sdk(background)
    out_trade_no = f"pay_sdk{secrets.token_hex(4)}_1"
    sdk.api_alipay_trade_precreate(
        subject="close me", out_trade_no=out_trade_no, total_amount="1.00"
    )
    closed = sdk.api_alipay_trade_close(out_trade_no=out_trade_no)
    assert closed["code"] == "10000"
    query = sdk.api_alipay_trade_query(out_trade_no=out_trade_no)
    assert query["trade_status"] == "TRADE_CLOSED"
    missing = sdk.api_alipay_trade_query(out_trade_no="pay_nowhere_1")
    assert (missing["code"], missing["sub_code"]) == ("40004", "ACQ.TRADE_NOT_EXIST")


def test_simulator_refuses_a_wrongly_signed_sdk_request(background: Background) -> None:
    sdk = make_sdk(background, app_private_pem=(KEYS / "alipay_private_key.pem").read_text())
    answer = sdk.api_alipay_trade_query(out_trade_no="pay_x_1")
    assert (answer["code"], answer["sub_code"]) == ("40002", "isv.invalid-signature")


def test_sdk_and_protocol_agree_on_signatures(background: Background) -> None:
    sdk = make_sdk(background)
    content = 'app_id=1&biz_content={"a":"订单"}&method=m&sign_type=RSA2'
    assert sdk._sign(content) == p.sign(content, APP_PRIVATE)

    # a request the SDK signs verifies with our protocol (the simulator's check)
    body = sdk.build_body(p.QUERY, {"out_trade_no": "pay_1"})
    signed = dict(parse_qsl(sdk.sign_data(body)))
    assert p.verify_request(signed, APP_PUBLIC)
    assert not p.verify_request({**signed, "biz_content": '{"out_trade_no":"pay_2"}'}, APP_PUBLIC)

    # a response we sign verifies with the SDK, which finds the same node text we do
    node = {"code": "10000", "msg": "Success", "out_trade_no": "pay_1", "qr_code": "https://q/{1}"}
    response = p.encode_response(p.response_key(p.PRECREATE), node, ALIPAY_PRIVATE)
    key = p.response_key(p.PRECREATE)
    assert (
        sdk._get_string_to_be_signed(response, key)
        == p.extract_response(response, p.PRECREATE).node_text
    )
    assert sdk._verify_and_return_sync_response(response, key) == node
    with pytest.raises(AliPayValidationError):
        sdk._verify_and_return_sync_response(response.replace("pay_1", "pay_2"), key)

    # a notification we sign verifies with the SDK; one it would accept verifies with us
    fields = {"notify_type": "trade_status_sync", "out_trade_no": "pay_1", "total_amount": "1.00"}
    ours = p.sign_notification(fields, ALIPAY_PRIVATE)
    assert sdk.verify({k: v for k, v in ours.items() if k != "sign"}, ours["sign"])
