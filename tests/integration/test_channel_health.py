"""ChannelHealthStore against the real Redis at 127.0.0.1:6379, one random key prefix per test."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from gateway.channel_health import ChannelHealthStore
from routing import health as pure
from routing.health import BreakerState, ChannelHealth, SuccessStats
from routing.schema import RoutingSettings

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_700_000_000.0
SETTINGS = RoutingSettings.model_validate(
    {
        "breaker": {
            "window_s": 60,
            "min_calls": 10,
            "failure_ratio": 0.5,
            "consecutive_failures": 3,
            "open_s": 30,
            "half_open_probes": 2,
        },
        "success_rate": {"window_s": 120},
    }
)


@pytest.fixture
def prefix() -> str:
    return f"test:health:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def connect(prefix: str) -> AsyncIterator[Callable[..., aioredis.Redis]]:
    """connect(**options) -> a new Redis client (its own connection pool); all are closed and
    the test's keys deleted afterwards."""
    clients: list[aioredis.Redis] = []

    def _connect(**options: object) -> aioredis.Redis:
        client = aioredis.Redis.from_url(REDIS_URL, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield _connect
    cleaner = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in cleaner.scan_iter(match=f"{prefix}*")]
    if keys:
        await cleaner.delete(*keys)
    await cleaner.aclose()
    for client in clients:
        await client.aclose()


@pytest.fixture
def store(connect: Callable[..., aioredis.Redis], prefix: str) -> ChannelHealthStore:
    return ChannelHealthStore(connect(), prefix)


async def state_of(store: ChannelHealthStore, channel: str, now: float) -> ChannelHealth:
    health, _ = await store.snapshot([channel], now)
    return health[channel]


async def test_unknown_channels_are_healthy(store: ChannelHealthStore) -> None:
    health, stats = await store.snapshot(["a", "b"], T0)
    assert health == {"a": ChannelHealth(), "b": ChannelHealth()}
    assert stats == {"a": SuccessStats(), "b": SuccessStats()}
    assert await store.snapshot([], T0) == ({}, {})


async def test_opens_after_failures(store: ChannelHealthStore) -> None:
    assert await store.record("alipay", False, T0, SETTINGS) is BreakerState.CLOSED
    assert await store.record("alipay", False, T0 + 1, SETTINGS) is BreakerState.CLOSED
    h = await state_of(store, "alipay", T0 + 1)
    assert h.state is BreakerState.CLOSED and h.consecutive_failures == 2
    assert await store.record("alipay", False, T0 + 2, SETTINGS) is BreakerState.OPEN
    h = await state_of(store, "alipay", T0 + 3)
    assert h.state is BreakerState.OPEN and h.opened_at == T0 + 2
    assert not pure.call_allowed(h, T0 + 3, SETTINGS.breaker)
    assert not await store.acquire("alipay", T0 + 3, SETTINGS)


async def test_opens_on_the_failure_ratio(store: ChannelHealthStore) -> None:
    t = T0
    for result in "fsfsfsfsfs":
        await store.record("bank", result == "s", t, SETTINGS)
        t += 1
    assert (await state_of(store, "bank", t)).state is BreakerState.CLOSED
    assert await store.record("bank", False, t, SETTINGS) is BreakerState.OPEN


async def test_half_open_after_open_s_then_closes_after_probe_successes(
    store: ChannelHealthStore,
) -> None:
    for i in range(3):
        await store.record("wechat", False, T0 + i, SETTINGS)
    opened = T0 + 2
    assert not await store.acquire("wechat", opened + 29, SETTINGS)
    h = await state_of(store, "wechat", opened + 30)
    assert pure.effective_state(h, opened + 30, SETTINGS.breaker) is BreakerState.HALF_OPEN

    assert await store.acquire("wechat", opened + 30, SETTINGS)
    assert await store.acquire("wechat", opened + 30, SETTINGS)
    assert not await store.acquire("wechat", opened + 31, SETTINGS)  # 2 probes at most
    h = await state_of(store, "wechat", opened + 31)
    assert h.state is BreakerState.HALF_OPEN and h.probes_in_flight == 2

    assert await store.record("wechat", True, opened + 32, SETTINGS) is BreakerState.HALF_OPEN
    assert await store.record("wechat", True, opened + 33, SETTINGS) is BreakerState.CLOSED
    h = await state_of(store, "wechat", opened + 34)
    assert h == ChannelHealth(window_s=60)
    assert await store.acquire("wechat", opened + 34, SETTINGS)


