"""The sign-in throttle (pure): repeated failures are slowed, then locked; a window that has
passed counts from scratch; passwords and tokens are hashed as the module says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.domain.records import SignInCounter
from gateway.services.operators import (
    ThrottlePolicy,
    after_failure,
    hash_password,
    new_token,
    password_matches,
    token_digest,
    wait_before_attempt,
)

NOW = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
POLICY = ThrottlePolicy(account_max_failures=5, address_max_failures=20, lockout_s=900)


def counter(
    failures: int, last_ago_s: float = 0, first_ago_s: float = 60, locked: datetime | None = None
) -> SignInCounter:
    return SignInCounter(
        key="account:a@example.com",
        failures=failures,
        first_at=NOW - timedelta(seconds=first_ago_s),
        last_at=NOW - timedelta(seconds=last_ago_s),
        locked_until=locked,
        now=NOW,
    )


def test_the_first_failures_are_not_slowed() -> None:
    assert wait_before_attempt(counter(0), POLICY) is None
    assert wait_before_attempt(counter(1), POLICY) is None


def test_later_failures_wait_twice_as_long_each_up_to_30_s() -> None:
    assert [wait_before_attempt(counter(n), POLICY) for n in (2, 3, 4, 5, 6, 9)] == [
        1,
        2,
        4,
        8,
        16,
        30,
    ]
    assert wait_before_attempt(counter(4, last_ago_s=3), POLICY) == 1
    assert wait_before_attempt(counter(4, last_ago_s=4), POLICY) is None


def test_a_lock_out_waits_its_whole_time_and_a_passed_window_counts_afresh() -> None:
    locked = counter(5, locked=NOW + timedelta(seconds=899.2))
    assert wait_before_attempt(locked, POLICY) == 900
    stale = counter(4, last_ago_s=1000, first_ago_s=1000)
    assert wait_before_attempt(stale, POLICY) is None
    assert after_failure(stale, 5, POLICY) == (1, NOW, None)


def test_the_failure_that_reaches_the_limit_locks() -> None:
    assert after_failure(counter(3), 5, POLICY) == (4, NOW - timedelta(seconds=60), None)
    failures, _, locked = after_failure(counter(4), 5, POLICY)
    assert (failures, locked) == (5, NOW + timedelta(seconds=900))


def test_passwords_are_argon2id_and_tokens_are_random_and_stored_hashed() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert password_matches(stored, "correct horse battery")
    assert not password_matches(stored, "correct horse battery!")
    assert not password_matches("not a hash", "x")
    first, second = new_token(), new_token()
    assert first != second and first.startswith("gwop_") and len(first) >= 48
    assert len(token_digest(first)) == 32 and token_digest(first) != token_digest(second)
