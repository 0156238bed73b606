"""What the store holds, as typed records: frozen dataclasses with the status enums of
`gateway.domain.states`. `gateway.store` builds them from its rows (rows become records at the
store's boundary) and takes the `New…` ones to insert; services and the API read attributes,
never rows. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from gateway.domain.permissions import Role
from gateway.domain.states import (
    AttemptStatus,
    DeliveryStatus,
    EndpointStatus,
    IdempotencyState,
    KeyStatus,
    MerchantStatus,
    NotificationOutcome,
    PaymentStatus,
    RefundStatus,
    RunStatus,
)

JsonObject = dict[str, Any]
"""A JSON object as stored in a jsonb column (event payloads, run summaries)."""


class KeyType(enum.StrEnum):
    """How a merchant signs its requests (API.md §1.1)."""

    HMAC_SHA256 = "hmac-sha256"
    ED25519 = "ed25519"
    RSA_SHA256 = "rsa-sha256"

    @property
    def header_alg(self) -> str:
        return self.value.upper()


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class NextAction:
    """What the payer does next: scan a QR code or follow a redirect."""

    type: str
    url: str


# ---- payments and attempts ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewPayment:
    id: str
    merchant_id: str
    merchant_order_id: str
    amount: int
    currency: str
    method: str
    description: str
    notify_url: str | None
    metadata: dict[str, str]
    payer: dict[str, str] | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    merchant_id: str
    merchant_order_id: str
    status: PaymentStatus
    amount: int
    currency: str
    method: str
    description: str
    notify_url: str | None
    metadata: dict[str, str]
    payer: dict[str, str] | None
    channel: str | None
    """The channel of the current attempt."""
    channel_order_id: str | None
    channel_trade_no: str | None
    next_action: NextAction | None
    refunded_amount: int
    """The sum of succeeded refunds."""
    refund_reserved: int
    """The sum of refunds neither succeeded nor failed yet."""
    failure: Failure | None
    attempt_count: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    closed_at: datetime | None

    @property
    def refundable(self) -> int:
        """What refunds may still take."""
        return self.amount - self.refunded_amount - self.refund_reserved


@dataclass(frozen=True, slots=True)
class NewAttempt:
    """One try of a payment at one channel, as first written (status `creating`)."""

    id: str
    payment_id: str
    seq: int
    channel: str
    adapter: str
    channel_order_id: str
    routing_rule: str
    routing_version: str


@dataclass(frozen=True, slots=True)
class Attempt:
    id: str
    payment_id: str
    seq: int
    channel: str
    adapter: str
    channel_order_id: str
    status: AttemptStatus
    channel_code: str | None
    channel_message: str | None
    decision: str | None
    """The adapter's verdict on a failed call (`adapters.base.Decision`)."""
    channel_trade_no: str | None
    routing_rule: str | None
    routing_version: str | None
    created_at: datetime
    updated_at: datetime
    next_sync_at: datetime | None
    sync_count: int
    watch_until: datetime | None = None
    """A closed order the channel could not close stays payable until then: it is watched."""


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What a channel said that an attempt records when it moves to a final state."""

    channel_code: str | None = None
    channel_message: str | None = None
    decision: str | None = None
    channel_trade_no: str | None = None


@dataclass(frozen=True, slots=True)
class DueAttempt:
    """An open attempt claimed by the status sync, with what it needs of its payment."""

    id: str
    payment_id: str
    channel: str
    channel_order_id: str
    status: AttemptStatus
    sync_count: int
    merchant_id: str
    payment_status: PaymentStatus
    expires_at: datetime
    watch_until: datetime | None
    """Set on a closed (or failed) attempt whose order stays payable at the channel."""


# ---- refunds --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRefund:
    id: str
    payment_id: str
    merchant_id: str
    merchant_refund_id: str
    amount: int
    currency: str
    reason: str | None
    channel: str
    channel_order_id: str
    channel_refund_id: str
    next_sync_at: datetime
    counts_on_payment: bool = True
    """False for the refund of a late payment that is none of the merchant's refunds
    (`gateway.domain.verdicts.late_refund_counts_on_payment`)."""


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    payment_id: str
    merchant_id: str
    merchant_refund_id: str
    amount: int
    currency: str
    reason: str | None
    status: RefundStatus
    channel: str
    channel_order_id: str
    channel_refund_id: str
    """The refund's id at the channel (channels keep one refund per id)."""
    channel_refund_no: str | None
    channel_code: str | None
    failure: Failure | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    next_sync_at: datetime | None
    sync_count: int
    counts_on_payment: bool = True
    """Reserved on and refunded from its payment, with refund.* callbacks (every merchant
    refund); false for the refund of a late payment that is none of the merchant's."""


