"""Channel health, as pure functions of the state and the time: a circuit breaker per channel
and the sliding success window that the `success_rate` strategy reads.

The breaker (after resilience4j):

- **closed**: calls flow. Each result lands in a sliding window of about `window_s` seconds
  (kept as buckets of `bucket_width(window_s)` seconds). A failure opens the circuit when it is
  the `consecutive_failures`-th in a row, or when the window holds at least `min_calls` calls of
  which a share of `failure_ratio` or more failed.
- **open**: calls are refused until `open_s` seconds have passed since it opened.
- **half_open**: up to `half_open_probes` calls are let through as probes (`acquire`). That many
  successes close the circuit (with a fresh window); one failure opens it again. Probes that
  never report back free their slot after `open_s`.

`gateway.channel_health` keeps the same state in Redis and applies the same transitions in a Lua
script, so that every gateway process agrees; this module is the reference the script follows.
Times are unix seconds (floats).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from routing.schema import BreakerSettings

Bucket = tuple[int, int, int]
"""(bucket start in unix seconds, calls or successes, failures)."""


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def bucket_width(window_s: int) -> int:
    """Seconds per bucket: about twenty buckets per window, at least one second."""
    return max(1, -(-window_s // 20))


def bucket_start(now: float, width: int) -> int:
    return math.floor(now / width) * width  # as the Lua script computes it


def live_buckets(buckets: tuple[Bucket, ...], now: float, window_s: int) -> tuple[Bucket, ...]:
    """The buckets that overlap the last `window_s` seconds."""
    width = bucket_width(window_s)
    return tuple(b for b in buckets if b[0] + width > now - window_s)


def window_add(
    buckets: tuple[Bucket, ...], now: float, window_s: int, *, success: bool
) -> tuple[Bucket, ...]:
    """Count one call at `now` in (start, calls, failures) buckets; drop buckets that left
    the window."""
    return _add(buckets, now, window_s, first=1, failures=0 if success else 1)


def window_add_outcome(
    buckets: tuple[Bucket, ...], now: float, window_s: int, *, success: bool
) -> tuple[Bucket, ...]:
    """Count one result at `now` in (start, successes, failures) buckets (the success
    window); drop buckets that left the window."""
    return _add(buckets, now, window_s, first=1 if success else 0, failures=0 if success else 1)


def _add(
    buckets: tuple[Bucket, ...], now: float, window_s: int, *, first: int, failures: int
) -> tuple[Bucket, ...]:
    start = bucket_start(now, bucket_width(window_s))
    kept = [b for b in live_buckets(buckets, now, window_s) if b[0] != start]
    current = next((b for b in buckets if b[0] == start), (start, 0, 0))
    kept.append((start, current[1] + first, current[2] + failures))
    return tuple(sorted(kept))


def window_totals(buckets: tuple[Bucket, ...], now: float, window_s: int) -> tuple[int, int]:
    live = live_buckets(buckets, now, window_s)
    return sum(b[1] for b in live), sum(b[2] for b in live)


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    """One channel's breaker. The default value is a healthy, closed channel."""

    state: BreakerState = BreakerState.CLOSED
    opened_at: float | None = None
    consecutive_failures: int = 0
    probes_in_flight: int = 0
    probe_successes: int = 0
    probe_at: float | None = None
    """When the last probe was let through (half-open)."""
    window: tuple[Bucket, ...] = ()
    """(start, calls, failures) buckets of the closed state's sliding window."""
    window_s: int | None = None
    """The window length these buckets were recorded with (None: nothing recorded yet)."""

    def totals(self, now: float) -> tuple[int, int]:
        """(calls, failures) in the window as of `now`."""
        if self.window_s is None:
            return 0, 0
        return window_totals(self.window, now, self.window_s)


HEALTHY = ChannelHealth()


@dataclass(frozen=True, slots=True)
class SuccessStats:
    """Results at a channel over the success-rate window."""

    successes: int = 0
    failures: int = 0

    @property
    def total(self) -> int:
        return self.successes + self.failures

    @property
    def ratio(self) -> float | None:
        return self.successes / self.total if self.total else None


