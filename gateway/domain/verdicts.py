"""Pure decisions on what a channel reports, taken by the payment and refund services under the
payment's row lock and by the status sync: whether a success carries the money it should, what
a success means for a payment and one of its attempts, whose money a late payment's refund is,
and how long a closed order that stays payable is watched. The operator records these lead to
are internal events (never delivered to merchants), named here."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from gateway.domain.states import AttemptStatus, PaymentStatus, attempt_is_open


class MoneyMismatch(enum.StrEnum):
    """Why a success was refused (the `reason` of `gateway_channel_amount_mismatches_total`)."""

    MISSING = "missing"
    """The channel reported no amount, or no currency."""
    AMOUNT = "amount"
    CURRENCY = "currency"


def money_mismatch(
    reported_amount: int | None,
    reported_currency: str | None,
    amount: int,
    currency: str,
) -> MoneyMismatch | None:
    """None when a success carries exactly our amount and currency (a payment's, or a
    refund's); else what is wrong with it. A success is never taken on trust: one without its
    amount or currency is refused like one with the wrong ones."""
    if reported_amount is None or not reported_currency:
        return MoneyMismatch.MISSING
    if reported_amount != amount:
        return MoneyMismatch.AMOUNT
    if reported_currency.upper() != currency.upper():
        return MoneyMismatch.CURRENCY
    return None


def refuses(mismatch: MoneyMismatch | None, *, repeats_applied_success: bool) -> bool:
    """Whether a success with this `money_mismatch` is refused. A wrong amount or currency
    always is (alerted, and the channel asked to send it again). A missing one is, unless the
    success only repeats one already applied (the payment succeeded through this attempt, the
    refund succeeded): nothing is taken from it then, and refusing it would only have the
    channel repeat it for a day (Alipay's refund notifications carry no refund amount)."""
    if mismatch is None:
        return False
    return not (mismatch is MoneyMismatch.MISSING and repeats_applied_success)


class SuccessMeaning(enum.StrEnum):
    """What a channel's (verified, matching) success for one attempt means."""

    TAKES_PAYMENT = "takes_payment"
    """The payment succeeds through this attempt."""
    REPEAT = "repeat"
    """This attempt already took the payment: nothing to do."""
    LATE = "late"
    """Paid after the gateway gave the attempt or its payment up (closed, failed, failed over,
    or paid through another attempt): a payer charged for nothing, recorded and alerted (and
    refunded when the operator says so)."""


def success_meaning(payment: PaymentStatus, attempt: AttemptStatus) -> SuccessMeaning:
    if payment is PaymentStatus.PENDING and attempt_is_open(attempt):
        return SuccessMeaning.TAKES_PAYMENT
    if payment is PaymentStatus.SUCCEEDED and attempt is AttemptStatus.SUCCEEDED:
        return SuccessMeaning.REPEAT
    return SuccessMeaning.LATE


def late_refund_counts_on_payment(payment: PaymentStatus) -> bool:
    """Whether the refund of a late payment is reserved on (and refunded from) its payment, with
    refund.* callbacks to the merchant: when the payment was closed or failed, it took no money
    of its own, so the refund shows there. When it is pending or succeeded through another
    attempt, the merchant's money is the other attempt's: the refund gives back the payer's
    second charge and is none of the merchant's refunds."""
    return payment in (PaymentStatus.CLOSED, PaymentStatus.FAILED)


WATCH_GRACE = timedelta(minutes=2)
"""How long past `watch_until` a closed order that stayed payable is still queried: the channel's
clock and its last notifications may run a little behind ours."""


def watch_next_sync(
    now: datetime, scheduled: datetime, watch_until: datetime, grace: timedelta
) -> datetime | None:
    """When to query a watched order next (the schedule's moment, at the latest when the watch
    ends), or None once the watch is over."""
    end = watch_until + grace
    if now >= end:
        return None
    return min(scheduled, end)


class OperatorRecord(enum.StrEnum):
    """Internal events an operator acts on, each written once per channel order (payments) or
    per refund, in the transaction that finds it; never delivered to merchants."""

    LATE_PAYMENT = "payment.paid_after_close"
    """The channel reports an attempt paid after the gateway gave it or its payment up."""
    PAYMENT_AMOUNT_MISMATCH = "payment.amount_mismatch"
    REFUND_AMOUNT_MISMATCH = "refund.amount_mismatch"
    PAYMENT_NEEDS_OPERATOR = "payment.needs_operator"
    """The channel says money may have moved but reports neither success nor failure."""
    REFUND_NEEDS_OPERATOR = "refund.needs_operator"
