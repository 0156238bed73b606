"""The contract suite's runtime: one channel (simulator, adapter, notification receiver) per
driver, shared by the tests of a module, and reset before each test.

A `Channel` runs the channel's simulator (`adapters.registry.build_simulator`, mounted with
`adapters.simkit.mount` and served by `web.AppRunner`, as the gateway does) on a local port,
builds the adapter with `adapters.registry.build_adapter` from the driver's config, and
receives the simulator's notifications on a second server that answers with the adapter's own
acknowledgement, as the gateway's `/notify/{channel}` does. Everything a scenario learns about
the channel's side goes through the simulator's public routes (payer page, `/control/…`,
API.md §3) or through servers of its own in front of the simulator (`Channel.proxy`).

Test modules run on one event loop per module (`pytestmark = pytest.mark.asyncio(
loop_scope="module")`), so that the module's channels live across its tests. The `channel`
fixture is parametrised over every driver; a module about one channel narrows it with
``pytest.mark.parametrize("channel_runtime", [DRIVER], indirect=True)``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from adapters import simkit
from adapters.base import (
    AdapterContext,
    ChannelAdapter,
    ChannelResult,
    CreatePayment,
    CreateRefund,
    Decision,
    IncomingRequest,
    Notification,
    NotificationKind,
    NotificationRejected,
    Outcome,
    StatementLine,
)
from adapters.registry import build_adapter, build_simulator
from adapters.simkit import SimulatorSettings
from gateway.domain.ids import new_id
from tests.contract.drivers import CONFIG_DIR, DRIVERS, Driver

NOTIFY_TIME_SCALE = 0.001
"""The simulators' notification retry schedules, scaled: 15 s becomes 15 ms."""
TIMEOUT_SLEEP_S = 0.5
"""How long a simulated timeout hangs before the simulator carries on (beyond any client
timeout the scenarios use)."""
ADAPTER_TIMEOUT_MS = 2000
SHORT_TIMEOUT_MS = 200
"""The budget of an adapter that is meant to give up on a slow channel."""

DEFAULT_FAULTS: dict[str, Any] = {
    "latency_ms": 0,
    "error_rate": 0,
    "timeout_rate": 0,
    "notify": "normal",
    "notify_delay_ms": 0,
}


async def eventually(
    check: Callable[[], Any], within_s: float = 3.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy (and return that), or fail."""
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within_s} s")
        await asyncio.sleep(0.005)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification request the simulator sent, as the receiver handled it."""

    request: IncomingRequest
    at: float
    """`time.monotonic()` when it arrived."""
    notification: Notification | None
    """What the adapter parsed, or None when it rejected the request."""
    rejected: str | None
    acknowledged: bool
    """Whether the receiver answered with the adapter's success acknowledgement."""


@dataclass
class Receiver:
    """The gateway's `/notify/{channel}`, reduced to parse + acknowledge. It refuses the next
    `refuse_next` notifications that parse (as a gateway that could not store them would), so
    that the simulator sends them again."""

    adapter: ChannelAdapter
    deliveries: list[Delivery] = field(default_factory=list)
    refuse_next: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        incoming = IncomingRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=await request.read(),
            content_type=request.content_type,
        )
        arrived = time.monotonic()
        notification: Notification | None = None
        rejected: str | None = None
        try:
            notification = self.adapter.parse_notification(incoming)
        except NotificationRejected as exc:
            rejected = str(exc) or type(exc).__name__
        accept = notification is not None and self.refuse_next == 0
        if notification is not None and not accept:
            self.refuse_next -= 1
        self.deliveries.append(Delivery(incoming, arrived, notification, rejected, accept))
        ack = self.adapter.ack(accept)
        return web.Response(status=ack.status, body=ack.body, content_type=ack.content_type)

    def about(
        self, order_id: str, kind: NotificationKind = NotificationKind.PAYMENT
    ) -> list[Delivery]:
        """Every delivery (acknowledged or refused on purpose) that parsed as a notification
        of `kind` about `order_id`."""
        return [
            d
            for d in self.deliveries
            if d.notification is not None
            and d.notification.channel_order_id == order_id
            and d.notification.kind is kind
        ]

    def accepted(
        self, order_id: str, kind: NotificationKind = NotificationKind.PAYMENT
    ) -> list[Notification]:
        return [
            d.notification
            for d in self.about(order_id, kind)
            if d.acknowledged and d.notification is not None
        ]

    @property
    def rejections(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.rejected is not None]

    async def wait_accepted(
        self,
        order_id: str,
        kind: NotificationKind = NotificationKind.PAYMENT,
        count: int = 1,
        within_s: float = 3.0,
    ) -> list[Notification]:
        await eventually(
            lambda: len(self.accepted(order_id, kind)) >= count,
            within_s,
            f"{count} accepted {kind} notification(s) about {order_id}",
        )
        return self.accepted(order_id, kind)