async def test_a_failed_probe_opens_again(store: ChannelHealthStore) -> None:
    for i in range(3):
        await store.record("unionpay", False, T0 + i, SETTINGS)
    assert await store.acquire("unionpay", T0 + 40, SETTINGS)
    assert await store.record("unionpay", False, T0 + 41, SETTINGS) is BreakerState.OPEN
    h = await state_of(store, "unionpay", T0 + 41)
    assert h.state is BreakerState.OPEN and h.opened_at == T0 + 41


async def test_two_clients_see_the_same_state(
    connect: Callable[..., aioredis.Redis], prefix: str
) -> None:
    one = ChannelHealthStore(connect(), prefix)
    two = ChannelHealthStore(connect(decode_responses=True), prefix)
    await one.record("alipay", False, T0, SETTINGS)
    await two.record("alipay", False, T0 + 1, SETTINGS)
    await one.record("alipay", False, T0 + 2, SETTINGS)
    seen_one, _ = await one.snapshot(["alipay"], T0 + 3)
    seen_two, _ = await two.snapshot(["alipay"], T0 + 3)
    assert seen_one == seen_two
    assert seen_two["alipay"].state is BreakerState.OPEN
    # one takes the only probe slots; the other is refused
    assert await two.acquire("alipay", T0 + 40, SETTINGS)
    assert await one.acquire("alipay", T0 + 40, SETTINGS)
    assert not await two.acquire("alipay", T0 + 40, SETTINGS)


async def test_concurrent_records_lose_nothing(
    connect: Callable[..., aioredis.Redis], prefix: str
) -> None:
    lenient = RoutingSettings.model_validate(
        {"breaker": {"consecutive_failures": 10_000, "min_calls": 10_000}}
    )
    stores = [ChannelHealthStore(connect(), prefix) for _ in range(4)]
    now = datetime.now(UTC)

    async def hammer(store: ChannelHealthStore, n: int) -> None:
        for i in range(50):
            await store.record("bank", (i + n) % 4 != 0, now, lenient)

    await asyncio.gather(*(hammer(s, n) for n, s in enumerate(stores)))
    health, stats = await stores[0].snapshot(["bank"], now)
    assert stats["bank"] == SuccessStats(successes=150, failures=50)
    assert health["bank"].totals(now.timestamp()) == (200, 50)


async def test_success_window_slides(store: ChannelHealthStore) -> None:
    for i in range(10):
        await store.record("alipay", i < 7, T0 + i, SETTINGS)
    _, stats = await store.snapshot(["alipay"], T0 + 10)
    assert stats["alipay"] == SuccessStats(7, 3)
    _, stats = await store.snapshot(["alipay"], T0 + 500)
    assert stats["alipay"] == SuccessStats()
    await store.record("alipay", True, T0 + 500, SETTINGS)
    _, stats = await store.snapshot(["alipay"], T0 + 500)
    assert stats["alipay"] == SuccessStats(1, 0)


async def test_keys_live_under_the_prefix_and_expire(
    store: ChannelHealthStore, prefix: str
) -> None:
    await store.record("bank", True, T0, SETTINGS)
    keys = sorted([k.decode() async for k in store.redis.scan_iter(match=f"{prefix}*")])
    assert keys == [f"{prefix}ch:{{bank}}:breaker", f"{prefix}ch:{{bank}}:outcomes"]
    for key in keys:
        ttl = await store.redis.pttl(key)
        assert 0 < ttl <= (2 * 120 + 60) * 1000
    await store.reset("bank")
    assert [k async for k in store.redis.scan_iter(match=f"{prefix}*")] == []


