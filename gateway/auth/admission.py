"""Admits a verified request in one Redis round trip: its nonce is checked and recorded (in the
nonce cache's current generation) and its merchant's budget charged (`gateway.auth.budgets`),
by one Lua script. Also the budget of failed authentications per source address, and the
start-up check that Redis cannot evict nonces.

**Generations.** Redis is disposable: restarted empty or from an older snapshot, failed over
to a replica that lagged, or flushed, it has lost nonces of the last 15 minutes, and a captured
request still inside the 300 s clock window could be replayed once. A generation is one life
of the cache: one Redis server run (`run_id`) with one replication history (`master_replid`).
Redis holds the current one in a hash without expiry (`{prefix}nonce-gen`: id, run_id, replid,
refuse_before, recorded); PostgreSQL holds the history (`nonce_cache_generations`). The
admission script compares the hash with the server's own `INFO` on every call, so a request
is never admitted against a cache that changed:

- hash present, same run_id and replid: the cache is whole; a request signed before the
  generation's `refuse_before` is refused (503, sign again), any other is admitted.
- hash missing (a new or flushed Redis), or naming another run or replication history (a
  restart from a snapshot, a promoted replica, a full resync): nothing is admitted until a
  process opens a new generation. It does so under a PostgreSQL lock, so concurrent processes
  open one: if the generation before it had recorded nonces (as the hash says, when it
  survived, or the latest generation in PostgreSQL), they may be lost, and requests signed up
  to the second the change was found are refused; if it had recorded none, nothing can be
  replayed, and the new generation refuses only what the one before refused.
- a generation not yet marked `recorded`: before its first nonce is recorded, PostgreSQL is
  told (so that a generation lost later is known to have held nonces), then the hash is.

So a new deployment, or a Redis restarted before any request, refuses nothing (API.md §1.1:
only a nonce store that held entries may cause 503); a lost cache refuses the requests signed
up to the second the loss was found. What is left: a request recorded before the loss whose
timestamp is later than that second (the merchant's clock ahead of the gateway's, by at most
the 300 s window) can still be replayed once.

**Eviction** cannot be seen this way: an evicted nonce leaves the hash and the server as they
were. Every eviction policy but `noeviction` may evict nonces (the `volatile-*` ones evict keys
with an expiry, which every nonce has), so the gateway refuses to start on such a Redis
(`UnsafeRedisConfig`); one whose policy cannot be read (CONFIG disabled) is logged as an error.
The policy is checked when the gateway starts, not again while it runs.

**Budgets** (GCRA, `gateway.auth.budgets`): one key per merchant and class holding the
theoretical arrival time in microseconds of Redis's clock (so every process agrees), expiring
when the budget is whole again. A request over budget is refused and not counted; its nonce is
consumed all the same, so that the refused request cannot be replayed to run later, once the
merchant has sent its own retry. A replayed nonce is refused before the budget is charged, so
copies of a captured request cannot spend a merchant's budget.

The scripts touch several keys that share no hash tag: they need a single Redis (primary), not
a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from gateway import metrics
from gateway.auth.budgets import RateLimit, retry_after_s
from gateway.auth.signature import NONCE_TTL_S
from gateway.domain.errors import AuthFailed, Budget, RateLimited, ServiceUnavailable
from gateway.domain.ids import new_id
from gateway.store import nonce_cache as store
from gateway.store.db import Pool

log = structlog.get_logger("auth")

REDIS_AWAY: tuple[type[BaseException], ...] = (RedisError, OSError)

_LIB = """
-- a field of an INFO section (a plain find: a pattern over the section costs 2 µs more)
local function info_field(section, name)
  local text = redis.call('INFO', section)
  local at = string.find(text, '\\n' .. name .. ':', 1, true)
  if not at then return false end
  local from = at + #name + 2
  return string.sub(text, from, (string.find(text, '\\r', from, true) or 0) - 1)
end

local function identity()
  return info_field('server', 'run_id'), info_field('replication', 'master_replid')
end

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- One request against a GCRA budget (key: its theoretical arrival time, µs). Returns
-- {admitted (1 | 0), remaining, reset (µs until whole again), wait (µs until one more fits)}.
local function gcra(key, interval, burst, now)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if now < allow_at then return {0, 0, tat - now, allow_at - now} end
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
  return {1, math.floor((now - allow_at) / interval), new_tat - now,
          math.max(0, new_tat + interval - burst * interval - now)}
