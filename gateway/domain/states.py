"""Every stored status as an enum, and the state machines of payments, attempts, refunds and
callback deliveries: the allowed transitions in one place. Services check payment, attempt and
refund changes here under the payment's row lock, so a duplicate or late notification can never
move a payment backwards or pay it twice; a delivery's moves are made by the dispatcher's
statements (`gateway.store.webhooks`), whose results are checked here. Migration
0006_status_checks.sql (and the later migrations that change one) lets each status column hold
exactly its enum's values (a unit test keeps the two equal)."""

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
    CLOSING = "closing"
    """Given up (failed over) after an answer that may have created an order at the channel:
    the status sync closes that order there, with backoff, until the channel confirms. No
    payment succeeds through it: a success reported for it is a late payment."""
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


class DeliveryStatus(enum.StrEnum):
    """A callback delivery (one event to one destination)."""

    PENDING = "pending"
    """Waiting for its `next_attempt_at`."""
    DELIVERING = "delivering"
    """Claimed by a dispatcher, whose lease (`locked_until`) runs while it makes an attempt."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The schedule is exhausted, the receiver said 410 Gone, the destination is refused or
    its endpoint is disabled: waits for a manual retry."""

    @property
    def public(self) -> DeliveryStatus:
        """What the merchant sees: an attempt under way is still `pending` to them."""
        return DeliveryStatus.PENDING if self is DeliveryStatus.DELIVERING else self


class EndpointStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    """It answered 410 Gone: no more deliveries to it."""
    DELETED = "deleted"


class KeyStatus(enum.StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class MerchantStatus(enum.StrEnum):
    """A merchant's standing (API.md §1.4, §4.1): only an `active` one may change anything; the
    others' GETs keep working."""

    ACTIVE = "active"
    PENDING_REVIEW = "pending_review"
    REJECTED = "rejected"
    SUSPENDED = "suspended"


class IdempotencyState(enum.StrEnum):
    IN_FLIGHT = "in_flight"
    DONE = "done"


class NotificationOutcome(enum.StrEnum):
    """Why a channel's notification was not applied (it is kept for operators)."""

    REJECTED = "rejected"
    """Its signature or format did not verify."""
    UNKNOWN_ORDER = "unknown_order"
    AMOUNT_MISMATCH = "amount_mismatch"
    """A verified success whose amount or currency is missing or differs from ours."""


class ResultVerdict(enum.StrEnum):
    """What became of a channel's result (an answer, a query, a notification) offered to a
    payment or a refund."""

    APPLIED = "applied"
    """Applied under the state machines (which may have found nothing left to change)."""
    REPEATED = "repeated"
    """A notification whose id was applied before: acknowledged, not applied again."""
    REFUSED = "refused"
    """A success whose amount or currency is missing or differs from ours: not applied,
    recorded and alerted."""


class RunStatus(enum.StrEnum):
    """A reconciliation run."""

    COMPLETED = "completed"
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
            AttemptStatus.CLOSING,
            AttemptStatus.CLOSED,
        }
    ),
    AttemptStatus.WAITING: frozenset(
        {AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CLOSED}
    ),
    AttemptStatus.UNKNOWN: frozenset(
        {AttemptStatus.WAITING, AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CLOSED}
    ),
    # the channel confirmed the close, or said it was paid (a late payment, recorded)
    AttemptStatus.CLOSING: frozenset({AttemptStatus.CLOSED}),
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

DELIVERY_TRANSITIONS: dict[DeliveryStatus, frozenset[DeliveryStatus]] = {
    # claimed by a dispatcher; or failed unsent when its endpoint is disabled
    DeliveryStatus.PENDING: frozenset({DeliveryStatus.DELIVERING, DeliveryStatus.FAILED}),
    # the attempt's result; or claimed again when the lease ran out (its dispatcher died)
    DeliveryStatus.DELIVERING: frozenset(
        {
            DeliveryStatus.SUCCEEDED,
            DeliveryStatus.PENDING,
            DeliveryStatus.FAILED,
            DeliveryStatus.DELIVERING,
        }
    ),
    DeliveryStatus.SUCCEEDED: frozenset(),
    # the merchant's manual retry (POST /v1/webhook-deliveries/{id}/retry)
    DeliveryStatus.FAILED: frozenset({DeliveryStatus.PENDING}),
}


def payment_can(current: PaymentStatus | str, target: PaymentStatus | str) -> bool:
    return PaymentStatus(target) in PAYMENT_TRANSITIONS[PaymentStatus(current)]


def attempt_can(current: AttemptStatus | str, target: AttemptStatus | str) -> bool:
    return AttemptStatus(target) in ATTEMPT_TRANSITIONS[AttemptStatus(current)]


def refund_can(current: RefundStatus | str, target: RefundStatus | str) -> bool:
    return RefundStatus(target) in REFUND_TRANSITIONS[RefundStatus(current)]


def delivery_can(current: DeliveryStatus | str, target: DeliveryStatus | str) -> bool:
    return DeliveryStatus(target) in DELIVERY_TRANSITIONS[DeliveryStatus(current)]


def attempt_is_open(status: AttemptStatus | str) -> bool:
    return AttemptStatus(status) in _OPEN_ATTEMPT


EVENT_FOR_PAYMENT_STATUS: dict[PaymentStatus, str] = {
    PaymentStatus.SUCCEEDED: "payment.succeeded",
    PaymentStatus.FAILED: "payment.failed",
    PaymentStatus.CLOSED: "payment.closed",
}

EVENT_FOR_REFUND_STATUS: dict[RefundStatus, str] = {
    RefundStatus.SUCCEEDED: "refund.succeeded",
    RefundStatus.FAILED: "refund.failed",
}

EVENT_TYPES: frozenset[str] = frozenset(
    {*EVENT_FOR_PAYMENT_STATUS.values(), *EVENT_FOR_REFUND_STATUS.values()}
)
