"""Payments, their attempts, the events they cause with the callback outbox rows of those events,
the operators' records of them, the ids of the channel notifications applied and the counts of
those that were not. Statements: `sql/payments.sql`."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.records import (
    Attempt,
    AttemptOutcome,
    DueAttempt,
    Event,
    NewAttempt,
    NewPayment,
    NextAction,
    NotificationCount,
    Payment,
)
from gateway.domain.states import AttemptStatus, PaymentStatus
from gateway.store import rows
from gateway.store.db import Connection, Executor, Pool
from gateway.store.queries import query

CALLBACK_CHANNEL = "gateway_callbacks"
"""LISTEN/NOTIFY channel that wakes the callback dispatchers when deliveries are due."""

_INSERT_PAYMENT_WITH_ATTEMPT = query("insert_payment_with_attempt")
_INSERT_ATTEMPT = query("insert_attempt")
_GET_PAYMENT = query("get_payment")
_GET_PAYMENT_BY_ORDER = query("get_payment_by_order")
_LOCK_PAYMENT = query("lock_payment")
_SWITCH_PAYMENT_CHANNEL = query("switch_payment_channel")
_FINISH_PAYMENT = query("finish_payment")
_SET_PAYMENT_NEXT_ACTION = query("set_payment_next_action")
_GET_ATTEMPT = query("get_attempt")
_CURRENT_ATTEMPT = query("current_attempt")
_ATTEMPT_BY_CHANNEL_ORDER = query("attempt_by_channel_order")
_MARK_ATTEMPT_WAITING = query("mark_attempt_waiting")
_MARK_ATTEMPT_UNKNOWN = query("mark_attempt_unknown")
_MARK_ATTEMPT_FAILED_OVER = query("mark_attempt_failed_over")
_MARK_ATTEMPT_CLOSING = query("mark_attempt_closing")
_CLOSE_GIVEN_UP_ATTEMPT = query("close_given_up_attempt")
_FINISH_ATTEMPT = query("finish_attempt")
_MARK_ATTEMPT_WAITING_AFTER_QUERY = query("mark_attempt_waiting_after_query")
_NOTE_LATE_PAYMENT_ON_ATTEMPT = query("note_late_payment_on_attempt")
_CLAIM_DUE_ATTEMPTS = query("claim_due_attempts")
_RESCHEDULE_ATTEMPT_SYNC = query("reschedule_attempt_sync")
_COUNT_DUE_ATTEMPTS = query("count_due_attempts")
_INSERT_EVENT = query("insert_event")
_INSERT_EVENT_DELIVERIES = query("insert_event_deliveries")
_NOTIFY_DISPATCHERS = query("notify_dispatchers")
_PAYMENT_RECORD_EXISTS = query("payment_record_exists")
_CLAIM_NOTIFICATION_ID = query("claim_notification_id")
_PURGE_NOTIFICATION_IDS = query("purge_notification_ids")
_ADD_NOTIFICATION_COUNTS = query("add_notification_counts")


# ---- payments -------------------------------------------------------------------------------


async def insert_payment_with_attempt(
    db: Executor, payment: NewPayment, attempt: NewAttempt
) -> Payment | None:
    """Insert a payment and its first attempt in one statement (one round trip, one commit).
    None when the merchant_order_id already exists."""
    row = await db.fetchrow(
        _INSERT_PAYMENT_WITH_ATTEMPT,
        payment.id,
        payment.merchant_id,
        payment.merchant_order_id,
        payment.amount,
        payment.currency,
        payment.method,
        payment.description,
        payment.notify_url,
        payment.metadata,
        payment.payer,
        attempt.channel,
        attempt.channel_order_id,
        payment.expires_at,
        attempt.id,
        attempt.adapter,
        attempt.routing_rule,
        attempt.routing_version,
    )
    return None if row is None else rows.payment(row)


async def get_payment(db: Executor, merchant_id: str, payment_id: str) -> Payment | None:
    row = await db.fetchrow(_GET_PAYMENT, payment_id, merchant_id)
    return None if row is None else rows.payment(row)


async def get_payment_by_order(
    db: Executor, merchant_id: str, merchant_order_id: str
) -> Payment | None:
    row = await db.fetchrow(_GET_PAYMENT_BY_ORDER, merchant_id, merchant_order_id)
    return None if row is None else rows.payment(row)


async def lock_payment(conn: Connection, payment_id: str) -> Payment | None:
    """The payment, locked until the caller's transaction ends."""
    row = await conn.fetchrow(_LOCK_PAYMENT, payment_id)
    return None if row is None else rows.payment(row)