async def test_snapshot_is_one_round_trip(
    store: ChannelHealthStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b", "c"):
        await store.record(name, True, T0, SETTINGS)
    calls = 0
    real = store.redis.pipeline

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    executed: list[int] = []
    monkeypatch.setattr(store.redis, "pipeline", counting)
    original_execute = aioredis.client.Pipeline.execute

    async def execute(self: aioredis.client.Pipeline, *a: object, **k: object) -> object:
        executed.append(len(self.command_stack))
        return await original_execute(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(aioredis.client.Pipeline, "execute", execute)
    health, stats = await store.snapshot(["a", "b", "c"], T0 + 1)
    assert calls == 1 and executed == [6]
    assert set(health) == set(stats) == {"a", "b", "c"}


async def test_redis_follows_the_pure_reference(store: ChannelHealthStore) -> None:
    """Random sequences of results, probe requests and pauses give the same breaker in Redis
    (the Lua scripts) as in `routing.health`."""
    rng = random.Random(20240605)
    settings = RoutingSettings.model_validate(
        {
            "breaker": {
                "window_s": 20,
                "min_calls": 4,
                "failure_ratio": 0.5,
                "consecutive_failures": 3,
                "open_s": 5,
                "half_open_probes": 2,
            },
            "success_rate": {"window_s": 30},
        }
    )
    b = settings.breaker
    for channel in ("x", "y", "z"):
        expected = ChannelHealth()
        outcomes: tuple[tuple[int, int, int], ...] = ()
        t = T0 + rng.random()
        for _ in range(120):
            t += rng.choice([0.01, 0.3, 1.7, 4.9, 6.0, 25.0])
            roll = rng.random()
            if roll < 0.25:
                ok, expected = pure.acquire(expected, t, b)
                assert await store.acquire(channel, t, settings) == ok
            else:
                success = rng.random() < (0.3 if channel == "x" else 0.7)
                expected = pure.record(expected, success, t, b)
                outcomes = pure.window_add_outcome(
                    outcomes, t, settings.success_rate.window_s, success=success
                )
                state = await store.record(channel, success, t, settings)
                assert state is expected.state
            health, stats = await store.snapshot([channel], t)
            got = health[channel]
            assert got.state is expected.state
            assert got.opened_at == expected.opened_at
            assert got.consecutive_failures == expected.consecutive_failures
            assert got.probes_in_flight == expected.probes_in_flight
            assert got.probe_successes == expected.probe_successes
            assert got.probe_at == expected.probe_at
            assert got.totals(t) == expected.totals(t)
            successes, failures = pure.window_totals(outcomes, t, settings.success_rate.window_s)
            assert stats[channel] == SuccessStats(successes, failures)


async def test_successes_recorded_as_a_batch_count_like_one_by_one(
    store: ChannelHealthStore,
) -> None:
    assert await store.record("bank", True, T0, SETTINGS, count=7) is BreakerState.CLOSED
    await store.record("bank", False, T0 + 1, SETTINGS)
    health, stats = await store.snapshot(["bank"], T0 + 2)
    assert stats["bank"] == SuccessStats(7, 1)
    assert health["bank"].consecutive_failures == 1
    with pytest.raises(ValueError):
        await store.record("bank", False, T0, SETTINGS, count=2)
    with pytest.raises(ValueError):
        await store.record("bank", True, T0, SETTINGS, count=0)


async def test_a_batch_of_successes_on_a_half_open_circuit_counts_as_that_many_probes(
    store: ChannelHealthStore,
) -> None:
    for i in range(3):
        await store.record("wechat", False, T0 + i, SETTINGS)
    assert (await state_of(store, "wechat", T0 + 3)).state is BreakerState.OPEN
    # after open_s the circuit is half-open; two probe successes (half_open_probes) close it
    assert await store.record("wechat", True, T0 + 40, SETTINGS, count=2) is BreakerState.CLOSED


async def test_a_probe_slot_given_back_can_be_taken_again(store: ChannelHealthStore) -> None:
    for i in range(3):
        await store.record("bank", False, T0 + i, SETTINGS)
    later = T0 + 40  # past open_s: half-open, half_open_probes 2
    assert await store.acquire("bank", later, SETTINGS)
    assert await store.acquire("bank", later, SETTINGS)
    assert not await store.acquire("bank", later, SETTINGS)
    assert await store.release("bank")
    assert await store.acquire("bank", later, SETTINGS)
    # nothing to give back on a closed circuit
    await store.reset("bank")
    assert not await store.release("bank")
