"""The application factory: settings -> pools (the schema checked, or migrated when
`migrate_on_start`) -> routing and channels (the files loaded, or refused, audited; the
production checks on every version of the routing file unless `allow_dev_keys`) -> services
-> routes -> background tasks (the dispatcher, the status sync, the routing and risk file polls
and their audit entries, the purges, SIGHUP).

The operators' surface — /admin/…, /console/…, /metrics (`add_internal_routes`) — is served by
the main application, or, when `internal_port` is set, only by an internal application on
internal_host:internal_port, started and stopped with the main one and sharing its services."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from adapters.base import AdapterContext
from adapters.registry import available_simulators, build_simulator
from adapters.simkit import SimulatorSettings, mount
from gateway import logs, production
from gateway.api import admin, merchant, notify, ops
from gateway.api.context import SERVICES, Services
from gateway.api.middleware import request_context
from gateway.auth.authenticator import Authenticator
from gateway.auth.secretbox import SecretBox
from gateway.channel_health import ChannelHealthStore
from gateway.http_client import channel_session
from gateway.risk.engine import RiskEngine
from gateway.risk.loader import RiskHolder
from gateway.services import audit
from gateway.services.callbacks import CallbackDispatcher
from gateway.services.channels import ChannelRegistry, routing_holder
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.services.sync import StatusSync
from gateway.settings import Settings
from gateway.store import idempotency as idempotency_store
from gateway.store.db import Pool, create_pool, migrate, require_current_schema
from routing.files import RulesFileError

log = structlog.get_logger("app")

MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    redis_url: str


def master_key_box(settings: Settings) -> SecretBox | None:
    """The secret box of GATEWAY_MASTER_KEY (opening GATEWAY_MASTER_KEY_PREVIOUS's secrets
    too), None when no master key is set. Raises ValueError naming a malformed key."""
    if settings.master_key is None:
        return None
    previous = settings.master_key_previous
    return SecretBox(
        settings.master_key.get_secret_value(),
        None if previous is None else previous.get_secret_value(),
    )


def add_internal_routes(app: web.Application) -> None:
    """The operators' surface: what the internal listener serves (API.md §4)."""
    admin.add_routes(app)
    ops.add_metrics_route(app)


def _application() -> web.Application:
    return web.Application(middlewares=[request_context], client_max_size=MAX_BODY)


def create_app(settings: Settings, endpoints: Endpoints) -> web.Application:
    app = _application()
    merchant.add_routes(app)
    notify.add_routes(app)
    ops.add_routes(app)
    if settings.internal_port is None:
        add_internal_routes(app)
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
        async with contextlib.AsyncExitStack() as resources:  # closed in reverse, also on failure
            pool = await create_pool(
                endpoints.database_url, settings.db_pool_min, settings.db_pool_max
            )
            resources.push_async_callback(pool.close)
            async with pool.acquire() as conn:
                if settings.migrate_on_start:
                    await migrate(conn)
                else:
                    await require_current_schema(conn)
            # from_pool: the client owns the pool and closes it with itself
            redis = aioredis.Redis.from_pool(
                aioredis.BlockingConnectionPool.from_url(
                    endpoints.redis_url,
                    max_connections=settings.redis_pool_max,
                    timeout=settings.redis_pool_timeout_s,
                )
            )
            resources.push_async_callback(redis.aclose)
            http = channel_session()
            resources.push_async_callback(http.close)
            box = master_key_box(settings)
            if box is None:
                log.warning("master_key_missing", hint="set GATEWAY_MASTER_KEY")
            guard = None if settings.allow_dev_keys else production.channel_guard(settings)
            async with _audit_refusal(pool, "routing", settings.routing_file):
                holder = routing_holder(settings, guard)
                channels = ChannelRegistry(
                    holder,
                    AdapterContext(http=http, config_dir=str(settings.config_dir)),
                    ChannelHealthStore(redis, settings.redis_prefix),
                )
            resources.push_async_callback(channels.aclose)
            async with _audit_refusal(pool, "risk", settings.risk_file):
                risk_holder = RiskHolder(settings.risk_file)
            risk = RiskEngine(risk_holder, redis, settings.redis_prefix)
            await audit.record_files_started(pool, [channels.file_watch, risk.file_watch])
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
                pool,
                channels,
                payments,
                refunds,
                settings.sync_schedule,
                poll_s=settings.sync_poll_s,
            )
            dispatcher = CallbackDispatcher.from_settings(settings, pool, box, redis)
            authenticator = Authenticator.from_settings(pool, redis, box, settings)
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
                risk=risk,
                box=box,
            )
            if settings.internal_port is not None:
                await resources.enter_async_context(_internal_listener(settings, app[SERVICES]))
            if settings.background:
                await resources.enter_async_context(_background(settings, app[SERVICES]))
            log.info(
                "gateway_started",
                public_url=settings.effective_public_url,
                routing_version=holder.current.version,
                simulators=settings.simulators,
            )
            yield

    return lifecycle


