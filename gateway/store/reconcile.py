"""Reconciliation runs and lines, our side of a channel's day, and the settlement aggregates.
Statements: `sql/reconcile.sql`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime

from gateway.domain.records import (
    DayPayment,
    DayRefund,
    FoundAttempt,
    JsonObject,
    PaymentGroup,
    ReconciliationLine,
    ReconciliationRun,
    Refund,
    RefundGroup,
)
from gateway.domain.states import RunStatus
from gateway.store import rows
from gateway.store.db import Connection, Executor
from gateway.store.queries import query

LINE_COLUMNS: tuple[str, ...] = (
    "run_id", "seq", "outcome", "kind", "channel_order_id", "channel_refund_id", "payment_id",
    "refund_id", "merchant_id", "our_amount", "their_amount", "our_status", "their_status",
    "channel_trade_no", "note",
)  # fmt: skip
"""The columns of `reconciliation_lines`, in the order lines are copied."""

COUNT_COLUMNS: tuple[str, ...] = (
    "statement_lines", "our_records", "matched", "missing_ours", "missing_channel",
    "amount_mismatch", "status_mismatch", "other_channel",
)  # fmt: skip
"""A run's counts, in the order `finish_run` takes them."""

_PREFETCH = 5000

_DAY_PAYMENTS = query("day_payments")
_DAY_REFUNDS = query("day_refunds")
_FIND_ATTEMPTS = query("find_attempts")
_FIND_REFUNDS = query("find_refunds")
_LOCK_CHANNEL_DAY = query("lock_channel_day")
_DELETE_RUNS = query("delete_runs")
_INSERT_RUN = query("insert_run")
_FINISH_RUN = query("finish_run")
_CURRENT_RUN = query("current_run")
_RUN_LINES = query("run_lines")
_SETTLED_PAYMENT_GROUPS = query("settled_payment_groups")
_SETTLED_REFUND_GROUPS = query("settled_refund_groups")


# ---- our side -------------------------------------------------------------------------------


async def day_payments(
    conn: Connection, channel: str, start: datetime, end: datetime
) -> AsyncIterator[DayPayment]:
    """The channel's payments that succeeded in [start, end), streamed (call inside a
    transaction)."""
    async for row in conn.cursor(_DAY_PAYMENTS, channel, start, end, prefetch=_PREFETCH):
        yield rows.day_payment(row)


async def day_refunds(
    conn: Connection, channel: str, start: datetime, end: datetime
) -> AsyncIterator[DayRefund]:
    """The channel's refunds that succeeded in [start, end), streamed (inside a transaction)."""
    async for row in conn.cursor(_DAY_REFUNDS, channel, start, end, prefetch=_PREFETCH):
        yield rows.day_refund(row)


async def find_attempts(
    db: Executor, channels: Sequence[str], channel_order_ids: Sequence[str]
) -> list[FoundAttempt]:
    """Attempts by the channel's order id, of any status and day, with their payment."""
    found = await db.fetch(_FIND_ATTEMPTS, list(channels), list(channel_order_ids))
    return [rows.found_attempt(r) for r in found]


async def find_refunds(
    db: Executor, channels: Sequence[str], channel_refund_ids: Sequence[str]
) -> list[Refund]:
    """Refunds by the channel's refund id, of any status and day."""
    found = await db.fetch(_FIND_REFUNDS, list(channels), list(channel_refund_ids))
    return [rows.refund(r) for r in found]


# ---- runs -----------------------------------------------------------------------------------


async def lock_channel_day(conn: Connection, channel: str, day: date) -> None:
    """Serialise runs of one channel and day (until the caller's transaction ends)."""
    await conn.execute(_LOCK_CHANNEL_DAY, f"reconcile:{channel}:{day.isoformat()}")


async def delete_runs(conn: Connection, channel: str, day: date) -> int:
    """Every earlier run of a channel and day, with its lines (ON DELETE CASCADE)."""
    return int(await conn.fetchval(_DELETE_RUNS, channel, day))


async def insert_run(
    db: Executor,
    run_id: str,
    channel: str,
    day: date,
    started_at: datetime,
    *,
    status: RunStatus = RunStatus.COMPLETED,
    error: str | None = None,
    finished_at: datetime | None = None,
) -> None:
    await db.execute(
        _INSERT_RUN, run_id, channel, day, status.value, error, started_at, finished_at
    )


async def copy_lines(conn: Connection, run_id: str, lines: Sequence[ReconciliationLine]) -> None:
    """A batch of a run's lines, by COPY (one round trip)."""
    records = [
        (
            run_id, line.seq, line.outcome, line.kind, line.channel_order_id,
            line.channel_refund_id, line.payment_id, line.refund_id, line.merchant_id,
            line.our_amount, line.their_amount, line.our_status, line.their_status,
            line.channel_trade_no, line.note,
        )
        for line in lines
    ]  # fmt: skip
    await conn.copy_records_to_table("reconciliation_lines", records=records, columns=LINE_COLUMNS)


async def finish_run(
    conn: Connection,
    run_id: str,
    counts: dict[str, int],
    summary: JsonObject,
    finished_at: datetime,
) -> None:
    """A run's counts (every one of COUNT_COLUMNS), summary and end."""
    await conn.execute(
        _FINISH_RUN, run_id, *(counts[col] for col in COUNT_COLUMNS), summary, finished_at
    )


async def current_run(db: Executor, channel: str, day: date) -> ReconciliationRun | None:
    """The completed run of a channel and day, if any."""
    row = await db.fetchrow(_CURRENT_RUN, channel, day)
    return None if row is None else rows.reconciliation_run(row)


async def run_lines(conn: Connection, run_id: str) -> AsyncIterator[ReconciliationLine]:
    """A run's lines in order, streamed (call inside a transaction)."""
    async for row in conn.cursor(_RUN_LINES, run_id, prefetch=_PREFETCH):
        yield rows.reconciliation_line(row)


# ---- settlement -----------------------------------------------------------------------------


async def settled_payment_groups(
    db: Executor, start: datetime, end: datetime
) -> list[PaymentGroup]:
    """Succeeded payments paid in [start, end), counted per merchant, channel, currency and
    amount (fees are per payment, so equal amounts share one fee)."""
    return [rows.payment_group(r) for r in await db.fetch(_SETTLED_PAYMENT_GROUPS, start, end)]


async def settled_refund_groups(db: Executor, start: datetime, end: datetime) -> list[RefundGroup]:
    """Succeeded refunds completed in [start, end), per merchant, channel and currency."""
    return [rows.refund_group(r) for r in await db.fetch(_SETTLED_REFUND_GROUPS, start, end)]