end
"""

# KEYS[1]: the generation hash, KEYS[2]: the nonce, KEYS[3] (optional): the merchant's budget.
# ARGV[1]: the request's timestamp (unix s), ARGV[2]: the nonce's lifetime (s); with a budget,
# ARGV[3]: its interval (µs), ARGV[4]: its burst. Returns {code, …}:
#   {-1}: no generation for this server (open one); nothing done
#   {-2, refuse_before}: signed before the generation's refuse_before; nothing done
#   {-3, id}: the generation is not marked recorded yet; nothing done
#   {0}: the nonce was used before; nothing done
#   {1, remaining, reset, wait}: admitted, nonce recorded, budget charged (figures without one)
#   {2, remaining, reset, wait}: over budget; nonce recorded, budget not charged
_ADMIT = (
    _LIB
    + """
local gen = redis.call('HMGET', KEYS[1], 'id', 'run_id', 'replid', 'refuse_before', 'recorded')
local run_id, replid = identity()
if not gen[1] or gen[2] ~= run_id or gen[3] ~= replid then return {-1} end
local refuse_before = tonumber(gen[4])
if tonumber(ARGV[1]) < refuse_before then return {-2, refuse_before} end
if gen[5] ~= '1' then return {-3, gen[1]} end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return {0} end
if #KEYS < 3 then return {1, 0, 0, 0} end
local b = gcra(KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4]), now_us())
if b[1] == 0 then return {2, b[2], b[3], b[4]} end
return {1, b[2], b[3], b[4]}
"""
)

# KEYS[1]: the generation hash. Returns {run_id, replid, now (unix s), id, run_id, replid,
# refuse_before, recorded} (the server's identity and clock, then the hash's fields).
_INSPECT = (
    _LIB
    + """
local run_id, replid = identity()
local gen = redis.call('HMGET', KEYS[1], 'id', 'run_id', 'replid', 'refuse_before', 'recorded')
return {run_id, replid, tonumber(redis.call('TIME')[1]), gen[1], gen[2], gen[3], gen[4], gen[5]}
"""
)

# KEYS[1]: the generation hash. ARGV: id, run_id, replid, refuse_before of a new generation.
# Installs it unless the server is no longer the one it was opened for, or a generation of this
# server is in place already (another process's). Returns 1 when installed.
_INSTALL = (
    _LIB
    + """
local run_id, replid = identity()
if ARGV[2] ~= run_id or ARGV[3] ~= replid then return 0 end
local current = redis.call('HMGET', KEYS[1], 'run_id', 'replid')
if current[1] == run_id and current[2] == replid then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'run_id', run_id, 'replid', replid,
           'refuse_before', ARGV[4], 'recorded', '0')
return 1
"""
)

# KEYS[1]: the generation hash, ARGV[1]: a generation's id: marks it recorded if in place.
_MARK_RECORDED = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'recorded', '1')
  return 1
end
return 0
"""

# KEYS[1]: a source address's budget of failed authentications. ARGV[1]: its interval (µs),
# ARGV[2]: its burst. Counts one failure: {admitted, remaining, reset, wait} as gcra().
_COUNT_FAILURE = (
    _LIB
    + """
return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now_us())
"""
)

_ATTEMPTS = 4
"""Admission tries: opening a generation and marking it recorded each take one more."""


class UnsafeRedisConfig(Exception):
    """Redis is configured so that it may drop nonces without the gateway noticing."""


@dataclass(frozen=True, slots=True)
class _CacheState:
    """The server's identity and clock, and the generation hash as found."""

    run_id: str
    replid: str
    now_s: int
    generation_id: str | None
    generation_run_id: str | None
    generation_replid: str | None
    refuse_before: int | None
    recorded: bool

    @classmethod
    def of(cls, reply: Sequence[Any]) -> _CacheState:
        text = [None if v is None else _text(v) for v in reply]
        return cls(
            run_id=str(text[0]),
            replid=str(text[1]),
            now_s=int(str(text[2])),
            generation_id=text[3],
            generation_run_id=text[4],
            generation_replid=text[5],
            refuse_before=int(text[6]) if text[6] else None,
            recorded=text[7] == "1",
        )

    @property
    def current(self) -> bool:
        """The hash names a generation of this very server."""
        return (
            self.generation_id is not None
            and self.generation_run_id == self.run_id
            and self.generation_replid == self.replid
        )