@dataclass(frozen=True, slots=True)
class PayerAnswer:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Created:
    """A payment created at the channel, waiting for the payer."""

    request: CreatePayment
    result: ChannelResult

    @property
    def order_id(self) -> str:
        return self.request.channel_order_id

    @property
    def payer_url(self) -> str:
        assert self.result.next_action is not None, self.result
        return self.result.next_action.url


@dataclass(frozen=True, slots=True)
class Paid:
    """A payment the payer paid, with the notification the gateway accepted for it."""

    created: Created
    notification: Notification

    @property
    def request(self) -> CreatePayment:
        return self.created.request

    @property
    def order_id(self) -> str:
        return self.created.order_id


@dataclass
class Stub:
    """A server of the scenario's own where the adapter expects the channel: it counts the
    requests it gets."""

    base_url: str = ""
    hits: int = 0


@dataclass
class Proxy(Stub):
    """A stub that forwards to the simulator, at the same paths (signatures cover them), and
    may alter the simulator's answers."""

    alter: Callable[[str, bytes], bytes] | None = None


@dataclass(frozen=True, slots=True)
class LocalServer:
    """An app served on a local port the way the gateway serves its simulators (`web.AppRunner`,
    whose handlers run to the end when the caller hangs up; aiohttp's `TestServer` cancels
    them, which would hide a channel that acts after the caller gave up)."""

    origin: str

    @classmethod
    async def start(cls, app: web.Application, stack: AsyncExitStack) -> LocalServer:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return cls(f"http://127.0.0.1:{port}")

    def make_url(self, path: str) -> str:
        return self.origin + path