async def switch_payment_channel(conn: Connection, attempt: NewAttempt) -> None:
    """The payment's current attempt is now `attempt` (a failover)."""
    await conn.execute(
        _SWITCH_PAYMENT_CHANNEL,
        attempt.payment_id,
        attempt.channel,
        attempt.channel_order_id,
        attempt.seq,
    )


async def finish_payment(
    conn: Connection,
    payment_id: str,
    status: PaymentStatus,
    *,
    paid_at: datetime | None = None,
    channel_trade_no: str | None = None,
    closed_at: datetime | None = None,
    failure: tuple[str, str] | None = None,
) -> Payment:
    """Set a payment's new status (the caller checked the state machine under the row lock);
    what is None stays as it was."""
    row = await conn.fetchrow(
        _FINISH_PAYMENT,
        payment_id,
        status.value,
        paid_at,
        channel_trade_no,
        closed_at,
        failure[0] if failure else None,
        failure[1] if failure else None,
    )
    assert row is not None
    return rows.payment(row)


async def set_next_action(conn: Connection, payment_id: str, action: NextAction) -> Payment:
    row = await conn.fetchrow(_SET_PAYMENT_NEXT_ACTION, payment_id, rows.next_action_json(action))
    assert row is not None
    return rows.payment(row)


# ---- attempts -------------------------------------------------------------------------------


async def insert_attempt(conn: Connection, attempt: NewAttempt) -> None:
    await conn.execute(
        _INSERT_ATTEMPT,
        attempt.id,
        attempt.payment_id,
        attempt.seq,
        attempt.channel,
        attempt.adapter,
        attempt.channel_order_id,
        attempt.routing_rule,
        attempt.routing_version,
    )


async def get_attempt(conn: Connection, attempt_id: str) -> Attempt | None:
    row = await conn.fetchrow(_GET_ATTEMPT, attempt_id)
    return None if row is None else rows.attempt(row)


async def current_attempt(db: Executor, payment_id: str) -> Attempt | None:
    """The payment's latest attempt."""
    row = await db.fetchrow(_CURRENT_ATTEMPT, payment_id)
    return None if row is None else rows.attempt(row)


async def attempt_by_channel_order(
    db: Executor, channel: str, channel_order_id: str
) -> Attempt | None:
    row = await db.fetchrow(_ATTEMPT_BY_CHANNEL_ORDER, channel, channel_order_id)
    return None if row is None else rows.attempt(row)


async def mark_attempt_waiting(
    pool: Pool,
    attempt: NewAttempt,
    next_action: NextAction | None,
    channel_trade_no: str | None,
    channel_code: str | None,
    next_sync_at: datetime,
) -> Payment | None:
    """creating -> waiting for the attempt, and the payer's next action on the payment, in one
    statement. Guarded by both states, so a notification that got there first wins (None)."""
    row = await pool.fetchrow(
        _MARK_ATTEMPT_WAITING,
        attempt.id,
        attempt.payment_id,
        rows.next_action_json(next_action),
        channel_trade_no,
        channel_code,
        next_sync_at,
    )
    return None if row is None else rows.payment(row)


async def mark_attempt_unknown(
    conn: Connection, attempt_id: str, outcome: AttemptOutcome, next_sync_at: datetime
) -> None:
    """creating -> unknown (only from creating: a notification may have settled it)."""
    await conn.execute(
        _MARK_ATTEMPT_UNKNOWN,
        attempt_id,
        outcome.channel_code,
        outcome.channel_message,
        next_sync_at,
    )


async def mark_attempt_failed_over(
    conn: Connection, attempt_id: str, outcome: AttemptOutcome
) -> None:
    await conn.execute(
        _MARK_ATTEMPT_FAILED_OVER,
        attempt_id,
        outcome.channel_code,
        outcome.channel_message,
        outcome.decision,
    )


async def mark_attempt_closing(
    conn: Connection, attempt_id: str, outcome: AttemptOutcome, next_sync_at: datetime
) -> None:
    """creating -> closing: failed over, though the channel may hold the order; the sync closes
    it there from `next_sync_at` on."""
    await conn.execute(
        _MARK_ATTEMPT_CLOSING,
        attempt_id,
        outcome.channel_code,
        outcome.channel_message,
        outcome.decision,
        next_sync_at,
    )


async def close_given_up_attempt(
    conn: Connection,
    attempt_id: str,
    watch_until: datetime | None,
    next_sync_at: datetime | None,
) -> None:
    """closing -> closed (the caller holds the payment's lock); watched until `watch_until`,
    next queried at `next_sync_at`, when its order stays payable at the channel."""
    await conn.execute(_CLOSE_GIVEN_UP_ATTEMPT, attempt_id, watch_until, next_sync_at)


