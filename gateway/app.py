"""The application factory: settings -> pools -> services -> routes -> background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from adapters.base import AdapterContext
from adapters.registry import available_simulators, build_simulator
from adapters.simkit import SimulatorSettings, mount
from gateway import logs, metrics
from gateway.api import admin, merchant, notify, ops
from gateway.api.context import SERVICES, Services
from gateway.api.middleware import request_context
from gateway.auth.authenticator import Authenticator
from gateway.auth.secretbox import SecretBox
from gateway.channel_health import ChannelHealthStore
from gateway.http_client import channel_session
from gateway.risk.engine import RiskEngine
from gateway.risk.loader import RiskHolder
from gateway.services.callbacks import CallbackDispatcher
from gateway.services.channels import ChannelRegistry
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.services.sync import StatusSync
from gateway.settings import Settings
from gateway.store import idempotency as idempotency_store
from gateway.store.db import Pool, create_pool, migrate
from routing.loader import RoutingHolder

log = structlog.get_logger("app")

MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    redis_url: str


def routing_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GATEWAY_PUBLIC_URL", settings.effective_public_url)
    return env


def create_app(settings: Settings, endpoints: Endpoints) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=MAX_BODY)
    merchant.add_routes(app)
    notify.add_routes(app)
    ops.add_routes(app)
    admin.add_routes(app)
    if settings.simulators:
        sim_settings = SimulatorSettings(
            config_dir=str(settings.config_dir),
            notify_time_scale=settings.sim_notify_time_scale,
        )
        for adapter in available_simulators():
            mount(app, adapter, build_simulator(adapter, sim_settings))
    app.cleanup_ctx.append(_lifecycle(settings, endpoints))
    return app


def _lifecycle(
    settings: Settings, endpoints: Endpoints
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(endpoints.database_url, settings.db_pool_min, settings.db_pool_max)
        async with pool.acquire() as conn:
            await migrate(conn)
        # from_pool: the client owns the pool and closes it with itself
        redis = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                endpoints.redis_url,
                max_connections=settings.redis_pool_max,
                timeout=settings.redis_pool_timeout_s,
            )
        )
        http = channel_session()
        box = SecretBox(settings.master_key.get_secret_value()) if settings.master_key else None
        if box is None:
            log.warning("master_key_missing", hint="set GATEWAY_MASTER_KEY")
        holder = RoutingHolder(settings.routing_file, env=routing_env(settings))
        metrics.ROUTING_VERSION.labels(version=holder.current.version).set(1)
        channels = ChannelRegistry(
            holder,
            AdapterContext(http=http, config_dir=str(settings.config_dir)),
            ChannelHealthStore(redis, settings.redis_prefix),
        )
        risk = RiskEngine(RiskHolder(settings.risk_file), redis, settings.redis_prefix)
        payments = PaymentService(
            pool,
            channels,
            settings.effective_public_url,
            settings.sync_schedule,
            risk=risk,
            late_payment_auto_refund=settings.late_payment_auto_refund,
        )
        refunds = RefundService(
            pool, channels, settings.effective_public_url, settings.sync_schedule
        )
        sync = StatusSync(
            pool, channels, payments, refunds, settings.sync_schedule, poll_s=settings.sync_poll_s
        )
        dispatcher = CallbackDispatcher(
            pool,
            box,
            schedule=settings.webhook_retry_schedule,
            allow_private=settings.callback_allow_private,
            timeout_s=settings.callback_timeout_s,
            poll_s=settings.dispatcher_poll_s,
            concurrency=settings.dispatcher_concurrency,
        )
        authenticator = Authenticator(
            pool, redis, box, settings.redis_prefix, settings.key_cache_ttl_s
        )
        await authenticator.start()
        app[SERVICES] = Services(
            settings=settings,
            pool=pool,
            redis=redis,
            authenticator=authenticator,
            channels=channels,
            payments=payments,
            refunds=refunds,
            sync=sync,
            dispatcher=dispatcher,
        )
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        if settings.background:
            tasks.append(asyncio.create_task(dispatcher.run(stop), name="callback-dispatcher"))
            tasks.append(asyncio.create_task(sync.run(stop), name="status-sync"))
            tasks.append(
                asyncio.create_task(
                    _every(settings.routing_poll_s, stop, _reload(channels, risk)), name="routing"
                )
            )
            tasks.append(
                asyncio.create_task(
                    _every(300, stop, _purge_idempotency(pool)), name="idempotency-purge"
                )
            )
            reload_now = _reload(channels, risk)
            with contextlib.suppress(NotImplementedError, RuntimeError):
                # SIGHUP: re-read the routing and risk files now rather than at the next poll
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, lambda: tasks.append(asyncio.create_task(reload_now()))
                )
        log.info(
            "gateway_started",
            public_url=settings.effective_public_url,
            routing_version=holder.current.version,
            simulators=settings.simulators,
        )
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await channels.aclose()
            await http.close()
            await redis.aclose()
            await pool.close()

    return lifecycle


def _reload(channels: ChannelRegistry, risk: RiskEngine) -> Callable[[], Coroutine[Any, Any, None]]:
    async def run() -> None:
        risk.reload()
        before = channels.holder.reload_failures
        if channels.reload():
            metrics.ROUTING_VERSION.clear()
            metrics.ROUTING_VERSION.labels(version=channels.holder.current.version).set(1)
        if channels.holder.reload_failures > before:
            metrics.ROUTING_RELOAD_FAILURES.inc()
            log.error("routing_reload_refused", error=channels.holder.last_error)

    return run


def _purge_idempotency(pool: Pool) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await idempotency_store.purge_expired(pool)

    return run


async def _every(interval: float, stop: asyncio.Event, job: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        logs.bind_job()  # each run: this loop is a task of its own
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background_job_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