@dataclass(frozen=True, slots=True)
class DueRefund:
    """A pending refund claimed by the status sync, with its payment's amount."""

    refund: Refund
    payment_amount: int


# ---- channel notifications ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotificationCount:
    """The notifications of one channel that were not applied for one reason in one minute."""

    channel: str
    outcome: NotificationOutcome
    minute: datetime
    count: int
    first_seen: datetime
    last_seen: datetime
    sample_channel_order_id: str | None
    """One order id they named (none for those that did not verify)."""


# ---- events and callbacks -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a payment or refund; its deliveries carry `payload`."""

    id: str
    merchant_id: str
    type: str
    payment_id: str | None
    refund_id: str | None
    payload: JsonObject
    created_at: datetime
    request_id: str | None
    """That of the request or job that caused it; its callbacks carry it."""


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    id: str
    merchant_id: str
    url: str
    events: tuple[str, ...]
    status: EndpointStatus
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CallbackAttempt:
    """One request of a delivery, as its log keeps it."""

    attempted_at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response_body: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to one destination (a payment's notify_url or a subscribed endpoint)."""

    id: str
    event_id: str
    event_type: str
    merchant_id: str
    endpoint_id: str | None
    url: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: tuple[CallbackAttempt, ...]


@dataclass(frozen=True, slots=True)
class QueuedDelivery:
    """A failed delivery put back for one more attempt."""

    id: str
    event_id: str


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery a dispatcher holds the lease of, with what its attempt needs."""

    id: str
    event_id: str
    merchant_id: str
    endpoint_id: str | None
    url: str
    host: str
    """The URL's host as written, lower case: the key of the per-host capacity."""
    attempts: int
    """Counting the attempt about to be made: the lease's fence."""
    body: str
    request_id: str | None
    endpoint_status: EndpointStatus | None
    secret_enc: bytes
    previous_secret_enc: bytes | None
    """The merchant's previous webhook secret, while its rotation grace lasts."""


@dataclass(frozen=True, slots=True)
class PutBack:
    """A claimed delivery that found no free slot: not attempted, due again after `delay_s`."""

    delivery_id: str
    attempt_no: int
    """The delivery's `attempts` when it was claimed: the lease's fence."""
    delay_s: float


@dataclass(frozen=True, slots=True)
class CallbackAttemptResult:
    """One attempt's result, and what it makes of its delivery."""

    delivery_id: str
    attempt_no: int
    """The delivery's `attempts` when it was claimed: the lease's fence."""
    status: DeliveryStatus
    """The delivery's new status: succeeded, pending (retry at `next_attempt_at`), failed."""
    next_attempt_at: datetime | None
    status_code: int | None
    error: str | None
    attempted_at: datetime
    latency_ms: int | None
    response_body: str | None


# ---- merchants and idempotency --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MerchantKey:
    """An active signing key; `secret_enc` (HMAC) or `public_key_pem` (Ed25519, RSA)."""

    id: str
    merchant_id: str
    key_type: KeyType
    secret_enc: bytes | None
    public_key_pem: str | None


@dataclass(frozen=True, slots=True)
class RateLimitOverrides:
    """A merchant's own request budgets (API.md §1.7), in requests per second; None: the
    gateway's default for that class."""

    payments_per_s: float | None = None
    refunds_per_s: float | None = None
    other_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class MerchantAccess:
    """What a merchant's requests are admitted with: its status and its budgets."""

    merchant_id: str
    status: MerchantStatus
    rate_limits: RateLimitOverrides


@dataclass(frozen=True, slots=True)
class NonceCacheGeneration:
    """One life of the nonce cache (a Redis server's run and replication history): requests
    signed before `refuse_before` (unix seconds) cannot be checked in it, because an earlier
    generation that held nonces was lost (`gateway.auth.admission`)."""

    id: str
    redis_run_id: str
    redis_replid: str
    opened_at: datetime
    refuse_before: int | None
    nonces_recorded: bool


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    method: str
    path: str
    request_hash: bytes
    state: IdempotencyState
    response_status: int | None
    response_body: bytes | None


# ---- reconciliation and settlement ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayPayment:
    """A payment of the channel that succeeded on the day reconciled."""

    id: str
    merchant_id: str
    channel_order_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class DayRefund:
    """A refund of the channel that succeeded on the day reconciled."""

    id: str
    payment_id: str
    merchant_id: str
    channel_order_id: str
    channel_refund_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class FoundAttempt:
    """An attempt found by its channel order id (any day, any status), with its payment."""

    channel: str
    channel_order_id: str
    attempt_status: AttemptStatus
    payment_id: str
    merchant_id: str
    amount: int
    payment_status: PaymentStatus
    payment_channel_order_id: str | None
    """The order id of the payment's current attempt."""
    paid_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReconciliationRun:
    id: str
    channel: str
    day: date
    status: RunStatus
    statement_lines: int
    our_records: int
    matched: int
    missing_ours: int
    missing_channel: int
    amount_mismatch: int
    status_mismatch: int
    other_channel: int
    summary: JsonObject
    error: str | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReconciliationLine:
    """One line of a run: a statement line, or a record of ours the statement lacked."""

    seq: int
    outcome: str
    """`gateway.reconcile.matching.Outcome`."""
    kind: str
    """`payment` or `refund`."""
    channel_order_id: str
    channel_refund_id: str | None
    payment_id: str | None
    refund_id: str | None
    merchant_id: str | None
    our_amount: int | None
    their_amount: int | None
    our_status: str | None
    their_status: str | None
    channel_trade_no: str | None
    note: str | None


@dataclass(frozen=True, slots=True)
class PaymentGroup:
    """`count` succeeded payments of one `amount` (one merchant, channel and currency)."""

    merchant_id: str
    channel: str
    currency: str
    amount: int
    count: int


@dataclass(frozen=True, slots=True)
class RefundGroup:
    """`count` succeeded refunds summing to `amount` (one merchant, channel and currency)."""

    merchant_id: str
    channel: str
    currency: str
    count: int
    amount: int


# ---- operators, their sessions and the sign-in throttle -------------------------------------


@dataclass(frozen=True, slots=True)
class Operator:
    """A person's account (API.md §4.1)."""

    id: str
    email: str
    role: Role
    password_hash: str
    """argon2id, as a PHC string."""
    created_at: datetime
    disabled_at: datetime | None
    last_sign_in_at: datetime | None


@dataclass(frozen=True, slots=True)
class OperatorToken:
    """A service's token: only the SHA-256 of the token itself is kept."""

    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class OperatorSession:
    """A live console session and its operator."""

    id: str
    operator: Operator
    csrf_token: str
    created_at: datetime
    expires_at: datetime
    """Its absolute end; it also ends after an idle time and when the operator signs out."""
    last_seen_at: datetime


@dataclass(frozen=True, slots=True)
class SignInCounter:
    """Failed sign-ins of one key (an account or a source address) in the current window."""

    key: str
    failures: int
    first_at: datetime
    last_at: datetime
    locked_until: datetime | None
    now: datetime
    """The database's clock when it was read."""


# ---- what operators see of merchants -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MerchantSummary:
    id: str
    name: str
    created_at: datetime
    active_keys: int
    previous_webhook_secret_expires_at: datetime | None
    """While a rotated webhook secret still signs beside the new one."""


@dataclass(frozen=True, slots=True)
class MerchantKeyInfo:
    """A merchant's key without its secret or public key."""

    id: str
    merchant_id: str
    key_type: KeyType
    status: KeyStatus
    created_at: datetime
    revoked_at: datetime | None
