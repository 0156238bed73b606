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

- ``{prefix}risk:seen:<merchant>:<merchant_order_id>``: set when a payment is added to its
  counters, living as long as the longest of them: a retried create (same
  `merchant_order_id`) passes the counter rules without being counted again.

What is counted is every payment request the risk rules let through: a payment that routing
then refuses (`no_route`, `channel_unavailable`), or that fails or is closed later, still
counts. Velocity rules are about attempts (card testing and enumeration are mostly failed
attempts), and daily caps bound what a merchant may put through in a day, attempted, not
settled. Each `merchant_order_id` counts once (the `seen` key), so retries do not count twice;
the create path needs no database lookup before the rules for that.

The script touches several keys that share no hash tag, so it needs a single Redis (primary),
not a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from gateway.risk.rules import CounterCheck

# KEYS[1]: the payment's `seen` key; then one per check. ARGV[1]: this payment's member in the
# windows, ARGV[2]: the `seen` key's ttl in ms; then five per check: kind ('day' | 'window'),
# hash field, add, limit, ttl in ms (a window's length).
# Returns {passed (1 | 0), value of check 1, value of check 2, ...}; a payment already seen
# passes without being added again.
_CHECK_AND_ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = redis.call('EXISTS', KEYS[1]) == 1
local result = {1}
for i = 2, #KEYS do
  local a = 2 + (i - 2) * 5
  local value
  if ARGV[a + 1] == 'window' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[a + 5]))
    value = redis.call('ZCARD', KEYS[i])
  else
    value = tonumber(redis.call('HGET', KEYS[i], ARGV[a + 2]) or '0')
  end
  result[i] = value
  if value + tonumber(ARGV[a + 3]) > tonumber(ARGV[a + 4]) then result[1] = 0 end
end
if seen then
  result[1] = 1
  return result
end
if result[1] == 1 then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
  for i = 2, #KEYS do
    local a = 2 + (i - 2) * 5
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

    async def check_and_add(
        self, checks: Sequence[CounterCheck], merchant_id: str, merchant_order_id: str
    ) -> tuple[bool, list[int]]:
        """Each check's current value and whether the payment passes: it does, and is added
        to every counter, when no check is exceeded (by `CounterCheck.exceeded_by`'s test);
        it also does, without being added again, when this `merchant_order_id` was added
        before. Raises redis' errors (RedisError, OSError) when Redis cannot answer."""
        if not checks:
            return True, []
        seen_key = f"{self.prefix}risk:seen:{merchant_id}:{merchant_order_id}"
        args: list[str | int] = [
            f"{merchant_id}:{merchant_order_id}",
            max(check.ttl_ms for check in checks),
        ]
        for check in checks:
            args += [check.kind, check.field, check.add, check.limit, check.ttl_ms]
        reply = await self._check_and_add(
            keys=[seen_key, *(self.prefix + check.key for check in checks)], args=args
        )
        return int(reply[0]) == 1, [int(value) for value in reply[1:]]
