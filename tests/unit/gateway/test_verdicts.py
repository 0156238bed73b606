"""The pure decisions on what channels report (`gateway.domain.verdicts`, and the close verdict
of `gateway.services.payments`): the money a success must carry (and when a success without it
is still taken as the repeat it is), what a success means for a payment and an attempt, whose money a late payment's refund is, how long a watch lasts, and
when a close at the channel is confirmed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapters.base import ChannelResult, Outcome
from gateway.domain.states import AttemptStatus, PaymentStatus, attempt_can, attempt_is_open
from gateway.domain.verdicts import (
    MoneyMismatch,
    SuccessMeaning,
    late_refund_counts_on_payment,
    money_mismatch,
    refuses,
    success_meaning,
    watch_next_sync,
)
from gateway.services.payments import CloseVerdict, close_verdict


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (1999, "CNY", None),
        (1999, "cny", None),
        (None, "CNY", MoneyMismatch.MISSING),
        (1999, None, MoneyMismatch.MISSING),
        (1999, "", MoneyMismatch.MISSING),
        (None, None, MoneyMismatch.MISSING),
        (1998, "CNY", MoneyMismatch.AMOUNT),
        (0, "CNY", MoneyMismatch.AMOUNT),
        (1998, "USD", MoneyMismatch.AMOUNT),
        (1999, "USD", MoneyMismatch.CURRENCY),
    ],
)
def test_a_success_must_carry_our_amount_and_currency(
    amount: int | None, currency: str | None, expected: MoneyMismatch | None
) -> None:
    assert money_mismatch(amount, currency, 1999, "CNY") is expected


def test_a_success_takes_a_pending_payment_only_through_an_open_attempt() -> None:
    for attempt in AttemptStatus:
        meaning = success_meaning(PaymentStatus.PENDING, attempt)
        if attempt_is_open(attempt):
            assert meaning is SuccessMeaning.TAKES_PAYMENT, attempt
        else:  # failed over, closing, closed, failed: given up
            assert meaning is SuccessMeaning.LATE, attempt


def test_a_success_after_the_payment_ended_is_late_unless_it_is_the_same_one() -> None:
    assert success_meaning(PaymentStatus.SUCCEEDED, AttemptStatus.SUCCEEDED) is (
        SuccessMeaning.REPEAT
    )
    for payment in (PaymentStatus.SUCCEEDED, PaymentStatus.CLOSED, PaymentStatus.FAILED):
        for attempt in AttemptStatus:
            if (payment, attempt) == (PaymentStatus.SUCCEEDED, AttemptStatus.SUCCEEDED):
                continue
            assert success_meaning(payment, attempt) is SuccessMeaning.LATE, (payment, attempt)


def test_a_late_refund_counts_on_its_payment_only_when_the_payment_took_no_money() -> None:
    assert late_refund_counts_on_payment(PaymentStatus.CLOSED)
    assert late_refund_counts_on_payment(PaymentStatus.FAILED)
    assert not late_refund_counts_on_payment(PaymentStatus.SUCCEEDED)
    assert not late_refund_counts_on_payment(PaymentStatus.PENDING)


def test_a_watch_follows_the_schedule_until_watch_until_and_its_grace() -> None:
    now = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    until = now + timedelta(minutes=10)
    grace = timedelta(minutes=2)
    soon = now + timedelta(seconds=30)
    assert watch_next_sync(now, soon, until, grace) == soon
    late = now + timedelta(hours=1)
    assert watch_next_sync(now, late, until, grace) == until + grace  # not past the end
    assert watch_next_sync(until + timedelta(minutes=1), late, until, grace) == until + grace
    assert watch_next_sync(until + grace, late, until, grace) is None
    assert watch_next_sync(until + grace + timedelta(seconds=1), soon, until, grace) is None


def result(outcome: Outcome) -> ChannelResult:
    return ChannelResult(outcome)


def test_only_the_channels_word_confirms_a_close() -> None:
    ok, failed, unknown = (
        result(Outcome.SUCCEEDED),
        result(Outcome.FAILED),
        result(Outcome.UNKNOWN),
    )
    assert close_verdict(ok, None) is CloseVerdict.CLOSED
    # refused: paid, or not payable there (closed, failed, no such order)
    assert close_verdict(failed, ok) is CloseVerdict.PAID
    assert close_verdict(failed, failed) is CloseVerdict.CLOSED
    assert close_verdict(failed, result(Outcome.WAITING)) is CloseVerdict.UNCONFIRMED
    assert close_verdict(failed, unknown) is CloseVerdict.UNCONFIRMED
    # the close's answer was lost: a query that finds it paid says so; one that finds no order
    # proves nothing (a create in flight could still open it)
    assert close_verdict(unknown, ok) is CloseVerdict.PAID
    assert close_verdict(unknown, failed) is CloseVerdict.UNCONFIRMED
    assert close_verdict(result(Outcome.SYSTEM_ERROR), failed) is CloseVerdict.UNCONFIRMED
    assert close_verdict(unknown, None) is CloseVerdict.UNCONFIRMED


def test_a_closing_attempt_only_closes() -> None:
    assert attempt_can(AttemptStatus.CREATING, AttemptStatus.CLOSING)
    assert not attempt_is_open(AttemptStatus.CLOSING)
    assert [t for t in AttemptStatus if attempt_can(AttemptStatus.CLOSING, t)] == [
        AttemptStatus.CLOSED
    ]
    for other in (AttemptStatus.WAITING, AttemptStatus.UNKNOWN, AttemptStatus.FAILED_OVER):
        assert not attempt_can(other, AttemptStatus.CLOSING)


def test_a_repeat_of_an_applied_success_is_refused_only_for_wrong_money() -> None:
    for repeat in (False, True):
        assert not refuses(None, repeats_applied_success=repeat)
        assert refuses(MoneyMismatch.AMOUNT, repeats_applied_success=repeat)
        assert refuses(MoneyMismatch.CURRENCY, repeats_applied_success=repeat)
    assert refuses(MoneyMismatch.MISSING, repeats_applied_success=False)
    assert not refuses(MoneyMismatch.MISSING, repeats_applied_success=True)