@contextlib.asynccontextmanager
async def _audit_refusal(pool: Pool, kind: str, path: Path) -> AsyncIterator[None]:
    """Audit a rules file the gateway refuses to start with, then let the refusal through."""
    try:
        yield
    except RulesFileError as exc:
        try:
            await audit.record_refused_at_start(pool, kind, str(path), str(exc))
        except Exception:  # the refusal is what the operator needs to see
            log.exception("audit_refusal_failed", kind=kind)
        raise


@contextlib.asynccontextmanager
async def _internal_listener(settings: Settings, svc: Services) -> AsyncIterator[None]:
    """The operators' surface on internal_host:internal_port, for as long as the main app."""
    internal = _application()
    add_internal_routes(internal)
    internal[SERVICES] = svc
    runner = web.AppRunner(internal, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.internal_host,
            settings.internal_port,
            reuse_port=settings.reuse_port or None,
        )
        await site.start()
        log.info("internal_listener_started", address=site.name)
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _background(settings: Settings, svc: Services) -> AsyncIterator[None]:
    """The background workers of this process, and SIGHUP; stopped on the way out."""
    stop = asyncio.Event()
    risk = svc.risk
    jobs = {
        "callback-dispatcher": svc.dispatcher.run(stop),
        "status-sync": svc.sync.run(stop),
        "routing": _every(settings.routing_poll_s, stop, _poll(svc)),
        "idempotency-purge": _every(300, stop, _purge_idempotency(svc.pool)),
        "sign-in-purge": _every(300, stop, svc.operators.purge_sign_in_failures),
    }
    tasks = [asyncio.create_task(job, name=name) for name, job in jobs.items()]
    loop = asyncio.get_running_loop()
    hup = False
    with contextlib.suppress(NotImplementedError, RuntimeError):
        # SIGHUP: re-read the routing and risk files now rather than at the next poll
        loop.add_signal_handler(signal.SIGHUP, _on_sighup, svc.channels, risk)
        hup = True
    try:
        yield
    finally:
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _poll(svc: Services) -> Callable[[], Awaitable[None]]:
    """The periodic job: re-read the routing and risk files if they changed; audit what was
    loaded or refused since the last run (SIGHUP's reloads included)."""

    async def run() -> None:
        svc.risk.reload()
        svc.channels.poll()
        await audit.flush_file_events(svc.pool, svc.file_watches)

    return run


def _on_sighup(channels: ChannelRegistry, risk: RiskEngine) -> None:
    """SIGHUP: re-read the routing and risk files now rather than at the next poll (the
    routing file as an operator's reload: a refused content is validated again)."""
    logs.bind_job()
    try:
        risk.reload()
        channels.reload()
    except Exception:  # a signal handler that raises would only print to stderr
        log.exception("sighup_reload_failed")


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
