"""Reconciliation runs and lines, our side of a channel's day, and the settlement aggregates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime
from typing import Any

import asyncpg

from gateway.store.db import Connection, Executor

LINE_COLUMNS: tuple[str, ...] = (
    "run_id", "seq", "outcome", "kind", "channel_order_id", "channel_refund_id", "payment_id",
    "refund_id", "merchant_id", "our_amount", "their_amount", "our_status", "their_status",
    "channel_trade_no", "note",
)  # fmt: skip

COUNT_COLUMNS: tuple[str, ...] = (
    "statement_lines", "our_records", "matched", "missing_ours", "missing_channel",
    "amount_mismatch", "status_mismatch", "other_channel",
)  # fmt: skip

_PREFETCH = 5000


# ---- our side -------------------------------------------------------------------------------


async def day_payments(
    conn: Connection, channel: str, start: datetime, end: datetime
) -> AsyncIterator[asyncpg.Record]:
    """The channel's payments that succeeded in [start, end), streamed (call inside a
    transaction)."""
    async for row in conn.cursor(
        "SELECT id, merchant_id, channel_order_id, amount FROM payments"
        " WHERE status = 'succeeded' AND paid_at >= $2 AND paid_at < $3 AND channel = $1",
        channel,
        start,
        end,
        prefetch=_PREFETCH,
    ):
        yield row


async def day_refunds(
    conn: Connection, channel: str, start: datetime, end: datetime
) -> AsyncIterator[asyncpg.Record]:
    """The channel's refunds that succeeded in [start, end), streamed (inside a transaction)."""
    async for row in conn.cursor(
        "SELECT id, payment_id, merchant_id, channel_order_id, channel_refund_id, amount"
        " FROM refunds WHERE status = 'succeeded' AND completed_at >= $2 AND completed_at < $3"
        " AND channel = $1",
        channel,
        start,
        end,
        prefetch=_PREFETCH,
    ):
        yield row


async def find_attempts(
    db: Executor, channels: Sequence[str], channel_order_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Attempts by the channel's order id, of any status and day, with their payment."""
    return list(
        await db.fetch(
            """
            SELECT a.channel, a.channel_order_id, a.status AS attempt_status,
                   p.id AS payment_id, p.merchant_id, p.amount, p.status AS payment_status,
                   p.channel_order_id AS payment_channel_order_id, p.paid_at
              FROM payment_attempts a JOIN payments p ON p.id = a.payment_id
             WHERE a.channel = ANY($1::text[]) AND a.channel_order_id = ANY($2::text[])
            """,
            list(channels),
            list(channel_order_ids),
        )
    )


async def find_refunds(
    db: Executor, channels: Sequence[str], channel_refund_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Refunds by the channel's refund id, of any status and day."""
    return list(
        await db.fetch(
            "SELECT id, payment_id, merchant_id, channel, channel_order_id, channel_refund_id,"
            " amount, status, completed_at FROM refunds"
            " WHERE channel = ANY($1::text[]) AND channel_refund_id = ANY($2::text[])",
            list(channels),
            list(channel_refund_ids),
        )
    )


# ---- runs -----------------------------------------------------------------------------------


async def lock_channel_day(conn: Connection, channel: str, day: date) -> None:
    """Serialise runs of one channel and day (until the caller's transaction ends)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"reconcile:{channel}:{day.isoformat()}",
    )


async def delete_runs(conn: Connection, channel: str, day: date) -> int:
    """Every earlier run of a channel and day, with its lines (ON DELETE CASCADE)."""
    deleted = await conn.fetchval(
        "WITH d AS (DELETE FROM reconciliation_runs WHERE channel = $1 AND day = $2"
        " RETURNING 1) SELECT count(*) FROM d",
        channel,
        day,
    )
    return int(deleted)


async def insert_run(
    db: Executor,
    run_id: str,
    channel: str,
    day: date,
    started_at: datetime,
    *,
    status: str = "completed",
    error: str | None = None,
    finished_at: datetime | None = None,
) -> None:
    await db.execute(
        "INSERT INTO reconciliation_runs (id, channel, day, status, error, started_at,"
        " finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        run_id,
        channel,
        day,
        status,
        error,
        started_at,
        finished_at,
    )


async def copy_lines(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Lines as tuples in LINE_COLUMNS order, by COPY (one round trip per batch)."""
    await conn.copy_records_to_table("reconciliation_lines", records=rows, columns=LINE_COLUMNS)


async def finish_run(
    conn: Connection,
    run_id: str,
    counts: dict[str, int],
    summary: dict[str, Any],
    finished_at: datetime,
) -> None:
    sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(COUNT_COLUMNS, start=2))
    await conn.execute(
        f"UPDATE reconciliation_runs SET {sets}, summary = ${len(COUNT_COLUMNS) + 2},"  # noqa: S608
        f" finished_at = ${len(COUNT_COLUMNS) + 3} WHERE id = $1",
        run_id,
        *(counts[col] for col in COUNT_COLUMNS),
        summary,
        finished_at,
    )


async def get_run(db: Executor, run_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM reconciliation_runs WHERE id = $1", run_id)


async def current_run(db: Executor, channel: str, day: date) -> asyncpg.Record | None:
    """The completed run of a channel and day, if any."""
    return await db.fetchrow(
        "SELECT * FROM reconciliation_runs WHERE channel = $1 AND day = $2"
        " AND status = 'completed'",
        channel,
        day,
    )


async def run_lines(conn: Connection, run_id: str) -> AsyncIterator[asyncpg.Record]:
    """A run's lines in order, streamed (call inside a transaction)."""
    columns = ", ".join(LINE_COLUMNS[1:])
    async for row in conn.cursor(
        f"SELECT {columns} FROM reconciliation_lines WHERE run_id = $1 ORDER BY seq",  # noqa: S608
        run_id,
        prefetch=_PREFETCH,
    ):
        yield row


# ---- settlement -----------------------------------------------------------------------------


async def settled_payment_groups(
    db: Executor, start: datetime, end: datetime
) -> list[asyncpg.Record]:
    """Succeeded payments paid in [start, end), counted per merchant, channel, currency and
    amount (fees are per payment, so equal amounts share one fee)."""
    return list(
        await db.fetch(
            "SELECT merchant_id, channel, currency, amount, count(*) AS count FROM payments"
            " WHERE status = 'succeeded' AND paid_at >= $1 AND paid_at < $2"
            " GROUP BY merchant_id, channel, currency, amount",
            start,
            end,
        )
    )


async def settled_refund_groups(
    db: Executor, start: datetime, end: datetime
) -> list[asyncpg.Record]:
    """Succeeded refunds completed in [start, end), per merchant, channel and currency."""
    return list(
        await db.fetch(
            "SELECT merchant_id, channel, currency, count(*) AS count,"
            " sum(amount)::bigint AS amount FROM refunds"
            " WHERE status = 'succeeded' AND completed_at >= $1 AND completed_at < $2"
            " GROUP BY merchant_id, channel, currency",
            start,
            end,
        )
    )