async def finish_attempt(
    conn: Connection,
    attempt_id: str,
    status: AttemptStatus,
    outcome: AttemptOutcome,
    *,
    watch_until: datetime | None = None,
    next_sync_at: datetime | None = None,
) -> None:
    """A final status (the caller checked the state machine under the payment's lock). The sync
    leaves it alone from now on, unless its order stays payable at the channel until
    `watch_until` (queried from `next_sync_at` on)."""
    await conn.execute(
        _FINISH_ATTEMPT,
        attempt_id,
        status.value,
        outcome.channel_code,
        outcome.channel_message,
        outcome.decision,
        outcome.channel_trade_no,
        watch_until,
        next_sync_at,
    )


async def mark_attempt_waiting_after_query(
    conn: Connection, attempt_id: str, channel_code: str | None
) -> None:
    await conn.execute(_MARK_ATTEMPT_WAITING_AFTER_QUERY, attempt_id, channel_code)


async def note_late_payment_on_attempt(
    conn: Connection, attempt_id: str, outcome: AttemptOutcome
) -> None:
    """What the channel says of an attempt paid after its payment was closed or failed."""
    await conn.execute(
        _NOTE_LATE_PAYMENT_ON_ATTEMPT,
        attempt_id,
        outcome.channel_trade_no,
        outcome.channel_code,
        outcome.channel_message,
    )


async def claim_due_attempts(pool: Pool, limit: int, lease_s: float) -> list[DueAttempt]:
    """Lease up to `limit` open attempts whose sync is due (`FOR UPDATE SKIP LOCKED`; the claim
    pushes their next sync `lease_s` away, so a process that dies leaves them to another)."""
    return [rows.due_attempt(r) for r in await pool.fetch(_CLAIM_DUE_ATTEMPTS, limit, lease_s)]


async def reschedule_attempt_sync(pool: Pool, attempt_id: str, at: datetime | None) -> None:
    """The next sync of an attempt the sync still follows (open, closing or watched); None
    ends a watch."""
    await pool.execute(_RESCHEDULE_ATTEMPT_SYNC, attempt_id, at)


async def count_due_attempts(pool: Pool) -> int:
    return int(await pool.fetchval(_COUNT_DUE_ATTEMPTS) or 0)


# ---- events and the outbox ------------------------------------------------------------------


async def insert_event(conn: Connection, event: Event, notify_url: str | None) -> int:
    """Write an event and its deliveries (to `notify_url`, if any, and to every active endpoint
    of the merchant subscribed to the type) in the caller's transaction; wake the dispatchers
    on commit. Returns the number of deliveries."""
    await insert_event_only(conn, event)
    count = int(
        await conn.fetchval(
            _INSERT_EVENT_DELIVERIES, event.id, event.merchant_id, notify_url, event.type
        )
    )
    if count:
        await notify_dispatchers(conn)
    return count


async def insert_event_only(conn: Connection, event: Event) -> None:
    """Write an event without deliveries (an operator's record, never sent to merchants)."""
    await conn.execute(
        _INSERT_EVENT,
        event.id,
        event.merchant_id,
        event.type,
        event.payment_id,
        event.refund_id,
        event.payload,
        event.created_at,
        event.request_id,
    )


async def notify_dispatchers(db: Executor) -> None:
    """Wake the callback dispatchers (when the caller's transaction commits)."""
    await db.execute(_NOTIFY_DISPATCHERS, CALLBACK_CHANNEL)


async def payment_record_exists(
    conn: Connection, payment_id: str, record_type: str, channel_order_id: str
) -> bool:
    """Whether the operators' record `record_type` of one channel order was written already."""
    return bool(
        await conn.fetchval(_PAYMENT_RECORD_EXISTS, payment_id, record_type, channel_order_id)
    )


# ---- channel notifications ------------------------------------------------------------------


async def claim_notification_id(conn: Connection, channel: str, notification_id: str) -> bool:
    """Record, in the caller's transaction, that a channel's notification is applied. False
    when it was applied before: the caller applies nothing then."""
    return bool(await conn.fetchval(_CLAIM_NOTIFICATION_ID, channel, notification_id))


async def purge_notification_ids(pool: Pool, older_than_s: float) -> None:
    await pool.execute(_PURGE_NOTIFICATION_IDS, older_than_s)


async def add_notification_counts(db: Executor, counts: list[NotificationCount]) -> None:
    """Add the counts of notifications not applied, in one statement (one bucket each)."""
    await db.execute(
        _ADD_NOTIFICATION_COUNTS,
        [c.channel for c in counts],
        [c.outcome.value for c in counts],
        [c.minute for c in counts],
        [c.count for c in counts],
        [c.first_seen for c in counts],
        [c.last_seen for c in counts],
        [c.sample_channel_order_id for c in counts],
    )
