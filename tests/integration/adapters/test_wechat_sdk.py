"""The real `wechatpayv3` SDK (PyPI) against our WeChat Pay simulator: it signs requests its
own way, verifies our answers with its own code, downloads the platform certificate from
`/v3/certificates`, and verifies and decrypts our notifications with its own `callback`.

How the SDK is pointed at the simulator: `WeChatPay` has no setting for its gateway URL (it is
the instance attribute `_core._gate_way = 'https://api.mch.weixin.qq.com'`, set in
`Core.__init__`), so the test sets that attribute after construction; nothing in the SDK is
modified. The SDK signs only the path below its gateway (`/v3/...`), which is the rule the
simulator applies below its mount point `/sim/wechat`. The constructor also needs a platform
certificate before it can talk to anyone (else it downloads one from the real host during
construction), so `cert_dir` is given: a directory holding our platform certificate, or, in
the certificate-download test, a stale certificate of another serial, which makes the SDK
fetch `/v3/certificates` from the simulator on the first answer it cannot verify.

The SDK is synchronous (requests), so the simulator runs in a background thread with its own
event loop (aiohttp AppRunner on 127.0.0.1, a free port).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import queue
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from wechatpayv3 import WeChatPay, WeChatPayType

from adapters import simkit
from adapters.base import StatementKind
from adapters.simkit import SimulatorSettings
from adapters.wechat import protocol as p
from adapters.wechat.simulator import SIMULATOR, WechatSimulator, build_app

REPO = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO / "config"
KEYS = CONFIG_DIR / "keys" / "wechat"
MCHID = "1900000109"
APPID = "wxd678efh567hg6787"


class BackgroundSimulator:
    """The simulator plus a notification receiver, served from a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.notifications: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        self.runner: web.AppRunner | None = None
        self.sim: WechatSimulator | None = None
        self.root = ""

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)

    async def _start(self) -> None:
        settings = SimulatorSettings(
            config_dir=str(CONFIG_DIR), notify_time_scale=0.001, timeout_sleep_s=2
        )
        sim_app = build_app(settings)
        self.sim = sim_app[SIMULATOR]
        parent = web.Application()
        simkit.mount(parent, "wechat", sim_app)
        parent.router.add_post("/notify", self._notify)
        self.runner = web.AppRunner(parent)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.root = f"http://{host}:{port}"

    async def _notify(self, request: web.Request) -> web.Response:
        self.notifications.put((dict(request.headers), await request.read()))
        return web.Response(status=204)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    @property
    def base(self) -> str:
        return f"{self.root}/sim/wechat"


@pytest.fixture
def sim() -> Iterator[BackgroundSimulator]:
    server = BackgroundSimulator()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def merchant_serial() -> str:
    cert = x509.load_pem_x509_certificate((KEYS / "apiclient_cert.pem").read_bytes())
    return p.serial_hex(cert.serial_number)


def make_sdk(sim: BackgroundSimulator, cert_dir: Path) -> WeChatPay:
    wxpay = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=MCHID,
        private_key=(KEYS / "apiclient_key.pem").read_text(),
        cert_serial_no=merchant_serial(),
        appid=APPID,
        apiv3_key=(KEYS / "apiv3_key.txt").read_text().strip(),
        notify_url=f"{sim.root}/notify",
        cert_dir=str(cert_dir),
        timeout=(5, 10),
    )
    wxpay._core._gate_way = sim.base  # the SDK's only handle on its gateway URL
    return wxpay


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(KEYS / "platform_cert.pem", directory / "platform_cert.pem")
    return directory


def next_notification(sim: BackgroundSimulator) -> tuple[dict[str, str], bytes]:
    return sim.notifications.get(timeout=5)


def out_trade_no(tag: str) -> str:
    return f"sdk_{tag}_{datetime.now(UTC):%H%M%S%f}"


