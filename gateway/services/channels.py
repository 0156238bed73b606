"""The channels in force: the routing rules (hot-reloaded), one adapter per configured channel,
and the shared health (circuit breakers, success windows) that routing consults.

One configuration pipeline serves start-up, every reload (file poll, SIGHUP,
`POST /admin/routing/reload`) and `gateway routes check`: the routing file is validated whole,
each channel's `config:` included, through its adapter (`adapters.registry.check_config`, key
files loaded) — `channel_check` is the check `routing` is given, on exactly the configuration
the adapter is built from (`adapter_config`). A reload then builds the adapters of new and
changed channels BEFORE the new rules are swapped in: any error refuses the whole file, and the
rules and adapters in force keep serving. A replaced adapter is closed once the calls that may
still hold it are over (`RETIRED_ADAPTER_MARGIN_S` past its own per-call budget). Each load
and refusal is noted in `file_watch`, for the audit log.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from adapters.base import AdapterContext, ChannelAdapter
from adapters.registry import AdapterConfigError, build_adapter, check_config
from gateway import metrics
from gateway.channel_health import ChannelHealthStore
from gateway.domain.audit import FileWatch
from gateway.settings import Settings
from routing.engine import PaymentFacts, RouteDecision, route
from routing.health import HEALTHY, BreakerState, ChannelHealth, SuccessStats, effective_state
from routing.loader import (
    ChannelCheck,
    LoadedRouting,
    RoutingEnv,
    RoutingError,
    RoutingHolder,
    load_routing,
)
from routing.schema import ChannelConfig

HEALTH_CACHE_S = 0.25
SUCCESS_BATCH_S = 0.1
"""Successes on a channel whose circuit is closed are sent to Redis in one call per channel
every SUCCESS_BATCH_S (one round trip per create saved); failures, and every result while a
circuit is not closed, are sent at once."""
RETIRED_ADAPTER_MARGIN_S = 30.0
"""A replaced adapter is closed this long after its per-call budget (`timeout_ms`) has run out
since the swap: a caller that took it just before the swap has finished with it by then (its
call is over, and so is the database work around the call)."""
_BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

log = structlog.get_logger("channels")


# ---- the configuration pipeline ---------------------------------------------------------------


def routing_env(settings: Settings) -> RoutingEnv:
    """The variables `${NAME}` in the routing file expand from: the environment, with
    GATEWAY_PUBLIC_URL defaulting to this gateway's public URL, less the names the file may
    not read (the gateway's own settings; GATEWAY_ROUTING_ENV_ALLOW narrows it further)."""
    env = dict(os.environ)
    env.setdefault("GATEWAY_PUBLIC_URL", settings.effective_public_url)
    return RoutingEnv(env, settings.routing_env_allow)


def adapter_config(channel: ChannelConfig) -> dict[str, Any]:
    """What a channel's adapter is built from: its `config:`, with the channel's `timeout_ms`
    as the adapter's budget per call unless the config sets one of its own."""
    return {"timeout_ms": channel.timeout_ms, **channel.config}


def channel_problems(channel: ChannelConfig, errors: list[str]) -> list[str]:
    """An adapter's ``field: problem`` errors as paths relative to the channel: ``config.<field>``,
    or the channel's own ``timeout_ms`` when that is where the refused value came from."""
    problems = []
    for error in errors:
        field, sep, problem = error.partition(": ")
        if not sep:
            field, problem = "(config)", error
        if field == "(config)":
            problems.append(f"config: {problem}")
        elif field == "timeout_ms" and "timeout_ms" not in channel.config:
            problems.append(f"timeout_ms: {problem}")
        else:
            problems.append(f"config.{field}: {problem}")
    return problems


def channel_check(config_dir: str) -> ChannelCheck:
    """The check of every channel that `routing` runs on each version of the file: the
    adapter's settings and key files (relative paths resolved against `config_dir`)."""

    def check(name: str, channel: ChannelConfig) -> list[str]:
        try:
            check_config(channel.adapter, adapter_config(channel), config_dir)
        except AdapterConfigError as exc:
            return channel_problems(channel, exc.errors)
        return []

    return check


def routing_holder(settings: Settings, guard: ChannelCheck | None = None) -> RoutingHolder:
    """The routing rules in force, validated (channels' adapter settings included, then
    `guard` on the channels that pass: the production checks) at start and on every reload.
    Raises RoutingError when the file is invalid (refuse to start)."""
    adapter_check = channel_check(str(settings.config_dir))

    def check(name: str, channel: ChannelConfig) -> list[str]:
        problems = list(adapter_check(name, channel))
        return problems or ([] if guard is None else list(guard(name, channel)))

    return RoutingHolder(settings.routing_file, routing_env(settings), check)


def load_routing_file(settings: Settings) -> LoadedRouting:
    """The routing file as the gateway would load it now. Raises RoutingError."""
    return load_routing(
        settings.routing_file, routing_env(settings), channel_check(str(settings.config_dir))
    )


class ChannelRegistry:
    def __init__(
        self,
        holder: RoutingHolder,
        ctx: AdapterContext,
        health: ChannelHealthStore,
        rng: random.Random | None = None,
    ) -> None:
        """Builds an adapter for every channel of the rules in force; raises RoutingError when
        one refuses its configuration (the gateway does not start)."""
        self.holder = holder
        self._ctx = ctx
        self.health = health
        self._rng = rng or random.Random()
        self._adapters: dict[str, ChannelAdapter] = {}
        self._built_for: dict[str, tuple[str, dict[str, Any]]] = {}
        self._retired: list[tuple[ChannelAdapter, asyncio.TimerHandle | None]] = []
        """Replaced adapters not closed yet, with the timer that will close each."""
        self._closing: set[asyncio.Task[None]] = set()
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
        self._shown_version: str | None = None
        self.file_watch = FileWatch("routing", holder)
        """What this process loads and refuses, for the audit log."""
        self._install(self._build_changed(holder.current))
        self._show_version()

    @property
    def routing(self) -> LoadedRouting:
        return self.holder.current

    def reload(self) -> bool:
        """An operator's reload (SIGHUP, `POST /admin/routing/reload`): like `poll`, and a
        content refused before is validated again (a key file it names may have been fixed)."""
        return self._reload(force=True)

    def poll(self) -> bool:
        """Re-read the routing file if it changed (see `_reload`)."""
        return self._reload(force=False)

    def _reload(self, *, force: bool) -> bool:
        """Validate the file whole and build the adapters of new and changed channels, then
        swap both in; on any error keep the rules and adapters in force, log the error, count
        it and keep it for /admin/routing. Returns whether the rules in force changed."""
        staged: dict[str, tuple[tuple[str, dict[str, Any]], ChannelAdapter]] = {}

        def prepare(loaded: LoadedRouting) -> None:
            staged.update(self._build_changed(loaded))

        failures = self.holder.reload_failures
        changed = self.holder.reload(force=force, prepare=prepare)
        self.file_watch.poll()
        if changed:
            self._install(staged)
            self._show_version()
            log.info("routing_reloaded", version=self.holder.current.version)
        if self.holder.reload_failures > failures:
            metrics.ROUTING_RELOAD_FAILURES.inc()
            log.error("routing_reload_refused", error=self.holder.last_error)
        return changed

    def _build_changed(
        self, loaded: LoadedRouting
    ) -> dict[str, tuple[tuple[str, dict[str, Any]], ChannelAdapter]]:
        """New adapters for the channels whose adapter configuration differs from the one in
        force. Raises RoutingError naming every channel that refused (the adapters built
        meanwhile are closed: nothing of a refused file stays)."""
        built: dict[str, tuple[tuple[str, dict[str, Any]], ChannelAdapter]] = {}
        errors: list[str] = []
        for name, channel in loaded.config.channels.items():
            signature = (channel.adapter, adapter_config(channel))
            if self._built_for.get(name) == signature:
                continue
            try:
                adapter = build_adapter(channel.adapter, name, signature[1], self._ctx)
            except AdapterConfigError as exc:
                errors += [f"channels.{name}.{p}" for p in channel_problems(channel, exc.errors)]
                continue
            built[name] = (signature, adapter)
        if errors:
            for _, adapter in built.values():
                self._close_later(adapter, 0)
            raise RoutingError(errors, loaded.lines)
        return built

    def _install(
        self, built: Mapping[str, tuple[tuple[str, dict[str, Any]], ChannelAdapter]]
    ) -> None:
        """Put built adapters in force; retire the ones they replace. Adapters of channels that
        left the file are kept: their pending payments still get notifications and syncs."""
        for name, (signature, adapter) in built.items():
            old, old_signature = self._adapters.get(name), self._built_for.get(name)
            self._adapters[name] = adapter
            self._built_for[name] = signature
            if old is not None and old_signature is not None:
                self._close_later(old, old_signature[1]["timeout_ms"] / 1000)

    def _close_later(self, adapter: ChannelAdapter, budget_s: float) -> None:
        """Close a retired adapter once no call can still be using it: its per-call budget
        plus `RETIRED_ADAPTER_MARGIN_S` (at once for one that never served)."""
        delay = budget_s + RETIRED_ADAPTER_MARGIN_S if budget_s > 0 else 0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (built outside the gateway): closed by `aclose`
            self._retired.append((adapter, None))
            return
        self._retired.append((adapter, loop.call_later(delay, self._close_retired, adapter)))

    def _close_retired(self, adapter: ChannelAdapter) -> None:
        self._retired = [entry for entry in self._retired if entry[0] is not adapter]
        task = asyncio.get_running_loop().create_task(self._close(adapter))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(adapter: ChannelAdapter) -> None:
        try:
            await adapter.aclose()
        except Exception as exc:  # a retired adapter failing to close must not hurt the rest
            log.warning("adapter_close_failed", adapter=type(adapter).__name__, error=repr(exc))

    def _show_version(self) -> None:
        """gateway_routing_info: 1 for the version in force. The one it replaces goes to 0
        first: in multiprocess mode its value stays in this process's file after `remove`."""
        version = self.holder.current.version
        if self._shown_version is not None and self._shown_version != version:
            metrics.ROUTING_VERSION.labels(version=self._shown_version).set(0)
            metrics.ROUTING_VERSION.remove(self._shown_version)
        metrics.ROUTING_VERSION.labels(version=version).set(1)
        self._shown_version = version

    def adapter(self, channel: str) -> ChannelAdapter | None:
        return self._adapters.get(channel)

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
        retired, self._retired = self._retired, []
        for _, timer in retired:
            if timer is not None:
                timer.cancel()
        for adapter in [*(adapter for adapter, _ in retired), *self._adapters.values()]:
            await self._close(adapter)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
