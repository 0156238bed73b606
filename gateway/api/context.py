"""What request handlers reach through the application: one container, set up by `app.py`."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web

from gateway.auth.authenticator import Authenticator
from gateway.services.callbacks import CallbackDispatcher
from gateway.services.channels import ChannelRegistry
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.services.sync import StatusSync
from gateway.settings import Settings
from gateway.store.db import Pool


@dataclass(slots=True)
class Services:
    settings: Settings
    pool: Pool
    redis: aioredis.Redis
    authenticator: Authenticator
    channels: ChannelRegistry
    payments: PaymentService
    refunds: RefundService
    sync: StatusSync
    dispatcher: CallbackDispatcher


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.config_dict[SERVICES]