def test_sdk_native_order_query_pay_callback_refund_bill(
    sim: BackgroundSimulator, cert_dir: Path
) -> None:
    wxpay = make_sdk(sim, cert_dir)
    order_no = out_trade_no("a")
    expire = (datetime.now(UTC) + timedelta(minutes=15)).astimezone(p.CHINA_TZ)
    code, message = wxpay.pay(
        description="SDK order",
        out_trade_no=order_no,
        amount={"total": 100, "currency": "CNY"},
        time_expire=expire.replace(microsecond=0).isoformat(),
    )
    assert code == 200, message  # the SDK verified our signed answer, or it would raise
    code_url = json.loads(message)["code_url"]
    assert code_url.startswith(f"{sim.base}/qr/")

    code, message = wxpay.query(out_trade_no=order_no)
    assert code == 200 and json.loads(message)["trade_state"] == "NOTPAY"

    paid = requests.post(code_url, json={"action": "pay"}, timeout=5)
    assert paid.json()["trade_state"] == "SUCCESS"

    headers, body = next_notification(sim)
    result = wxpay.callback(headers, body)
    assert result is not None, "the SDK refused our notification"
    assert result["event_type"] == "TRANSACTION.SUCCESS"
    resource = result["resource"]
    assert (resource["out_trade_no"], resource["trade_state"]) == (order_no, "SUCCESS")
    assert resource["amount"]["total"] == 100 and resource["mchid"] == MCHID

    code, message = wxpay.query(out_trade_no=order_no)
    queried = json.loads(message)
    assert code == 200 and queried["trade_state"] == "SUCCESS"
    assert queried["transaction_id"] == resource["transaction_id"]

    code, message = wxpay.refund(
        out_refund_no=f"{order_no}_r1",
        amount={"refund": 40, "total": 100, "currency": "CNY"},
        out_trade_no=order_no,
    )
    assert code == 200 and json.loads(message)["status"] == "PROCESSING"
    headers, body = next_notification(sim)
    refunded = wxpay.callback(headers, body)
    assert refunded is not None and refunded["event_type"] == "REFUND.SUCCESS"
    assert refunded["resource"]["refund_status"] == "SUCCESS"
    assert refunded["resource"]["amount"]["refund"] == 40
    code, message = wxpay.query_refund(out_refund_no=f"{order_no}_r1")
    assert code == 200 and json.loads(message)["status"] == "SUCCESS"

    code, message = wxpay.close(out_trade_no=order_no)
    assert code == 400 and json.loads(message)["code"] == "ORDERPAID"

    today = p.china_date(datetime.now(UTC)).isoformat()
    code, message = wxpay.trade_bill(bill_date=today)  # the SDK asks for GZIP
    assert code == 200
    bill = json.loads(message)
    code, content = wxpay.download_bill(bill["download_url"])
    assert code == 200 and isinstance(content, bytes)
    assert hashlib.sha1(content).hexdigest() == bill["hash_value"]
    lines = list(p.parse_bill(gzip.decompress(content).decode("utf-8").splitlines()))
    kinds = {(x.kind, x.channel_order_id, x.amount) for x in lines}
    assert (StatementKind.PAYMENT, order_no, 100) in kinds
    assert (StatementKind.REFUND, order_no, 40) in kinds


def test_sdk_close_then_query_closed(sim: BackgroundSimulator, cert_dir: Path) -> None:
    wxpay = make_sdk(sim, cert_dir)
    order_no = out_trade_no("c")
    code, _ = wxpay.pay(description="to close", out_trade_no=order_no, amount={"total": 5})
    assert code == 200
    code, message = wxpay.close(out_trade_no=order_no)
    assert code == 204, message  # an empty, signed answer: the SDK verified it
    code, message = wxpay.query(out_trade_no=order_no)
    assert code == 200 and json.loads(message)["trade_state"] == "CLOSED"
    code, message = wxpay.query(out_trade_no="sdk_never_made")
    assert code == 404 and json.loads(message)["code"] == "ORDER_NOT_EXIST"


def _stale_certificate(directory: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "rotated-out platform")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "old.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_sdk_downloads_platform_certificate(sim: BackgroundSimulator, tmp_path: Path) -> None:
    directory = tmp_path / "rotating"
    directory.mkdir()
    _stale_certificate(directory)
    wxpay = make_sdk(sim, directory)  # no network yet: it has a (stale) certificate
    code, message = wxpay.pay(
        description="cert rotation", out_trade_no=out_trade_no("r"), amount={"total": 1}
    )
    assert code == 200, message  # unknown serial -> GET /v3/certificates -> verified
    assert sim.sim is not None
    serial = sim.sim.keys.platform_serial
    downloaded = (directory / f"{serial}.pem").read_bytes()
    assert x509.load_pem_x509_certificate(downloaded) == sim.sim.keys.platform_cert


def test_sdk_rejects_tampered_notification(sim: BackgroundSimulator, cert_dir: Path) -> None:
    wxpay = make_sdk(sim, cert_dir)
    order_no = out_trade_no("t")
    code, message = wxpay.pay(description="t", out_trade_no=order_no, amount={"total": 7})
    assert code == 200
    requests.post(json.loads(message)["code_url"], json={"action": "pay"}, timeout=5)
    headers, body = next_notification(sim)
    envelope: dict[str, Any] = json.loads(body)
    envelope["summary"] = "tampered"
    assert wxpay.callback(headers, json.dumps(envelope)) is None
    assert wxpay.callback(headers, body) is not None
