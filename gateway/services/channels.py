"""The channels in force: the routing rules (hot-reloaded), one adapter per configured channel,
and the shared health (circuit breakers, success windows) that routing consults."""

from __future__ import annotations

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
        recording a failure drops the cached copy)."""
        now = time.monotonic()
        cached = self._health_cache
        if cached is not None and cached[0] > now and cached[1] == names:
            return cached[2], cached[3]
        try:
            health, stats = await self.health.snapshot(names)
        except Exception as exc:  # health is advisory: route as if every channel were healthy
            log.warning("channel_health_unavailable", error=repr(exc))
            return {}, {}
        self._health_cache = (now + HEALTH_CACHE_S, names, dict(health), dict(stats))
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

    async def record(self, channel: str, success: bool) -> None:
        settings = self.holder.current.config.settings
        if not success:
            self._health_cache = None
        try:
            await self.health.record(channel, success, datetime.now(UTC), settings)
        except Exception as exc:  # health is advisory: never fail a payment over it
            log.warning("channel_health_record_failed", channel=channel, error=repr(exc))

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