@dataclass
class Channel:
    """One channel under test: its driver, simulator, adapter and notification receiver."""

    driver: Driver
    http: aiohttp.ClientSession
    stack: AsyncExitStack
    server: LocalServer
    receiver: Receiver
    notify_url: str
    adapter: ChannelAdapter

    # ---- the simulator's public routes ----------------------------------------------------
    @property
    def origin(self) -> str:
        return self.server.origin

    @property
    def sim_base(self) -> str:
        return f"{self.origin}/sim/{self.driver.name}"

    async def faults(self, **patch: Any) -> None:
        async with self.http.put(f"{self.sim_base}/control/faults", json=patch) as resp:
            assert resp.status == 200, await resp.text()

    async def statement_faults(self, **data: Any) -> None:
        async with self.http.put(f"{self.sim_base}/control/statement", json=data) as resp:
            assert resp.status == 200, await resp.text()

    async def order_view(self, order_id: str) -> dict[str, Any] | None:
        """The simulator's view of an order (`GET /control/orders/{id}`), None when it has
        none."""
        async with self.http.get(f"{self.sim_base}/control/orders/{order_id}") as resp:
            if resp.status == 404:
                return None
            assert resp.status == 200, await resp.text()
            view: dict[str, Any] = await resp.json()
            return view

    async def payer(self, url: str, action: str = "pay", **extra: str) -> PayerAnswer:
        """Act as the payer on the payer page (JSON)."""
        async with self.http.post(url, json={"action": action, **extra}) as resp:
            if resp.content_type != "application/json":
                return PayerAnswer(resp.status, {"text": await resp.text()})
            return PayerAnswer(resp.status, await resp.json())

    async def payer_form(self, url: str, action: str, **extra: str) -> tuple[int, str, str]:
        """Press the payer page's button (a browser's form POST): status, type and page."""
        async with self.http.post(url, data={"action": action, **extra}) as resp:
            return resp.status, resp.content_type, await resp.text()

    # ---- adapters -------------------------------------------------------------------------
    def config(self, **overrides: Any) -> dict[str, Any]:
        config = self.driver.config(self.sim_base)
        config["timeout_ms"] = ADAPTER_TIMEOUT_MS
        for key, value in overrides.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        return config

    def build(self, **overrides: Any) -> ChannelAdapter:
        """Another adapter for this channel: the driver's config with `overrides` (None
        removes a member), built through the registry as the gateway builds it."""
        return build_adapter(
            self.driver.name,
            f"{self.driver.name}_contract",
            self.config(**overrides),
            self.context,
        )

    @property
    def context(self) -> AdapterContext:
        return AdapterContext(http=self.http, config_dir=str(CONFIG_DIR))

    # ---- orders ---------------------------------------------------------------------------
    def new_order_id(self) -> str:
        """The order id this channel knows attempt 1 of a fresh gateway payment by."""
        return self.adapter.channel_order_id(new_id("pay"), 1)

    def new_refund_id(self) -> str:
        return self.adapter.channel_refund_id(new_id("re"))

    def payment(self, amount: int = 1999, **changes: Any) -> CreatePayment:
        req = CreatePayment(
            channel_order_id=self.new_order_id(),
            amount=amount,
            currency="CNY",
            method=self.driver.method,
            description="Order A1001 订单",
            notify_url=self.notify_url,
            expires_at=datetime.now(UTC) + timedelta(minutes=15),
            payer_ip="203.0.113.9",
            return_url="https://shop.example/done",
        )
        return replace(req, **changes)

    def refund_of(
        self, payment: CreatePayment, amount: int, refund_id: str | None = None
    ) -> CreateRefund:
        return CreateRefund(
            channel_order_id=payment.channel_order_id,
            channel_refund_id=refund_id or self.new_refund_id(),
            amount=amount,
            total_amount=payment.amount,
            currency=payment.currency,
            notify_url=self.notify_url,
            reason="customer asked",
        )

    async def create(self, amount: int = 1999, **changes: Any) -> Created:
        req = self.payment(amount, **changes)
        result = await self.adapter.create_payment(req)
        assert result.outcome is Outcome.WAITING, result
        assert result.next_action is not None, result
        return Created(req, result)

    async def pay(self, amount: int = 1999) -> Paid:
        """Create a payment, pay it on the payer page, and wait for its (accepted)
        notification."""
        created = await self.create(amount)
        answer = await self.payer(created.payer_url)
        assert answer.status == 200, answer
        [note] = await self.receiver.wait_accepted(created.order_id)
        return Paid(created, note)

    async def statement(
        self, day: date, adapter: ChannelAdapter | None = None
    ) -> list[StatementLine]:
        return [line async for line in (adapter or self.adapter).download_statement(day)]

    # ---- helper servers -------------------------------------------------------------------
    async def stub(
        self,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        stub: Stub | None = None,
    ) -> Stub:
        """Start a server (for the rest of the module) that answers every request with
        `handler`; its `base_url` is the simulator's path on it."""
        counted = stub or Stub()

        async def counting(request: web.Request) -> web.StreamResponse:
            counted.hits += 1
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", counting)
        server = await LocalServer.start(app, self.stack)
        counted.base_url = server.make_url(f"/sim/{self.driver.name}")
        return counted

    async def proxy(self, alter: Callable[[str, bytes], bytes] | None = None) -> Proxy:
        """A forwarding proxy in front of the simulator (same paths, the Host header kept, so
        that URLs the simulator builds point back at the proxy); `alter(path, body)` may
        change each answer's body after the simulator signed it."""
        proxy = Proxy(alter=alter)
        session = aiohttp.ClientSession(auto_decompress=False)
        self.stack.push_async_callback(session.close)

        async def forward(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding")
            }
            async with session.request(
                request.method,
                self.origin + request.raw_path,
                data=body or None,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                answer = await resp.read()
                answer_headers = {
                    k: v
                    for k, v in resp.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
                }
                status = resp.status
            if proxy.alter is not None:
                answer = proxy.alter(request.path, answer)
            return web.Response(status=status, body=answer, headers=answer_headers)

        await self.stub(forward, proxy)
        return proxy

    def closed_port_base_url(self) -> str:
        """A base_url where nothing listens (connections are refused before sending)."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}/sim/{self.driver.name}"

    async def reset(self) -> None:
        await self.faults(**DEFAULT_FAULTS)
        await self.statement_faults()
        self.receiver.refuse_next = 0


async def open_channel(driver: Driver, stack: AsyncExitStack) -> Channel:
    """Start `driver`'s simulator and receiver, and build its adapter; everything is closed
    when `stack` is."""
    http = await stack.enter_async_context(
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    )
    settings = SimulatorSettings(
        config_dir=str(CONFIG_DIR),
        notify_time_scale=NOTIFY_TIME_SCALE,
        timeout_sleep_s=TIMEOUT_SLEEP_S,
    )
    parent = web.Application()
    simkit.mount(parent, driver.name, build_simulator(driver.name, settings))
    server = await LocalServer.start(parent, stack)

    holder: dict[str, Receiver] = {}

    async def notify(request: web.Request) -> web.Response:
        return await holder["receiver"].handle(request)

    receiver_app = web.Application()
    receiver_app.router.add_post(f"/notify/{driver.name}", notify)
    receiver_server = await LocalServer.start(receiver_app, stack)

    sim_base = server.make_url(f"/sim/{driver.name}")
    config = driver.config(sim_base) | {"timeout_ms": ADAPTER_TIMEOUT_MS}
    adapter = build_adapter(
        driver.name,
        f"{driver.name}_contract",
        config,
        AdapterContext(http=http, config_dir=str(CONFIG_DIR)),
    )
    receiver = Receiver(adapter)
    holder["receiver"] = receiver
    return Channel(
        driver=driver,
        http=http,
        stack=stack,
        server=server,
        receiver=receiver,
        notify_url=receiver_server.make_url(f"/notify/{driver.name}"),
        adapter=adapter,
    )


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=DRIVERS, ids=[d.name for d in DRIVERS]
)
async def channel_runtime(request: pytest.FixtureRequest) -> AsyncIterator[Channel]:
    """A channel shared by the module's tests (they use fresh order ids, and `channel`
    resets the faults before each)."""
    async with AsyncExitStack() as stack:
        yield await open_channel(request.param, stack)


@pytest_asyncio.fixture(loop_scope="module")
async def channel(channel_runtime: Channel) -> Channel:
    await channel_runtime.reset()
    return channel_runtime


@pytest_asyncio.fixture(loop_scope="module")
async def fresh_channel(channel_runtime: Channel) -> AsyncIterator[Channel]:
    """A channel of the same driver with an empty order book, for scenarios that look at
    everything the channel holds (statements)."""
    async with AsyncExitStack() as stack:
        yield await open_channel(channel_runtime.driver, stack)


def result_shape(result: ChannelResult) -> tuple[Outcome, Decision, str | None]:
    """What the scenarios compare with a driver's expectation: outcome, decision, code."""
    return result.outcome, result.decision, result.channel_code
