"""The state machines of payments, attempts and callback deliveries: the allowed transitions in
one place. Services check every change here, under the payment's row lock, so a duplicate or
late notification can never move a payment backwards or pay it twice."""

from __future__ import annotations

import enum


class PaymentStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CLOSED = "closed"


class AttemptStatus(enum.StrEnum):
    CREATING = "creating"
    """Row written, channel call in flight (or the process died during it)."""
    WAITING = "waiting"
    """The channel holds an order and waits for the payer."""
    UNKNOWN = "unknown"
    """The create call timed out: the channel may or may not hold an order."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Definitive failure at this channel (declined, cancelled)."""
    FAILED_OVER = "failed_over"
    """Nothing was created at this channel; the next candidate was tried."""
    CLOSED = "closed"


class RefundStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.PENDING: frozenset(
        {PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.CLOSED}
    ),
    PaymentStatus.SUCCEEDED: frozenset(),
    PaymentStatus.FAILED: frozenset(),
    PaymentStatus.CLOSED: frozenset(),
}

_OPEN_ATTEMPT = frozenset({AttemptStatus.CREATING, AttemptStatus.WAITING, AttemptStatus.UNKNOWN})

ATTEMPT_TRANSITIONS: dict[AttemptStatus, frozenset[AttemptStatus]] = {
    AttemptStatus.CREATING: frozenset(
        {
            AttemptStatus.WAITING,
            AttemptStatus.UNKNOWN,
            AttemptStatus.SUCCEEDED,
            AttemptStatus.FAILED,
            AttemptStatus.FAILED_OVER,
            AttemptStatus.CLOSED,
        }
    ),
    AttemptStatus.WAITING: frozenset(
        {AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CLOSED}
    ),
    AttemptStatus.UNKNOWN: frozenset(
        {AttemptStatus.WAITING, AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CLOSED}
    ),
    AttemptStatus.SUCCEEDED: frozenset(),
    AttemptStatus.FAILED: frozenset(),
    AttemptStatus.FAILED_OVER: frozenset(),
    AttemptStatus.CLOSED: frozenset(),
}

REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.PENDING: frozenset({RefundStatus.SUCCEEDED, RefundStatus.FAILED}),
    RefundStatus.SUCCEEDED: frozenset(),
    RefundStatus.FAILED: frozenset(),
}


def payment_can(current: PaymentStatus | str, target: PaymentStatus | str) -> bool:
    return PaymentStatus(target) in PAYMENT_TRANSITIONS[PaymentStatus(current)]


def attempt_can(current: AttemptStatus | str, target: AttemptStatus | str) -> bool:
    return AttemptStatus(target) in ATTEMPT_TRANSITIONS[AttemptStatus(current)]


def refund_can(current: RefundStatus | str, target: RefundStatus | str) -> bool:
    return RefundStatus(target) in REFUND_TRANSITIONS[RefundStatus(current)]


def attempt_is_open(status: AttemptStatus | str) -> bool:
    return AttemptStatus(status) in _OPEN_ATTEMPT


EVENT_FOR_PAYMENT_STATUS: dict[PaymentStatus, str] = {
    PaymentStatus.SUCCEEDED: "payment.succeeded",
    PaymentStatus.FAILED: "payment.failed",
    PaymentStatus.CLOSED: "payment.closed",
}

EVENT_TYPES: frozenset[str] = frozenset(
    {"payment.succeeded", "payment.failed", "payment.closed", "refund.succeeded", "refund.failed"}
)
