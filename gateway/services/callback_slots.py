"""Callback delivery capacity shared by every gateway process: counting semaphores in Redis, one
per merchant and one per destination host, whose slots are leases that run out by themselves if
the process holding them dies.

Each semaphore is a sorted set of lease ids scored by when they expire (Redis server time, in
ms, so the processes' clocks do not matter). Acquiring drops the expired leases of both sets,
checks both against their caps and adds the lease to both or to neither, in one Lua script;
releasing removes it from both. Keys (one hash tag, so that a script's two keys share a cluster
slot):

- ``{prefix}{callback-slots}:merchant:<merchant id>``
- ``{prefix}{callback-slots}:host:<host>``

Each expires when its last lease would, so an idle merchant or host leaves nothing behind.

Redis away (an error, or no answer within `REDIS_TIMEOUT_S`): `acquire` grants the slot
without sharing it (`Slot.shared` False) and the dispatcher keeps the caps within its own
process only, so N processes may together run N times a cap. Callbacks are not money: a
delivery going out alongside more than its share costs the merchant's endpoint some load, while
refusing every callback until Redis is back would delay them all."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import redis.asyncio as aioredis
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

log = structlog.get_logger("callbacks")

REDIS_TIMEOUT_S = 1.0
"""How long a slot's acquisition or release waits for Redis before going on without it."""
UNAVAILABLE_LOG_EVERY_S = 10.0

SLOTS = Counter(
    "gateway_callback_slots_total",
    "Callback delivery slots asked for, by result (granted; merchant_full, host_full: put back"
    " for a moment; unshared: granted on this process's own caps, Redis away)",
    ["result"],
)

# KEYS[1]: the merchant's leases, KEYS[2]: the host's. ARGV[1]: the lease id, ARGV[2]: its length
# (ms), ARGV[3]: the merchant's cap, ARGV[4]: the host's. Returns 0 when the lease was added to
# both sets, else the index of the first full one (nothing added).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[2 + i]) then return i end
end
local lease = tonumber(ARGV[2])
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[1])
  if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
end
return 0
"""

# KEYS: the merchant's and the host's leases. ARGV[1]: the lease id.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
"""

Full = Literal["merchant", "host"]


@dataclass(frozen=True, slots=True)
class Slot:
    """The answer to one request for a slot."""

    granted: bool
    full: Full | None
    """Which cap refused it (not granted only)."""
    shared: bool
    """Held in Redis (False: granted on this process's own caps, or refused): only a shared
    slot is released there."""
    lease_id: str
    keys: tuple[str, str]


class SlotLeases:
    """The per-merchant and per-host delivery caps of every process together."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, per_merchant: int, per_host: int
    ) -> None:
        self.per_merchant = per_merchant
        self.per_host = per_host
        self._prefix = f"{prefix}{{callback-slots}}"
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._unavailable_logged = 0.0

    def _keys(self, merchant_id: str, host: str) -> tuple[str, str]:
        return f"{self._prefix}:merchant:{merchant_id}", f"{self._prefix}:host:{host}"

    async def acquire(self, merchant_id: str, host: str, lease_s: float) -> Slot:
        """A slot for one attempt of `merchant_id` to `host`, held for at most `lease_s`."""
        keys = self._keys(merchant_id, host)
        lease_id = secrets.token_hex(8)
        args: list[str | int] = [
            lease_id,
            max(1, int(lease_s * 1000)),
            self.per_merchant,
            self.per_host,
        ]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                full = int(await self._acquire(keys=list(keys), args=args))
        except (RedisError, OSError, TimeoutError) as exc:
            self._log_unavailable(exc)
            SLOTS.labels(result="unshared").inc()
            return Slot(True, None, False, lease_id, keys)
        if full == 0:
            SLOTS.labels(result="granted").inc()
            return Slot(True, None, True, lease_id, keys)
        which: Full = "merchant" if full == 1 else "host"
        SLOTS.labels(result=f"{which}_full").inc()
        return Slot(False, which, False, lease_id, keys)

    async def release(self, slot: Slot) -> None:
        """Give a shared slot back at once (else its lease runs out by itself)."""
        if not slot.shared:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await self._release(keys=list(slot.keys), args=[slot.lease_id])
        except (RedisError, OSError, TimeoutError) as exc:
            self._log_unavailable(exc)

    def _log_unavailable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._unavailable_logged >= UNAVAILABLE_LOG_EVERY_S:
            self._unavailable_logged = now
            log.warning(
                "callback_slots_unshared",
                error=repr(exc)[:500],
                hint="Redis is away: delivery caps are kept per process until it is back",
            )