def _open_elapsed(h: ChannelHealth, now: float, s: BreakerSettings) -> bool:
    return h.opened_at is None or now - h.opened_at >= s.open_s


def _probe_stale(h: ChannelHealth, now: float, s: BreakerSettings) -> bool:
    return h.probe_at is None or now - h.probe_at >= s.open_s


def effective_state(h: ChannelHealth, now: float, s: BreakerSettings) -> BreakerState:
    """The state as of `now`: an open circuit whose `open_s` has passed is half-open."""
    if h.state is BreakerState.OPEN and _open_elapsed(h, now, s):
        return BreakerState.HALF_OPEN
    return h.state


def call_allowed(h: ChannelHealth, now: float, s: BreakerSettings) -> bool:
    """Whether a call may go to the channel at `now` (for a half-open channel: whether a probe
    slot is free). Does not take the slot: see `acquire`."""
    return acquire(h, now, s)[0]


def is_probe(h: ChannelHealth, now: float, s: BreakerSettings) -> bool:
    """Whether a call now would be a half-open probe (the gateway should `acquire` it)."""
    return effective_state(h, now, s) is not BreakerState.CLOSED


def acquire(h: ChannelHealth, now: float, s: BreakerSettings) -> tuple[bool, ChannelHealth]:
    """Ask to send a call at `now`: (allowed, new state). Takes a probe slot when half-open."""
    if h.state is BreakerState.CLOSED:
        return True, h
    if h.state is BreakerState.OPEN:
        if not _open_elapsed(h, now, s):
            return False, h
        h = replace(
            h,
            state=BreakerState.HALF_OPEN,
            probes_in_flight=0,
            probe_successes=0,
            probe_at=None,
        )
    if h.probes_in_flight >= s.half_open_probes and _probe_stale(h, now, s):
        h = replace(h, probes_in_flight=0)
    if h.probes_in_flight >= s.half_open_probes:
        return False, h
    return True, replace(h, probes_in_flight=h.probes_in_flight + 1, probe_at=now)


def retry_after(h: ChannelHealth, now: float, s: BreakerSettings) -> float | None:
    """Seconds until the channel lets a call through again (None: it does now)."""
    if call_allowed(h, now, s):
        return None
    if h.state is BreakerState.OPEN and h.opened_at is not None:
        return max(0.0, h.opened_at + s.open_s - now)
    if h.probe_at is not None:
        return max(0.0, h.probe_at + s.open_s - now)
    return s.open_s  # pragma: no cover - every refusal has one of the two times


def _opened(now: float, s: BreakerSettings) -> ChannelHealth:
    """A freshly opened circuit: counters and window start over."""
    return ChannelHealth(state=BreakerState.OPEN, opened_at=now, window_s=s.window_s)


def record(h: ChannelHealth, success: bool, now: float, s: BreakerSettings) -> ChannelHealth:
    """The breaker after a call at `now` succeeded or failed (as far as the channel's health
    goes: a payer's decline is a success of the channel)."""
    if h.state is BreakerState.OPEN:
        if not _open_elapsed(h, now, s):
            return h  # a late result of a call sent before the circuit opened
        h = replace(
            h,
            state=BreakerState.HALF_OPEN,
            probes_in_flight=0,
            probe_successes=0,
            probe_at=None,
        )
    if h.state is BreakerState.HALF_OPEN:
        if not success:
            return _opened(now, s)
        successes = h.probe_successes + 1
        if successes >= s.half_open_probes:
            return ChannelHealth(window_s=s.window_s)
        return replace(
            h,
            probe_successes=successes,
            probes_in_flight=max(0, h.probes_in_flight - 1),
        )
    window = h.window if h.window_s == s.window_s else ()
    window = window_add(window, now, s.window_s, success=success)
    consecutive = 0 if success else h.consecutive_failures + 1
    if not success:
        calls, failures = window_totals(window, now, s.window_s)
        if consecutive >= s.consecutive_failures or (
            calls >= s.min_calls and failures >= s.failure_ratio * calls
        ):
            return _opened(now, s)
    return replace(h, window=window, window_s=s.window_s, consecutive_failures=consecutive)
