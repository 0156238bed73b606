"""Channel health shared through Redis: each channel's circuit breaker and its sliding success
window, so that every gateway process sees and updates the same state.

The transitions are those of `routing.health` (the pure reference), applied inside Lua scripts
so that two processes recording at the same moment cannot lose an update. Reading every
channel's state is one pipelined round trip.

Keys, per channel (the `{...}` hash tag keeps both keys of a channel in one cluster slot):

- ``{prefix}ch:{<channel>}:breaker``  hash: state, opened_at, consecutive, in_flight,
  probe_ok, probe_at, window_s, and ``c:<bucket start>`` / ``f:<bucket start>`` counts of
  calls and failures in the closed state's window;
- ``{prefix}ch:{<channel>}:outcomes`` hash: window_s, ``s:<start>`` / ``f:<start>`` counts of
  successes and failures in the success-rate window.

Both expire after a long idle time (twice the longest window or open time, plus a minute), which
returns an idle channel to a clean, closed state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from routing.health import (
    BreakerState,
    Bucket,
    ChannelHealth,
    SuccessStats,
    window_totals,
)
from routing.schema import RoutingSettings

_COMMON = """
local now = tonumber(ARGV[1])

local function width(w)
  return math.max(1, math.ceil(w / 20))
end

-- drop buckets that left the window (all of them if the window length changed), then add
local function window_add(key, w, ok_kind, add_ok, add_fail)
  local wd = width(w)
  local stored = tonumber(redis.call('HGET', key, 'window_s'))
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local kind, start = string.match(flat[i], '^([csf]):(%d+)$')
    if kind then
      start = tonumber(start)
      if stored ~= w or start + wd <= now - w then
        redis.call('HDEL', key, flat[i])
      end
    end
  end
  redis.call('HSET', key, 'window_s', w)
  local b = math.floor(now / wd) * wd
  if add_ok > 0 then redis.call('HINCRBY', key, ok_kind .. ':' .. b, add_ok) end
  if add_fail > 0 then redis.call('HINCRBY', key, 'f:' .. b, add_fail) end
end

local function window_totals(key, w, ok_kind)
  local wd = width(w)
  local ok, fail = 0, 0
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local kind, start = string.match(flat[i], '^([csf]):(%d+)$')
    if kind and tonumber(start) + wd > now - w then
      if kind == ok_kind then ok = ok + tonumber(flat[i + 1]) end
      if kind == 'f' then fail = fail + tonumber(flat[i + 1]) end
    end
  end
  return ok, fail
end
"""

# KEYS: breaker, outcomes
# ARGV: now, success (1|0), window_s, min_calls, failure_ratio, consecutive_failures, open_s,
#       half_open_probes, success window_s, ttl_ms, count (how many such results: successes
#       are recorded in batches; a failure is always one)
_RECORD = (
    _COMMON
    + """
local bk, sk = KEYS[1], KEYS[2]
local success = ARGV[2] == '1'
local window_s = tonumber(ARGV[3])
local min_calls = tonumber(ARGV[4])
local ratio = tonumber(ARGV[5])
local max_consecutive = tonumber(ARGV[6])
local open_s = tonumber(ARGV[7])
local probes = tonumber(ARGV[8])
local sr_window = tonumber(ARGV[9])
local ttl = tonumber(ARGV[10])
local count = tonumber(ARGV[11]) or 1

local h = redis.call('HMGET', bk, 'state', 'opened_at', 'consecutive', 'in_flight', 'probe_ok')
local state = h[1] or 'closed'
local opened_at = tonumber(h[2])
local consecutive = tonumber(h[3]) or 0
local in_flight = tonumber(h[4]) or 0
local probe_ok = tonumber(h[5]) or 0

local function set_open()
  redis.call('DEL', bk)
  redis.call('HSET', bk, 'state', 'open', 'opened_at', ARGV[1], 'window_s', window_s)
  return 'open'
end

