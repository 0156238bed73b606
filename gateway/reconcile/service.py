"""Reconciling one channel's day, storing the run, exporting it; the settlement summary.

A run happens in one transaction: take the channel-and-day lock, delete the earlier run of that
channel and day (its lines go with it), load our side of the day, stream the statement from the
adapter through the `Matcher`, COPY the lines in batches, write the counts, commit. Readers see
the old run until the new one commits; a run that fails rolls back whole (the old run stays)
and is recorded as a `failed` run with its error.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TextIO

import structlog

from adapters.base import ChannelAdapter, StatementKind
from gateway.domain.ids import new_id
from gateway.domain.records import ReconciliationLine, ReconciliationRun
from gateway.domain.states import RunStatus
from gateway.reconcile.matching import (
    Matcher,
    MatchResult,
    OurRecord,
    OurSide,
    Summary,
    china_day_bounds,
    normalize_status,
)
from gateway.reconcile.settlement import settle
from gateway.store import reconcile as store
from gateway.store.db import Connection, Pool
from routing.loader import LoadedRouting
from routing.schema import RoutingConfig

log = structlog.get_logger("reconcile")

LOOKUP_BATCH = 1000
"""Statement lines outside our day are looked up this many at a time."""
COPY_BATCH = 5000
"""Result lines are written this many at a time (one COPY each)."""
PROGRESS_EVERY = 1000

CSV_COLUMNS: tuple[str, ...] = store.LINE_COLUMNS[1:]


@dataclass(frozen=True, slots=True)
class Progress:
    lines: int
    """Statement lines read so far."""
    expected: int
    """Our records for the day: what the statement should roughly hold."""
    done: bool = False


@dataclass(frozen=True, slots=True)
class RunReport:
    run_id: str
    channel: str
    day: date
    summary: Summary
    started_at: datetime
    finished_at: datetime
    replaced: int
    """Earlier runs of this channel and day that this one replaced."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "channel": self.channel,
            "date": self.day.isoformat(),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "replaced": self.replaced,
            **self.summary.as_dict(),
        }


class ReconcileError(Exception):
    """The statement could not be had or read; the run is recorded as failed."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


async def reconcile(
    pool: Pool,
    adapter: ChannelAdapter,
    day: date,
    *,
    lookup_channels: Sequence[str] = (),
    progress: Callable[[Progress], None] | None = None,
) -> RunReport:
    """Reconcile `adapter`'s channel (`adapter.name`) for one China day and store the run.

    `lookup_channels` are our other channels that may share this statement (the same merchant
    account under two names): statement lines of theirs are skipped, not `missing_ours`."""
    channel = adapter.name
    run_id = new_id("rcn")
    started = datetime.now(UTC)
    channels = list(dict.fromkeys([channel, *lookup_channels]))
    try:
        async with pool.acquire() as conn, conn.transaction():
            await store.lock_channel_day(conn, channel, day)
            replaced = await store.delete_runs(conn, channel, day)
            await store.insert_run(conn, run_id, channel, day, started)
            ours = await _our_day(conn, channel, day)
            matcher = Matcher(channel, day, ours)
            writer = _LineWriter(conn, run_id)
            async for line in adapter.download_statement(day):
                result = matcher.feed(line)
                if result is not None:
                    await writer.add((result,))
                if len(matcher.deferred) >= LOOKUP_BATCH:
                    await writer.add(await _resolve(conn, matcher, channels))
                lines = matcher.summary.statement_lines
                if progress is not None and lines % PROGRESS_EVERY == 0:
                    progress(Progress(lines, len(ours)))
            await writer.add(await _resolve(conn, matcher, channels))
            await writer.add(matcher.finish())
            await writer.flush()
            summary = matcher.summary
            finished = datetime.now(UTC)
            await store.finish_run(conn, run_id, _counts(summary), summary.as_dict(), finished)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:1000]
        log.error("reconcile_failed", channel=channel, day=day.isoformat(), error=message)
        await store.insert_run(
            pool,
            run_id,
            channel,
            day,
            started,
            status=RunStatus.FAILED,
            error=message,
            finished_at=datetime.now(UTC),
        )
        raise ReconcileError(message, run_id) from exc
    if progress is not None:
        progress(Progress(summary.statement_lines, len(ours), done=True))
    log.info(
        "reconcile_completed",
        channel=channel,
        day=day.isoformat(),
        run_id=run_id,
        replaced=replaced,
        **_counts(summary),
    )
    return RunReport(run_id, channel, day, summary, started, finished, replaced)


async def _our_day(conn: Connection, channel: str, day: date) -> OurSide:
    start, end = china_day_bounds(day)
    ours = OurSide()
    async for payment in store.day_payments(conn, channel, start, end):
        ours.add(
            OurRecord(
                kind=StatementKind.PAYMENT,
                channel=channel,
                channel_order_id=payment.channel_order_id,
                amount=payment.amount,
                status="succeeded",
                merchant_id=payment.merchant_id,
                payment_id=payment.id,
            )
        )
    async for refund in store.day_refunds(conn, channel, start, end):
        ours.add(
            OurRecord(
                kind=StatementKind.REFUND,
                channel=channel,
                channel_order_id=refund.channel_order_id,
                amount=refund.amount,
                status="succeeded",
                merchant_id=refund.merchant_id,
                payment_id=refund.payment_id,
                refund_id=refund.id,
                channel_refund_id=refund.channel_refund_id,
            )
        )
    return ours


async def _resolve(conn: Connection, matcher: Matcher, channels: list[str]) -> list[MatchResult]:
    """Look the deferred lines' keys up among all our records, and classify them."""
    if not matcher.deferred:
        return []
    order_ids, refund_ids = matcher.deferred_keys()
    found: list[OurRecord] = []
    if order_ids:
        for attempt in await store.find_attempts(conn, channels, order_ids):
            # the payment's status speaks for its current attempt; an earlier attempt (failed
            # over, failed) speaks for itself
            current = attempt.payment_channel_order_id == attempt.channel_order_id
            status = normalize_status(attempt.payment_status if current else attempt.attempt_status)
            found.append(
                OurRecord(
                    kind=StatementKind.PAYMENT,
                    channel=attempt.channel,
                    channel_order_id=attempt.channel_order_id,
                    amount=attempt.amount,
                    status=status,
                    merchant_id=attempt.merchant_id,
                    payment_id=attempt.payment_id,
                    booked_at=attempt.paid_at if status == "succeeded" else None,
                )
            )
    if refund_ids:
        for refund in await store.find_refunds(conn, channels, refund_ids):
            found.append(
                OurRecord(
                    kind=StatementKind.REFUND,
                    channel=refund.channel,
                    channel_order_id=refund.channel_order_id,
                    amount=refund.amount,
                    status=normalize_status(refund.status),
                    merchant_id=refund.merchant_id,
                    payment_id=refund.payment_id,
                    refund_id=refund.id,
                    channel_refund_id=refund.channel_refund_id,
                    booked_at=refund.completed_at,
                )
            )
    return matcher.resolve(found)


