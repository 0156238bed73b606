"""ChannelRegistry's recording of call results against the real Redis: successes on a closed
circuit are batched, failures go at once and after the batch before them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from adapters.base import AdapterContext
from gateway.channel_health import ChannelHealthStore
from gateway.services import channels as channels_module
from gateway.services.channels import ChannelRegistry
from routing.health import SuccessStats
from routing.loader import RoutingHolder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROUTING = """
channels:
  bank_a:
    adapter: bank
    methods: [card]
    config:
      base_url: http://127.0.0.1:9/sim/bank
      merchant_id: M1
      merchant_private_key: keys/bank/merchant_private.pem
      bank_public_key: keys/bank/bank_public.pem
rules:
  - name: cards
    when: {method: card}
    route:
      strategy: priority
      channels: [bank_a]
default:
  route:
    strategy: priority
    channels: [bank_a]
"""


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[ChannelRegistry]:
    (tmp_path / "routing.yaml").write_text(ROUTING)
    redis = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"test:registry:{uuid.uuid4().hex[:12]}:"
    async with aiohttp.ClientSession() as http:
        registry = ChannelRegistry(
            RoutingHolder(tmp_path / "routing.yaml"),
            AdapterContext(http=http, config_dir=str(ROOT / "config")),
            ChannelHealthStore(redis, prefix),
        )
        yield registry
        await registry.aclose()
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def stats(registry: ChannelRegistry) -> SuccessStats:
    _, found = await registry.health.snapshot(["bank_a"])
    return found["bank_a"]


async def test_successes_on_a_closed_circuit_reach_redis_in_one_batch(
    registry: ChannelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channels_module, "SUCCESS_BATCH_S", 3600.0)  # flushed by hand here
    sent: list[tuple[bool, int]] = []
    real = registry.health.record

    async def counting(channel: str, success: bool, *args: object, **kw: object) -> object:
        sent.append((success, int(args[2]) if len(args) > 2 else 1))
        return await real(channel, success, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(registry.health, "record", counting)
    # before routing has read the health once, a result is sent at once
    await registry.record("bank_a", True)
    assert sent == [(True, 1)]
    await registry.decide(method="card", amount=100, currency="CNY", merchant_id="m", metadata={})
    for _ in range(5):
        await registry.record("bank_a", True)
    assert sent == [(True, 1)] and await stats(registry) == SuccessStats(1, 0)
    # a failure sends the batched successes first, then itself
    await registry.record("bank_a", False)
    assert sent == [(True, 1), (True, 5), (False, 1)]
    assert await stats(registry) == SuccessStats(6, 1)


async def test_batched_successes_are_sent_by_the_timer_and_on_close(
    registry: ChannelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channels_module, "SUCCESS_BATCH_S", 0.05)
    await registry.decide(method="card", amount=100, currency="CNY", merchant_id="m", metadata={})
    for _ in range(3):
        await registry.record("bank_a", True)
    assert await stats(registry) == SuccessStats(0, 0)
    for _ in range(50):
        if await stats(registry) == SuccessStats(3, 0):
            break
        await asyncio.sleep(0.02)
    assert await stats(registry) == SuccessStats(3, 0)
    monkeypatch.setattr(channels_module, "SUCCESS_BATCH_S", 3600.0)
    await registry.record("bank_a", True)
    await registry.aclose()
    assert await stats(registry) == SuccessStats(4, 0)


async def test_requests_that_find_the_health_stale_together_share_one_read(
    registry: ChannelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    real = registry.health.snapshot

    async def counting(*args: object, **kw: object) -> object:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)  # the read takes a while: every request below finds it stale
        return await real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(registry.health, "snapshot", counting)

    async def decide() -> str:
        decision = await registry.decide(
            method="card", amount=100, currency="CNY", merchant_id="m", metadata={}
        )
        return decision.candidates[0].channel

    assert await asyncio.gather(*(decide() for _ in range(20))) == ["bank_a"] * 20
    assert reads == 1
    await decide()  # within HEALTH_CACHE_S: the cached copy
    assert reads == 1
    registry._health_cache = None  # what recording a failure does
    await asyncio.gather(*(decide() for _ in range(5)))
    assert reads == 2