local function breaker()
  if state == 'open' then
    if opened_at ~= nil and now - opened_at < open_s then
      return 'open'  -- a late result of a call sent before the circuit opened
    end
    state, in_flight, probe_ok = 'half_open', 0, 0
    redis.call('HSET', bk, 'state', 'half_open', 'in_flight', 0, 'probe_ok', 0)
    redis.call('HDEL', bk, 'probe_at')
  end
  if state == 'half_open' then
    if not success then return set_open() end
    probe_ok = probe_ok + count
    if probe_ok >= probes then
      redis.call('DEL', bk)
      redis.call('HSET', bk, 'state', 'closed', 'window_s', window_s)
      return 'closed'
    end
    redis.call('HSET', bk, 'probe_ok', probe_ok, 'in_flight', math.max(0, in_flight - count))
    return 'half_open'
  end
  window_add(bk, window_s, 'c', count, success and 0 or 1)
  if success then consecutive = 0 else consecutive = consecutive + 1 end
  redis.call('HSET', bk, 'state', 'closed', 'consecutive', consecutive)
  if not success then
    local calls, failures = window_totals(bk, window_s, 'c')
    if consecutive >= max_consecutive or (calls >= min_calls and failures >= ratio * calls) then
      return set_open()
    end
  end
  return 'closed'
end

local result = breaker()
window_add(sk, sr_window, 's', success and count or 0, success and 0 or 1)
redis.call('PEXPIRE', bk, ttl)
redis.call('PEXPIRE', sk, ttl)
return result
"""
)

# KEYS: breaker; ARGV: now, open_s, half_open_probes, ttl_ms. Returns 1 (go) or 0 (refused).
_ACQUIRE = """
local now = tonumber(ARGV[1])
local bk = KEYS[1]
local open_s = tonumber(ARGV[2])
local probes = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local h = redis.call('HMGET', bk, 'state', 'opened_at', 'in_flight', 'probe_at')
local state = h[1] or 'closed'
if state == 'closed' then return 1 end
local in_flight = tonumber(h[3]) or 0
local probe_at = tonumber(h[4])
if state == 'open' then
  local opened_at = tonumber(h[2])
  if opened_at ~= nil and now - opened_at < open_s then return 0 end
  redis.call('HSET', bk, 'state', 'half_open', 'in_flight', 0, 'probe_ok', 0)
  redis.call('HDEL', bk, 'probe_at')
  in_flight, probe_at = 0, nil
end
if in_flight >= probes and (probe_at == nil or now - probe_at >= open_s) then
  in_flight = 0  -- probes that never reported back
end
if in_flight >= probes then
  return 0
