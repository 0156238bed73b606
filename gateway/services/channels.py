"""The channels in force: the routing rules (hot-reloaded), one adapter per configured channel,
and the shared health (circuit breakers, success windows) that routing consults."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from adapters.base import AdapterContext, ChannelAdapter
from adapters.registry import build_adapter
from gateway import metrics
from gateway.channel_health import ChannelHealthStore
from routing.engine import PaymentFacts, RouteDecision, route
from routing.health import HEALTHY, BreakerState, ChannelHealth, SuccessStats, effective_state
from routing.loader import LoadedRouting, RoutingHolder

HEALTH_CACHE_S = 0.25
SUCCESS_BATCH_S = 0.1
"""Successes on a channel whose circuit is closed are sent to Redis in one call per channel
every SUCCESS_BATCH_S (one round trip per create saved); failures, and every result while a
circuit is not closed, are sent at once."""
_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

log = structlog.get_logger("channels")


class ChannelRegistry:
    def __init__(
        self,
        holder: RoutingHolder,
        ctx: AdapterContext,
        health: ChannelHealthStore,
        rng: random.Random | None = None,
    ) -> None:
        self.holder = holder
        self._ctx = ctx
        self.health = health
        self._rng = rng or random.Random()
        self._adapters: dict[str, ChannelAdapter] = {}
        self._built_for: dict[str, tuple[str, Any]] = {}
        self._health_cache: (
            tuple[float, list[str], dict[str, ChannelHealth], dict[str, SuccessStats]] | None
        ) = None
        self._health_refresh: (
            tuple[list[str], asyncio.Task[tuple[dict[str, ChannelHealth], dict[str, SuccessStats]]]]
            | None
        ) = None
        self._pending_successes: dict[str, int] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self.sync_adapters()

    @property
    def routing(self) -> LoadedRouting:
        return self.holder.current

    def sync_adapters(self) -> None:
        """(Re)build adapters whose channel configuration changed. Adapters of channels that
        left the file are kept: their pending payments still get notifications and syncs."""
        for name, channel in self.holder.current.config.channels.items():
            # the channel's timeout_ms is the adapter's budget per call unless its config
            # sets one of its own
            config = {"timeout_ms": channel.timeout_ms, **channel.config}
            signature = (channel.adapter, config)
            if self._built_for.get(name) == signature:
                continue
            try:
                self._adapters[name] = build_adapter(channel.adapter, name, config, self._ctx)
            except Exception as exc:  # an adapter refusing its config must not stop the rest
                log.error("adapter_build_failed", channel=name, error=str(exc))
                continue
            self._built_for[name] = signature

    def reload(self) -> bool:
        changed = self.holder.reload()
        if changed:
            self.sync_adapters()
            log.info("routing_reloaded", version=self.holder.current.version)
        return changed

    def adapter(self, channel: str) -> ChannelAdapter | None:
        return self._adapters.get(channel)

    def channel_names(self) -> list[str]:
        return list(self._adapters)

    async def decide(
        self,
        *,
        method: str,
        amount: int,
        currency: str,
        merchant_id: str,
        metadata: dict[str, str],
    ) -> RouteDecision:
        loaded = self.holder.current
        health, stats = await self._health_snapshot(list(loaded.config.channels))
        facts = PaymentFacts(
            method=method,
            amount=amount,
            currency=currency,
            merchant_id=merchant_id,
            metadata=metadata,
            now=datetime.now(UTC),
        )
        return route(loaded, facts, health, stats, self._rng)

    async def _health_snapshot(
        self, names: list[str]
    ) -> tuple[dict[str, ChannelHealth], dict[str, SuccessStats]]:
        """The shared health of every channel, read from Redis at most every
        HEALTH_CACHE_S per process (a circuit this process opens itself is seen at once:
        recording a failure drops the cached copy). Requests that find the copy stale
        together share one read."""
        cached = self._health_cache
        if cached is not None and cached[0] > time.monotonic() and cached[1] == names:
            return cached[2], cached[3]
        refresh = self._health_refresh
        if refresh is None or refresh[0] != names:
            task = asyncio.get_running_loop().create_task(self._read_health(names))
            refresh = self._health_refresh = (names, task)
            task.add_done_callback(lambda _: self._refresh_done(task))
        # shielded: a cancelled request must not cancel the read the others wait for
        return await asyncio.shield(refresh[1])

    def _refresh_done(self, task: asyncio.Task[Any]) -> None:
        if self._health_refresh is not None and self._health_refresh[1] is task:
            self._health_refresh = None

    async def _read_health(
        self, names: list[str]
    ) -> tuple[dict[str, ChannelHealth], dict[str, SuccessStats]]:
        await self.flush_successes()  # read back this process's own results too
        try:
            health, stats = await self.health.snapshot(names)
        except Exception as exc:  # health is advisory: route as if every channel were healthy
            log.warning("channel_health_unavailable", error=repr(exc))
            return {}, {}
        self._health_cache = (time.monotonic() + HEALTH_CACHE_S, names, health, stats)
        breaker = self.holder.current.config.settings.breaker
        wall = time.time()
        for name in names:
            state = effective_state(health.get(name, HEALTHY), wall, breaker)
            metrics.BREAKER_STATE.labels(channel=name).set(_BREAKER_GAUGE[state])
        return health, stats

    async def acquire_probe(self, channel: str) -> bool:
        """Take a half-open probe slot for a channel (shared by every gateway process)."""
        try:
            return await self.health.acquire(
                channel, datetime.now(UTC), self.holder.current.config.settings
            )
        except Exception as exc:  # Redis trouble: let the call through rather than fail it
            log.warning("channel_probe_acquire_failed", channel=channel, error=repr(exc))
            return True

    async def release_probe(self, channel: str) -> None:
        """Give back a probe slot from `acquire_probe` whose call will not be sent: left
        taken, it would keep the channel's other payments out until the slot times out."""
        try:
            await self.health.release(channel)
        except Exception as exc:  # the slot still frees itself after open_s
            log.warning("channel_probe_release_failed", channel=channel, error=repr(exc))

    async def record(self, channel: str, success: bool) -> None:
        """Count a call's result in the channel's shared health: a success on a closed
        circuit joins the next batch; anything else is sent now, after this channel's
        batched successes (so the shared window keeps the order that matters)."""
        if success and self._known_closed(channel):
            self._pending_successes[channel] = self._pending_successes.get(channel, 0) + 1
            if self._flush_timer is None:
                loop = asyncio.get_running_loop()
                self._flush_timer = loop.call_later(SUCCESS_BATCH_S, self._flush_soon)
            return
        if not success:
            self._health_cache = None
        await self._send(channel, True, self._pending_successes.pop(channel, 0))
        await self._send(channel, success, 1)

    def _known_closed(self, channel: str) -> bool:
        cached = self._health_cache
        if cached is None:
            return False
        health = cached[2].get(channel, HEALTHY)
        breaker = self.holder.current.config.settings.breaker
        return effective_state(health, time.time(), breaker) is BreakerState.CLOSED

    def _flush_soon(self) -> None:
        self._flush_timer = None
        task = asyncio.get_running_loop().create_task(self.flush_successes())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush_successes(self) -> None:
        """Send the batched successes now (also on shutdown)."""
        pending, self._pending_successes = self._pending_successes, {}
        for channel, count in pending.items():
            await self._send(channel, True, count)

    async def _send(self, channel: str, success: bool, count: int) -> None:
        if count < 1:
            return
        settings = self.holder.current.config.settings
        try:
            await self.health.record(channel, success, datetime.now(UTC), settings, count)
        except Exception as exc:  # health is advisory: never fail a payment over it
            log.warning("channel_health_record_failed", channel=channel, error=repr(exc))

    async def aclose(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        await self.flush_successes()
        if self._flushing:
            await asyncio.gather(*self._flushing, return_exceptions=True)
        for adapter in self._adapters.values():
            await adapter.aclose()
