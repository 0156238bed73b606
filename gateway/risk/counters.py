"""The risk rules' counters in Redis: one Lua script per check reads every counter a payment
must fit in and, only if it fits in all of them, adds the payment to each — one round trip,
atomic, so concurrent requests (in one process or several) never pass a limit together.

Keys, under the gateway's `redis_prefix` (the rule's name is part of each key: renaming a rule
starts its counts afresh; changing its limits keeps them):

- ``{prefix}risk:day:<rule>:<merchant>:<YYYYMMDD>`` hash, fields ``amount`` and ``count``: a
  daily cap's totals for one merchant and local date; expires an hour after that day ends.
- ``{prefix}risk:vel:<rule>:id:<merchant>:<payer id>`` and ``{prefix}risk:vel:<rule>:ip:<ip>``
  sorted sets, one member per payment scored by its time in milliseconds (Redis's clock, so
  that every process agrees): a velocity rule's sliding window. Members older than the window
  are dropped on each check; the key expires one window after its last payment. The window
  holds at most the rule's `max` members, since a refused payment is not added.

What is counted is every payment request the risk rules let through: a payment that routing
then refuses (`no_route`, `channel_unavailable`), or that fails or is closed later, still
counts. Velocity rules are about attempts (card testing and enumeration are mostly failed
attempts), and daily caps bound what a merchant may put through in a day, attempted, not
settled. A repeat of an existing `merchant_order_id` is answered before the rules run, so
retries do not count twice.

The script touches several keys that share no hash tag, so it needs a single Redis (primary),
not a Redis Cluster.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import redis.asyncio as aioredis

from gateway.risk.rules import CounterCheck

# KEYS: one per check. ARGV[1]: this payment's member in the windows; then five per check:
# kind ('day' | 'window'), hash field, add, limit, ttl in ms (a window's length).
# Returns {added (1 | 0), value of check 1, value of check 2, ...}.
_CHECK_AND_ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local result = {1}
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 5
  local value
  if ARGV[a + 1] == 'window' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[a + 5]))
    value = redis.call('ZCARD', KEYS[i])
  else
    value = tonumber(redis.call('HGET', KEYS[i], ARGV[a + 2]) or '0')
  end
  result[i + 1] = value
  if value + tonumber(ARGV[a + 3]) > tonumber(ARGV[a + 4]) then result[1] = 0 end
end
if result[1] == 1 then
  for i = 1, #KEYS do
    local a = 1 + (i - 1) * 5
    if ARGV[a + 1] == 'window' then
      redis.call('ZADD', KEYS[i], now, ARGV[1])
    else
      redis.call('HINCRBY', KEYS[i], ARGV[a + 2], ARGV[a + 3])
    end
    redis.call('PEXPIRE', KEYS[i], ARGV[a + 5])
  end
end
return result
"""


class RiskCounters:
    """Daily-cap and velocity counters in Redis under `prefix`."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._check_and_add = redis.register_script(_CHECK_AND_ADD)

    async def check_and_add(self, checks: Sequence[CounterCheck]) -> tuple[bool, list[int]]:
        """Each check's current value and whether the payment was added to every counter
        (it is when no check is exceeded, by `CounterCheck.exceeded_by`'s test). Raises
        redis' errors (RedisError, OSError) when Redis cannot answer."""
        if not checks:
            return True, []
        args: list[str | int] = [secrets.token_hex(8)]
        for check in checks:
            args += [check.kind, check.field, check.add, check.limit, check.ttl_ms]
        reply = await self._check_and_add(
            keys=[self.prefix + check.key for check in checks], args=args
        )
        return int(reply[0]) == 1, [int(value) for value in reply[1:]]