end
redis.call('HSET', bk, 'in_flight', in_flight + 1, 'probe_at', ARGV[1])
redis.call('PEXPIRE', bk, ttl)
return 1
"""

# KEYS: breaker. Gives back a probe slot taken by `_ACQUIRE` whose call was never sent.
_RELEASE = """
local bk = KEYS[1]
local h = redis.call('HMGET', bk, 'state', 'in_flight')
if h[1] ~= 'half_open' then return 0 end
local in_flight = tonumber(h[2]) or 0
if in_flight < 1 then return 0 end
redis.call('HSET', bk, 'in_flight', in_flight - 1)
return 1
"""


def _timestamp(now: datetime | float | None) -> float:
    if now is None:
        return time.time()
    if isinstance(now, datetime):
        return now.timestamp()
    return float(now)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _buckets(fields: Mapping[str, str], ok_kind: str) -> tuple[Bucket, ...]:
    counts: dict[int, list[int]] = {}
    for name, value in fields.items():
        kind, _, start = name.partition(":")
        if kind in (ok_kind, "f") and start.isdigit():
            slot = counts.setdefault(int(start), [0, 0])
            slot[0 if kind == ok_kind else 1] += int(value)
    return tuple(sorted((start, ok, fail) for start, (ok, fail) in counts.items()))


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _health(fields: Mapping[str, str]) -> ChannelHealth:
    if not fields:
        return ChannelHealth()
    window_s = fields.get("window_s")
    return ChannelHealth(
        state=BreakerState(fields.get("state", "closed")),
        opened_at=_float(fields.get("opened_at")),
        consecutive_failures=int(fields.get("consecutive", 0)),
        probes_in_flight=int(fields.get("in_flight", 0)),
        probe_successes=int(fields.get("probe_ok", 0)),
        probe_at=_float(fields.get("probe_at")),
        window=_buckets(fields, "c"),
        window_s=int(window_s) if window_s else None,
    )


def _stats(fields: Mapping[str, str], now: float) -> SuccessStats:
    window_s = fields.get("window_s")
    if not window_s:
        return SuccessStats()
    successes, failures = window_totals(_buckets(fields, "s"), now, int(window_s))
    return SuccessStats(successes=successes, failures=failures)


class ChannelHealthStore:
    """Breaker state and success windows of every channel, in Redis under `prefix`."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._record = redis.register_script(_RECORD)
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    def breaker_key(self, channel: str) -> str:
        return f"{self.prefix}ch:{{{channel}}}:breaker"

    def outcomes_key(self, channel: str) -> str:
        return f"{self.prefix}ch:{{{channel}}}:outcomes"

    @staticmethod
    def _ttl_ms(settings: RoutingSettings) -> int:
        longest = max(
            settings.breaker.window_s, settings.breaker.open_s, settings.success_rate.window_s
        )
        return int((2 * longest + 60) * 1000)

    async def snapshot(
        self, channels: Iterable[str], now: datetime | float | None = None
    ) -> tuple[dict[str, ChannelHealth], dict[str, SuccessStats]]:
        """Every channel's breaker and success statistics as of `now` (default: this
        process's clock), in one round trip."""
        names = list(dict.fromkeys(channels))
        if not names:
            return {}, {}
        at = _timestamp(now)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.breaker_key(name))
                pipe.hgetall(self.outcomes_key(name))
            replies = await pipe.execute()
        health: dict[str, ChannelHealth] = {}
        stats: dict[str, SuccessStats] = {}
        for index, name in enumerate(names):
            breaker = {_text(k): _text(v) for k, v in replies[2 * index].items()}
            outcomes = {_text(k): _text(v) for k, v in replies[2 * index + 1].items()}
            health[name] = _health(breaker)
            stats[name] = _stats(outcomes, at)
        return health, stats

    async def record(
        self,
        channel: str,
        success: bool,
        now: datetime | float | None,
        settings: RoutingSettings,
        count: int = 1,
    ) -> BreakerState:
        """Count one call's result for the channel's health (a payer's decline is a success of
        the channel; a refused connection, a 5xx or a timeout is a failure), or `count`
        successes at once. Atomic. Returns the breaker's state afterwards."""
        if count < 1 or (count > 1 and not success):
            raise ValueError("count: one failure, or one or more successes")
        b = settings.breaker
        result = await self._record(
            keys=[self.breaker_key(channel), self.outcomes_key(channel)],
            args=[
                repr(_timestamp(now)),
                "1" if success else "0",
                b.window_s,
                b.min_calls,
                repr(float(b.failure_ratio)),
                b.consecutive_failures,
                repr(float(b.open_s)),
                b.half_open_probes,
                settings.success_rate.window_s,
                self._ttl_ms(settings),
                count,
            ],
        )
        return BreakerState(_text(result))

    async def acquire(
        self, channel: str, now: datetime | float | None, settings: RoutingSettings
    ) -> bool:
        """Ask to send a call to the channel: always yes when its circuit is closed; for a
        half-open (or open and due) circuit, takes one of the `half_open_probes` slots
        atomically, and says no when none is free. Call it before trying a candidate whose
        `probe` is true."""
        b = settings.breaker
        result = await self._acquire(
            keys=[self.breaker_key(channel)],
            args=[
                repr(_timestamp(now)),
                repr(float(b.open_s)),
                b.half_open_probes,
                self._ttl_ms(settings),
            ],
        )
        return int(result) == 1

    async def release(self, channel: str) -> bool:
        """Give back a half-open probe slot taken by `acquire` for a call that was not sent
        (the payment turned out to exist already). True if a slot was given back."""
        return int(await self._release(keys=[self.breaker_key(channel)])) == 1

    async def reset(self, channel: str) -> None:
        """Forget a channel's health (an operator's manual close of its circuit)."""
        await self.redis.delete(self.breaker_key(channel), self.outcomes_key(channel))
