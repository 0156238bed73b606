"""The services one gateway process runs, in one container: built by the composition root
(`gateway.app`), reached by request handlers through the application (`gateway.api.context`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateway.auth.authenticator import Authenticator
from gateway.auth.secretbox import SecretBox
from gateway.domain.audit import FileWatch
from gateway.risk.engine import RiskEngine
from gateway.services.admin import AdminService
from gateway.services.callbacks import CallbackDispatcher
from gateway.services.channels import ChannelRegistry
from gateway.services.idempotency import IdempotencyKeys
from gateway.services.notifications import NotificationService
from gateway.services.operators import OperatorService, ThrottlePolicy
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.services.sync import StatusSync
from gateway.services.webhooks import WebhookService
from gateway.settings import Settings
from gateway.store import db

READY_TIMEOUT_S = 2.0


@dataclass(slots=True)
class Services:
    settings: Settings
    pool: db.Pool
    redis: aioredis.Redis
    authenticator: Authenticator
    channels: ChannelRegistry
    payments: PaymentService
    refunds: RefundService
    sync: StatusSync
    dispatcher: CallbackDispatcher
    risk: RiskEngine
    box: SecretBox | None
    # the services that need nothing but the pool and the ones above: built here, so that the
    # composition root need not know them
    webhooks: WebhookService = field(init=False)
    idempotency: IdempotencyKeys = field(init=False)
    notifications: NotificationService = field(init=False)
    operators: OperatorService = field(init=False)
    admin: AdminService = field(init=False)

    def __post_init__(self) -> None:
        self.webhooks = WebhookService(self.pool)
        self.idempotency = IdempotencyKeys(self.pool)
        self.notifications = NotificationService(self.pool, self.payments, self.refunds)
        settings = self.settings
        self.operators = OperatorService(
            self.pool,
            admin_token=settings.admin_token,
            session_idle_s=settings.session_idle_s,
            session_max_s=settings.session_max_s,
            throttle=ThrottlePolicy(
                account_max_failures=settings.sign_in_max_failures,
                address_max_failures=settings.sign_in_address_max_failures,
                lockout_s=settings.sign_in_lockout_s,
            ),
        )
        self.admin = AdminService(self.pool, self.box, self.channels)

    @property
    def file_watches(self) -> list[FileWatch]:
        """The rules files this process loads, for the audit log."""
        return [self.channels.file_watch, self.risk.file_watch]

    async def readiness(self) -> dict[str, str]:
        """`ok…` or `error: …` for the database, Redis and the routing rules."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await db.ping(self.pool)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        checks["routing"] = f"ok ({self.channels.holder.current.version})"
        return checks
