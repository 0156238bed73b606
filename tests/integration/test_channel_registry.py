"""ChannelRegistry against the real Redis: the configuration pipeline (a reload validates every
channel's adapter settings and builds the new adapters before the swap, or refuses the whole
file and keeps the rules and adapters in force; replaced adapters are closed), and the
recording of call results (successes on a closed circuit are batched, failures go at once and
after the batch before them)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from adapters.base import AdapterContext, ChannelAdapter
from gateway.channel_health import ChannelHealthStore
from gateway.services import channels as channels_module
from gateway.services.channels import ChannelRegistry, channel_check
from routing.health import SuccessStats
from routing.loader import RoutingError, RoutingHolder
from tests.support import wait_until

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


NEW_CHANNEL = """
  bank_new:
    adapter: bank
    methods: [card]
    config:
      base_url: http://127.0.0.1:9/sim/bank
      merchant_id: M2
      merchant_private_key: {key}
      bank_public_key: keys/bank/bank_public.pem
"""


def with_new_channel(key: str = "keys/bank/merchant_private.pem") -> str:
    head, sep, tail = ROUTING.partition("rules:")
    return head + NEW_CHANNEL.format(key=key).lstrip("\n") + sep + tail


def start_registry(
    path: Path, http: aiohttp.ClientSession, redis: aioredis.Redis, prefix: str, *, check: bool
) -> ChannelRegistry:
    """A registry on `path`, its holder with the gateway's channel check (or none)."""
    config_dir = str(ROOT / "config")
    return ChannelRegistry(
        RoutingHolder(path, {}, channel_check(config_dir) if check else None),
        AdapterContext(http=http, config_dir=config_dir),
        ChannelHealthStore(redis, prefix),
    )


@pytest.fixture
async def redis_and_prefix() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    redis = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"test:registry:{uuid.uuid4().hex[:12]}:"
    yield redis, prefix
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture(params=[True, False], ids=["checked", "built-before-swap"])
async def registry(
    request: pytest.FixtureRequest, tmp_path: Path, redis_and_prefix: tuple[aioredis.Redis, str]
) -> AsyncIterator[ChannelRegistry]:
    """A registry as the gateway makes it (the holder checks every channel), and one whose
    holder has no check, so that building the adapters before the swap is what refuses."""
    (tmp_path / "routing.yaml").write_text(ROUTING)
    async with aiohttp.ClientSession() as http:
        registry = start_registry(
            tmp_path / "routing.yaml", http, *redis_and_prefix, check=request.param
        )
        yield registry
        await registry.aclose()


def failures() -> float:
    return REGISTRY.get_sample_value("gateway_routing_reload_failures_total") or 0.0


# ---- the configuration pipeline -------------------------------------------------------------


async def test_a_bad_config_of_a_channel_in_force_keeps_the_old_rules_and_adapter(
    registry: ChannelRegistry,
) -> None:
    path = registry.holder.path
    old_rules, old_adapter = registry.routing, registry.adapter("bank_a")
    assert old_adapter is not None
    before = failures()
    path.write_text(ROUTING.replace("http://127.0.0.1:9/sim/bank", "not-a-url"))
    assert registry.poll() is False
    assert registry.routing is old_rules and registry.adapter("bank_a") is old_adapter
    assert registry.holder.stale and registry.holder.last_error is not None
    assert registry.holder.last_error.startswith("channels.bank_a.config.base_url: ")
    assert failures() == before + 1
    assert registry.poll() is False and failures() == before + 1  # once per content


async def test_a_new_channel_with_a_bad_config_refuses_the_whole_file(
    registry: ChannelRegistry,
) -> None:
    path = registry.holder.path
    old_rules = registry.routing
    path.write_text(with_new_channel(key="keys/bank/no_such_key.pem"))
    assert registry.poll() is False
    assert registry.routing is old_rules and "bank_new" not in registry.routing.config.channels
    assert registry.adapter("bank_new") is None
    error = registry.holder.last_error
    assert error is not None and error.startswith("channels.bank_new.config.merchant_private_key: ")
    assert "no_such_key.pem" in error
    # fixed: the new channel comes in with its adapter, built before the swap
    path.write_text(with_new_channel())
    assert registry.poll() is True
    assert registry.adapter("bank_new") is not None and not registry.holder.stale


async def test_an_operators_reload_retries_a_refused_file(
    registry: ChannelRegistry, tmp_path: Path
) -> None:
    """The file names a key file that is missing; once it exists, SIGHUP (or the admin
    reload) takes the same file in, while the poll leaves a refused content alone."""
    key = tmp_path / "late_key.pem"
    registry.holder.path.write_text(with_new_channel(key=str(key)))
    assert registry.poll() is False and registry.holder.stale
    key.write_bytes((ROOT / "config" / "keys" / "bank" / "merchant_private.pem").read_bytes())
    assert registry.poll() is False  # the same content: not validated again
    assert registry.reload() is True
    assert registry.adapter("bank_new") is not None


@pytest.fixture
def closed(registry: ChannelRegistry, monkeypatch: pytest.MonkeyPatch) -> list[ChannelAdapter]:
    """Every bank adapter closed during the test, in order."""
    found: list[ChannelAdapter] = []
    adapter = registry.adapter("bank_a")
    assert adapter is not None
    real = type(adapter).aclose

    async def recording(self: ChannelAdapter) -> None:
        found.append(self)
        await real(self)

    monkeypatch.setattr(type(adapter), "aclose", recording)
    return found


async def test_a_replaced_adapter_is_closed_once_its_calls_are_over(
    registry: ChannelRegistry, closed: list[ChannelAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channels_module, "RETIRED_ADAPTER_MARGIN_S", 1.0)
    first = registry.adapter("bank_a")
    path = registry.holder.path
    fast = ROUTING.replace("adapter: bank\n", "adapter: bank\n    timeout_ms: 100\n", 1)
    path.write_text(fast)  # a new per-call budget is a new adapter configuration
    assert registry.poll() is True
    quick = registry.adapter("bank_a")  # its calls take at most 100 ms
    assert quick is not None and quick is not first
    path.write_text(fast.replace("M1", "M9"))
    assert registry.poll() is True
    last = registry.adapter("bank_a")
    assert last is not None and last is not quick
    await asyncio.sleep(0.3)
    assert closed == []  # a call that took `quick` just before the swap may still be running
    await wait_until(lambda: _nonempty(closed), within=5)
    # `quick` after its budget and the margin; `first` (a 10 s budget) is still waiting
    assert closed == [quick]
    await registry.aclose()
    assert closed == [quick, first, last]


async def _nonempty(items: list[ChannelAdapter]) -> bool:
    return bool(items)


async def test_closing_the_registry_closes_retired_adapters_at_once(
    registry: ChannelRegistry, closed: list[ChannelAdapter]
) -> None:
    old = registry.adapter("bank_a")
    registry.holder.path.write_text(ROUTING.replace("M1", "M9"))
    assert registry.poll() is True
    assert closed == []  # retired, waiting for its calls (10 s budget + margin)
    await registry.aclose()
    assert closed == [old, registry.adapter("bank_a")]


async def test_the_gateway_refuses_to_start_on_a_bad_channel(
    tmp_path: Path, redis_and_prefix: tuple[aioredis.Redis, str]
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(with_new_channel(key="keys/bank/no_such_key.pem"))
    async with aiohttp.ClientSession() as http:
        for check in (True, False):
            with pytest.raises(
                RoutingError, match=r"channels\.bank_new\.config\.merchant_private_key: "
            ):
                start_registry(path, http, *redis_and_prefix, check=check)


# ---- recording call results -----------------------------------------------------------------


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