def _counts(summary: Summary) -> dict[str, int]:
    counts = {o.value: t.count for o, t in summary.outcomes.items()}
    counts.update(
        statement_lines=summary.statement_lines,
        our_records=summary.our_records,
        other_channel=summary.other_channel,
    )
    return counts


class _LineWriter:
    """Buffers result lines and COPYs them in batches."""

    def __init__(self, conn: Connection, run_id: str) -> None:
        self._conn = conn
        self._run_id = run_id
        self._lines: list[ReconciliationLine] = []
        self._seq = 0

    async def add(self, results: Iterable[MatchResult]) -> None:
        for r in results:
            self._seq += 1
            self._lines.append(
                ReconciliationLine(
                    seq=self._seq,
                    outcome=r.outcome.value,
                    kind=r.kind.value,
                    channel_order_id=r.channel_order_id,
                    channel_refund_id=r.channel_refund_id,
                    payment_id=r.payment_id,
                    refund_id=r.refund_id,
                    merchant_id=r.merchant_id,
                    our_amount=r.our_amount,
                    their_amount=r.their_amount,
                    our_status=r.our_status,
                    their_status=r.their_status,
                    channel_trade_no=r.channel_trade_no,
                    note=r.note,
                )
            )
            if len(self._lines) >= COPY_BATCH:
                await self.flush()

    async def flush(self) -> None:
        if self._lines:
            await store.copy_lines(self._conn, self._run_id, self._lines)
            self._lines = []


# ---- reading runs back ----------------------------------------------------------------------


async def export_csv(pool: Pool, run_id: str, out: TextIO) -> int:
    """Write a run's lines as CSV (amounts in minor units), streamed; returns the line count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for line in store.run_lines(conn, run_id):
            writer.writerow(["" if v is None else v for v in _csv_row(line)])
            count += 1
    return count


def _csv_row(line: ReconciliationLine) -> tuple[object, ...]:
    """A line's values in CSV_COLUMNS order."""
    return (
        line.seq, line.outcome, line.kind, line.channel_order_id, line.channel_refund_id,
        line.payment_id, line.refund_id, line.merchant_id, line.our_amount, line.their_amount,
        line.our_status, line.their_status, line.channel_trade_no, line.note,
    )  # fmt: skip


async def current_run(pool: Pool, channel: str, day: date) -> ReconciliationRun | None:
    """The completed run of a channel and day, as stored (counts and per-outcome amounts)."""
    return await store.current_run(pool, channel, day)


# ---- settlement -----------------------------------------------------------------------------


async def settlement_summary(
    pool: Pool, day: date, routing: LoadedRouting | RoutingConfig
) -> dict[str, Any]:
    """The day's settlement per merchant, channel and currency (see `settlement.settle`),
    JSON-ready: `{"date", "timezone", "data": [rows], "totals": {currency: totals}}`."""
    config = routing.config if isinstance(routing, LoadedRouting) else routing
    start, end = china_day_bounds(day)
    settlement = settle(
        day,
        await store.settled_payment_groups(pool, start, end),
        await store.settled_refund_groups(pool, start, end),
        {name: channel.fee for name, channel in config.channels.items()},
    )
    return settlement.as_dict()
