"""The pure circuit breaker and success windows."""

from __future__ import annotations

from routing.health import (
    HEALTHY,
    BreakerState,
    ChannelHealth,
    SuccessStats,
    acquire,
    bucket_width,
    call_allowed,
    effective_state,
    is_probe,
    record,
    retry_after,
    window_add_outcome,
    window_totals,
)
from routing.schema import BreakerSettings

T0 = 1_700_000_000.0
S = BreakerSettings(
    window_s=60,
    min_calls=10,
    failure_ratio=0.5,
    consecutive_failures=5,
    open_s=30,
    half_open_probes=2,
)


def run(h: ChannelHealth, results: str, t: float, step: float = 0.1) -> tuple[ChannelHealth, float]:
    """Apply results ('s' success, 'f' failure) from time t on."""
    for r in results:
        h = record(h, r == "s", t, S)
        t += step
    return h, t


def test_closed_stays_closed_on_successes() -> None:
    h, _ = run(HEALTHY, "s" * 100, T0)
    assert h.state is BreakerState.CLOSED
    assert h.totals(T0 + 10) == (100, 0)
    assert call_allowed(h, T0 + 10, S)


def test_opens_after_consecutive_failures() -> None:
    h, t = run(HEALTHY, "ffff", T0)
    assert h.state is BreakerState.CLOSED and h.consecutive_failures == 4
    h, t = run(h, "s", t)
    assert h.consecutive_failures == 0
    h, t = run(h, "ffff", t)
    assert h.state is BreakerState.CLOSED
    h, t = run(h, "f", t)
    assert h.state is BreakerState.OPEN
    assert h.opened_at == t - 0.1
    assert not call_allowed(h, t, S)


def test_opens_on_the_failure_ratio_once_there_are_enough_calls() -> None:
    # f s f s ... never 5 in a row; the ratio reaches 50 % at the 10th call
    h, t = run(HEALTHY, "fsfsfsfsf", T0)
    assert h.state is BreakerState.CLOSED  # 9 calls < min_calls
    h, t = run(h, "s", t)
    assert h.state is BreakerState.CLOSED  # a success never trips
    h, t = run(h, "f", t)
    assert h.state is BreakerState.OPEN  # 6 of 11 failed


def test_old_failures_leave_the_window() -> None:
    h, t = run(HEALTHY, "fsfsfsfs", T0)
    # a minute later those calls are gone: 2 more failures out of 2 calls < min_calls
    h, t = run(h, "sff", T0 + 120)
    assert h.state is BreakerState.CLOSED
    assert h.totals(t) == (3, 2)


def test_changing_the_window_length_starts_a_new_window() -> None:
    h, t = run(HEALTHY, "ffsff", T0)
    assert h.totals(t) == (5, 4)
    h = record(h, True, t, BreakerSettings(window_s=120))
    assert h.window_s == 120 and h.totals(t) == (1, 0)


def test_open_refuses_until_open_s_then_lets_probes_through() -> None:
    h, _ = run(HEALTHY, "fffff", T0)
    opened = h.opened_at
    assert opened is not None
    assert effective_state(h, opened + 29.9, S) is BreakerState.OPEN
    assert not call_allowed(h, opened + 29.9, S)
    assert retry_after(h, opened + 20, S) == 10
    assert effective_state(h, opened + 30, S) is BreakerState.HALF_OPEN
    assert call_allowed(h, opened + 30, S) and is_probe(h, opened + 30, S)
    assert retry_after(h, opened + 30, S) is None

    ok, h = acquire(h, opened + 30, S)
    assert ok and h.state is BreakerState.HALF_OPEN and h.probes_in_flight == 1
    ok, h = acquire(h, opened + 31, S)
    assert ok and h.probes_in_flight == 2
    ok, h2 = acquire(h, opened + 32, S)
    assert not ok and h2 == h  # half_open_probes = 2: no third probe
    assert retry_after(h, opened + 32, S) == 29  # until the last probe goes stale


def test_probes_that_never_report_free_their_slot_after_open_s() -> None:
    h, _ = run(HEALTHY, "fffff", T0)
    assert h.opened_at is not None
    t = h.opened_at + 30
    _, h = acquire(h, t, S)
    _, h = acquire(h, t, S)
    assert not call_allowed(h, t + 29, S)
    ok, h = acquire(h, t + 30, S)
    assert ok and h.probes_in_flight == 1


def test_half_open_successes_close_the_circuit() -> None:
    h, _ = run(HEALTHY, "fffff", T0)
    assert h.opened_at is not None
    t = h.opened_at + 30
    _, h = acquire(h, t, S)
    _, h = acquire(h, t, S)
    h = record(h, True, t + 1, S)
    assert h.state is BreakerState.HALF_OPEN and h.probe_successes == 1
    assert h.probes_in_flight == 1
    h = record(h, True, t + 2, S)
    assert h.state is BreakerState.CLOSED
    assert h == ChannelHealth(window_s=60)  # a fresh window: the old failures are forgotten


def test_a_half_open_failure_opens_again() -> None:
    h, _ = run(HEALTHY, "fffff", T0)
    assert h.opened_at is not None
    t = h.opened_at + 30
    _, h = acquire(h, t, S)
    h = record(h, True, t + 1, S)
    h = record(h, False, t + 2, S)
    assert h.state is BreakerState.OPEN and h.opened_at == t + 2
    assert not call_allowed(h, t + 3, S)


def test_results_recorded_without_acquire_still_move_the_breaker() -> None:
    h, _ = run(HEALTHY, "fffff", T0)
    assert h.opened_at is not None
    late = record(h, True, h.opened_at + 1, S)  # a call sent before it opened
    assert late == h
    h = record(h, True, h.opened_at + 30, S)  # due: counts as a probe
    assert h.state is BreakerState.HALF_OPEN and h.probe_successes == 1
    h = record(h, True, h.opened_at or 0, S)
    assert h.state is BreakerState.CLOSED


def test_closed_acquire_is_free() -> None:
    ok, h = acquire(HEALTHY, T0, S)
    assert ok and h is HEALTHY
    assert not is_probe(HEALTHY, T0, S)


def test_buckets() -> None:
    assert bucket_width(60) == 3
    assert bucket_width(5) == 1
    assert bucket_width(300) == 15
    buckets: tuple[tuple[int, int, int], ...] = ()
    for i in range(10):
        buckets = window_add_outcome(buckets, T0 + i, 300, success=i % 3 != 0)
    assert window_totals(buckets, T0 + 10, 300) == (6, 4)
    assert window_totals(buckets, T0 + 400, 300) == (0, 0)
    later = window_add_outcome(buckets, T0 + 1000, 300, success=True)
    assert later == ((int(T0 + 1000) // 15 * 15, 1, 0),)


def test_success_stats() -> None:
    assert SuccessStats().ratio is None
    assert SuccessStats(3, 1).ratio == 0.75
    assert SuccessStats(3, 1).total == 4
