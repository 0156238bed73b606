"""THE rule through every real adapter: each channel's simulator, behind a stub front that makes
the first request time out (or drops its connection after reading it), answers every request
after it with the channel's own signed system error (the simulator's `error_rate=1`). A create
or a refund whose earlier attempt may have reached the channel is UNKNOWN, never SYSTEM_ERROR
or FAILOVER, whatever the system error says; the number of requests shows which channels
repeat the call (those that keep one order per id) and which do not (UnionPay)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters import simkit
from adapters.base import (
    AdapterContext,
    ChannelAdapter,
    CreatePayment,
    CreateRefund,
    Decision,
    Outcome,
)
from adapters.registry import build_adapter, build_simulator
from adapters.simkit import SimulatorSettings
from gateway.domain.ids import new_id

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
BUDGET_MS = 1500
ATTEMPT_MS = 300
HANG_S = 2.0
"""Longer than the whole budget: a channel that may not repeat the call times out too."""


@dataclass(frozen=True)
class Channel:
    adapter: str
    method: str
    config: dict[str, Any]
    system_error: str
    """The channel's own code for the system error its simulator injects."""
    repeats_creates: bool
    """Whether the channel keeps one order per id, so a create that may have acted is sent
    again (protocol.RULES)."""
    queries_by_get: bool
    """aiohttp itself sends an idempotent GET again once when the connection is lost before
    any answer: one more request than attempts when the front drops a GET."""


CHANNELS = [
    Channel(
        "bank",
        "card",
        {
            "merchant_id": "M100200300",
            "merchant_private_key": "keys/bank/merchant_private.pem",
            "bank_public_key": "keys/bank/bank_public.pem",
        },
        "96",
        repeats_creates=True,
        queries_by_get=True,
    ),
    Channel(
        "wechat",
        "wechat_qr",
        {
            "mchid": "1900000109",
            "appid": "wxd678efh567hg6787",
            "merchant_private_key_path": "keys/wechat/apiclient_key.pem",
            "merchant_cert_path": "keys/wechat/apiclient_cert.pem",
            "platform_cert_path": "keys/wechat/platform_cert.pem",
            "apiv3_key_path": "keys/wechat/apiv3_key.txt",
        },
        "SYSTEM_ERROR",
        repeats_creates=True,
        queries_by_get=True,
    ),
    Channel(
        "alipay",
        "alipay_qr",
        {
            "app_id": "2021000000000001",
            "app_private_key_path": "keys/alipay/app_private_key.pem",
            "alipay_public_key_path": "keys/alipay/alipay_public_key.pem",
        },
        "isp.unknow-error",
        repeats_creates=True,
        queries_by_get=False,
    ),
    Channel(
        "unionpay",
        "unionpay_qr",
        {"mer_id": "777290058110048"},
        "96",
        repeats_creates=False,
        queries_by_get=False,
    ),
]


@dataclass
class Front:
    """In front of the simulator: the first API request hangs or is dropped; it counts them."""

    mode: str
    requests: list[str] = field(default_factory=list)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if "/control/" in request.path:
            return await handler(request)
        self.requests.append(request.path)
        if len(self.requests) == 1:
            if self.mode == "timeout":
                await asyncio.sleep(HANG_S)
            else:  # read the request, then hang up without answering
                await request.read()
                assert request.transport is not None
                request.transport.close()
                return web.Response()
        return await handler(request)


@dataclass
class Env:
    channel: Channel
    adapter: ChannelAdapter
    front: Front


@pytest.fixture(params=["timeout", "drop"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=CHANNELS, ids=[c.adapter for c in CHANNELS])
async def env(request: pytest.FixtureRequest, mode: str, aiohttp_server: Any) -> AsyncIterator[Env]:
    channel: Channel = request.param
    front = Front(mode)
    parent = web.Application(middlewares=[front.middleware])
    simkit.mount(
        parent,
        channel.adapter,
        build_simulator(channel.adapter, SimulatorSettings(str(CONFIG_DIR))),
    )
    server = await aiohttp_server(parent)
    base = str(server.make_url(f"/sim/{channel.adapter}"))
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/control/faults", json={"error_rate": 1}) as resp:
            assert resp.status == 200
        config = {
            **channel.config,
            "base_url": base,
            "timeout_ms": BUDGET_MS,
            "attempt_timeout_ms": ATTEMPT_MS,
            "max_attempts": 2,
            "retry_backoff_ms": 0,
        }
        adapter = build_adapter(
            channel.adapter,
            f"{channel.adapter}_rule",
            config,
            AdapterContext(http, str(CONFIG_DIR)),
        )
        yield Env(channel, adapter, front)


def payment(env: Env) -> CreatePayment:
    return CreatePayment(
        channel_order_id=env.adapter.channel_order_id(new_id("pay"), 1),
        amount=1999,
        currency="CNY",
        method=env.channel.method,
        description="Order A1001",
        notify_url="http://127.0.0.1:9/notify",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
    )


async def test_a_create_that_may_have_acted_is_unknown_whatever_comes_next(env: Env) -> None:
    started = asyncio.get_running_loop().time()
    result = await env.adapter.create_payment(payment(env))
    assert asyncio.get_running_loop().time() - started < BUDGET_MS / 1000 + 0.3
    assert (result.outcome, result.decision) == (Outcome.UNKNOWN, Decision.RETRY)
    if env.channel.repeats_creates:
        # sent again (the channel answers a repeat with the same order): its system error
        # cannot undo what the first attempt may have done
        assert len(env.front.requests) == 2
        assert result.channel_code == env.channel.system_error
    else:
        # UnionPay refuses a repeated orderId: the create is not sent again
        assert len(env.front.requests) == 1


async def test_a_refund_that_may_have_acted_is_unknown_whatever_comes_next(env: Env) -> None:
    order = payment(env)
    refund = CreateRefund(
        channel_order_id=order.channel_order_id,
        channel_refund_id=env.adapter.channel_refund_id(new_id("re")),
        amount=500,
        total_amount=1999,
        currency="CNY",
        notify_url=order.notify_url,
    )
    result = await env.adapter.refund(refund)
    assert result.decision is not Decision.FAILOVER
    if env.channel.repeats_creates:
        assert len(env.front.requests) == 2
        assert (result.outcome, result.channel_code) == (
            Outcome.UNKNOWN,
            env.channel.system_error,
        )
    else:
        # UnionPay queries the payment first (for its queryId): that query is what hung, was
        # asked again and got the system error, so no refund was sent at all
        assert len(env.front.requests) == 2
        assert result.outcome is Outcome.SYSTEM_ERROR
        assert "nothing was sent" in (result.channel_message or "")


async def test_a_query_is_asked_again_and_says_what_the_answer_says(env: Env) -> None:
    result = await env.adapter.query_payment(payment(env).channel_order_id)
    resent_by_aiohttp = env.front.mode == "drop" and env.channel.queries_by_get
    assert len(env.front.requests) == 2 + resent_by_aiohttp
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        env.channel.system_error,
    )