class Admission:
    """The nonce cache with its generations, and the merchants' budgets, in Redis under
    `prefix`; the generations' history in PostgreSQL."""

    def __init__(self, pool: Pool, redis: aioredis.Redis, prefix: str) -> None:
        self._pool = pool
        self._redis = redis
        self._prefix = prefix
        self._generation_key = f"{prefix}nonce-gen"
        self._admit = redis.register_script(_ADMIT)
        self._inspect = redis.register_script(_INSPECT)
        self._install = redis.register_script(_INSTALL)
        self._mark = redis.register_script(_MARK_RECORDED)
        self._opening = asyncio.Lock()

    async def start(self) -> None:
        """Refuse a Redis that may evict nonces (UnsafeRedisConfig), then open the cache's
        generation if it has none, so that the first request need not. With Redis away, the
        first request that reaches it does both but the first."""
        try:
            policy = (await self._redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        except ResponseError as exc:  # CONFIG renamed or not allowed (managed Redis, ACL)
            log.error(
                "redis_eviction_policy_unknown",
                error=str(exc),
                hint="make sure Redis runs with maxmemory-policy noeviction: an evicted nonce "
                "lets a captured request be replayed",
            )
        except REDIS_AWAY as exc:
            log.warning("nonce_cache_not_checked", error=repr(exc))
            return
        else:
            if policy is not None and policy != "noeviction":
                raise UnsafeRedisConfig(
                    f"Redis's maxmemory-policy is {policy}: it may evict the nonces of the "
                    "replay cache (every policy but noeviction may: volatile-* evicts keys with "
                    "an expiry, as every nonce has), and a captured request could then be "
                    "replayed. Set maxmemory-policy noeviction (redis.conf, or CONFIG SET); "
                    "Redis then refuses writes when full, and the gateway answers 503."
                )
        try:
            state = await self._state()
            if not state.current:
                await self._open_generation()
        except REDIS_AWAY as exc:
            log.warning("nonce_cache_not_checked", error=repr(exc))

    async def admit(
        self, key_id: str, nonce: str, timestamp: int, budget: tuple[str, RateLimit] | None
    ) -> Budget | None:
        """Record the nonce and charge the budget (its Redis key and rate), if any; returns
        where the budget stands. Raises AuthFailed (`nonce_replayed`), RateLimited (over
        budget: the nonce is consumed), ServiceUnavailable (Redis cannot answer, or the
        request was signed before the cache was lost: sign again)."""
        keys = [self._generation_key, f"{self._prefix}nonce:{key_id}:{nonce}"]
        args: list[str | int] = [timestamp, NONCE_TTL_S]
        if budget is not None:
            keys.append(budget[0])
            args += [budget[1].interval_us, budget[1].burst]
        try:
            for _ in range(_ATTEMPTS):
                reply = await self._admit(keys=keys, args=args)
                code = int(reply[0])
                if code == -1:
                    await self._open_generation()
                elif code == -3:
                    await self._mark_recorded(_text(reply[1]))
                else:
                    break
            else:
                raise ServiceUnavailable(
                    "The replay cache is changing; the request was not processed.",
                    retry_after_s=1,
                )
        except REDIS_AWAY as exc:
            log.error("nonce_cache_unavailable", error=repr(exc))
            raise ServiceUnavailable(
                "The replay cache is unavailable; the request was not processed.",
                retry_after_s=1,
            ) from None
        if code == 0:
            raise AuthFailed("nonce_replayed", "This nonce was already used with this key.")
        if code == -2:
            metrics.AUTH_FAILURES.labels(code="nonce_cache_reset").inc()
            log.warning("nonce_cache_lost_request_refused", refuse_before=int(reply[1]))
            raise ServiceUnavailable(
                "The replay cache was reset after this request was signed, so its nonce "
                "cannot be checked; sign the request again and retry.",
                retry_after_s=0,
            )
        if budget is None:
            return None
        remaining, reset_us, wait_us = int(reply[1]), int(reply[2]), int(reply[3])
        standing = budget[1].standing(remaining, reset_us)
        if code == 2:
            raise RateLimited(
                f"Over this merchant's budget of {budget[1].per_s:g} requests a second for "
                "this kind of request; nothing was done. Retry after Retry-After seconds "
                "(sign the request again).",
                retry_after_s=retry_after_s(wait_us),
                budget=standing,
            )
        return standing

    async def _state(self) -> _CacheState:
        return _CacheState.of(await self._inspect(keys=[self._generation_key]))

    async def _open_generation(self) -> None:
        """Open a generation for the server Redis is now (see the module's docstring)."""
        async with self._opening:  # one at a time in this process; others wait and see it done
            state = await self._state()
            if state.current:
                return
            async with store.opening(self._pool) as conn:
                state = await self._state()  # another process may have opened it meanwhile
                if state.current:
                    return
                previous = await store.latest(conn)
                held = state.recorded or (previous is not None and previous.nonces_recorded)
                inherited = [state.refuse_before]
                if previous is not None:
                    inherited.append(previous.refuse_before)
                # the second the change was found, included: a request of that very second
                # may have been recorded in the generation lost
                refuse_before = (
                    state.now_s + 1
                    if held
                    else max((v for v in inherited if v is not None), default=None)
                )
                generation = await store.insert(
                    conn, new_id("ncg"), state.run_id, state.replid, refuse_before
                )
            installed = await self._install(
                keys=[self._generation_key],
                args=[generation.id, state.run_id, state.replid, refuse_before or 0],
            )
            (log.warning if held else log.info)(
                "nonce_cache_generation_opened",
                generation=generation.id,
                redis_run_id=state.run_id,
                redis_replid=state.replid,
                previous=state.generation_id or (previous.id if previous else None),
                previous_held_nonces=held,
                refuse_before=refuse_before,
                installed=bool(installed),
            )

    async def _mark_recorded(self, generation_id: str) -> None:
        """PostgreSQL first: once the hash says recorded, nonces are recorded without asking."""
        state = await self._state()
        if state.generation_id != generation_id:
            return  # replaced meanwhile: the next try sees the new one
        await store.mark_recorded(
            self._pool, generation_id, state.run_id, state.replid, state.refuse_before
        )
        await self._mark(keys=[self._generation_key], args=[generation_id])


class FailureBudget:
    """Failed authentications per source address, counted in Redis (every process shares the
    count). An address out of budget is refused without verifying (429) by each process that
    has seen it so, for as long as its budget says, at no cost: no Redis call, no database
    read, no signature check."""

    _MAX_BLOCKED = 100_000

    def __init__(self, redis: aioredis.Redis, prefix: str, limit: RateLimit) -> None:
        self._redis = redis
        self._prefix = prefix
        self._limit = limit
        self._count = redis.register_script(_COUNT_FAILURE)
        self._blocked: dict[str, float] = {}
        """Address → until when (monotonic) it is refused."""

    def refuse_if_blocked(self, address: str) -> None:
        until = self._blocked.get(address)
        if until is None:
            return
        wait = until - time.monotonic()
        if wait <= 0:
            del self._blocked[address]
            return
        raise RateLimited(
            "Too many failed authentications from this address; retry after Retry-After seconds.",
            retry_after_s=retry_after_s(int(wait * 1e6)),
        )

    async def count(self, address: str) -> None:
        """Count one failure of `address`; once its budget is spent, it is refused until one
        more failure fits. Best effort: with Redis away, the failure is only logged."""
        try:
            reply = await self._count(
                keys=[f"{self._prefix}authfail:{address}"],
                args=[self._limit.interval_us, self._limit.burst],
            )
        except REDIS_AWAY as exc:
            log.warning("auth_failure_not_counted", error=repr(exc))
            return
        admitted, remaining, wait_us = int(reply[0]), int(reply[1]), int(reply[3])
        if admitted and remaining > 0:
            return
        if len(self._blocked) >= self._MAX_BLOCKED:
            now = time.monotonic()
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        self._blocked[address] = time.monotonic() + wait_us / 1e6
        log.warning("auth_failures_over_budget", source=address, refused_for_s=wait_us / 1e6)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
