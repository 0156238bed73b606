"""Status sync and expiry: re-query attempts whose outcome is open (no notification yet, a
timeout, a process that died mid-create) on a backoff, close pending payments at their expiry
(unless the channel says they were paid), and re-query pending refunds.

Work is claimed in PostgreSQL with `FOR UPDATE SKIP LOCKED` plus a lease (the claim pushes
`next_sync_at` forward), so any number of gateway processes can run it. Each attempt or refund
synced is a job of its own: a `job_…` request id, carried by its logs, its channel calls and
the events it causes (and so their callbacks)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from adapters.base import ChannelAdapter, ChannelResult, Outcome
from gateway import logs, metrics
from gateway.domain.states import AttemptStatus, PaymentStatus, RefundStatus
from gateway.services.channels import ChannelRegistry
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.store.db import Pool

log = structlog.get_logger("sync")

LEASE_S = 60

_CLAIM_ATTEMPTS = f"""
WITH due AS (
    SELECT id FROM payment_attempts
     WHERE status IN ('creating', 'waiting', 'unknown') AND next_sync_at <= now()
     ORDER BY next_sync_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
)
UPDATE payment_attempts a
   SET next_sync_at = now() + interval '{LEASE_S} seconds', sync_count = a.sync_count + 1
  FROM due, payments p
 WHERE a.id = due.id AND p.id = a.payment_id
RETURNING a.id, a.payment_id, a.channel, a.channel_order_id, a.status, a.sync_count,
          p.merchant_id, p.status AS payment_status, p.expires_at
"""  # noqa: S608 - constants only

_CLAIM_REFUNDS = f"""
WITH due AS (
    SELECT id FROM refunds
     WHERE status = 'pending' AND next_sync_at <= now()
     ORDER BY next_sync_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
)
UPDATE refunds r
   SET next_sync_at = now() + interval '{LEASE_S} seconds', sync_count = r.sync_count + 1
  FROM due, payments p
 WHERE r.id = due.id AND p.id = r.payment_id
RETURNING r.*, p.amount AS total_amount
"""  # noqa: S608 - constants only


class StatusSync:
    def __init__(
        self,
        pool: Pool,
        channels: ChannelRegistry,
        payments: PaymentService,
        refunds: RefundService,
        schedule: tuple[float, ...],
        *,
        poll_s: float = 1.0,
        batch: int = 50,
    ) -> None:
        self.pool = pool
        self.channels = channels
        self.payments = payments
        self.refunds = refunds
        self.schedule = schedule
        self.poll_s = poll_s
        self.batch = batch

    def next_at(self, sync_count: int, expires_at: datetime | None = None) -> datetime:
        delay = self.schedule[min(sync_count, len(self.schedule) - 1)]
        when = datetime.now(UTC) + timedelta(seconds=delay)
        if expires_at is not None and expires_at > datetime.now(UTC):
            when = min(when, expires_at)
        return when

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.run_once()
            except Exception as exc:  # also asyncpg's InterfaceError: the loop must not die
                log.warning("sync_db_error", error=repr(exc))
                busy = 0
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_s)

    async def run_once(self) -> int:
        attempts = await self.pool.fetch(_CLAIM_ATTEMPTS, self.batch)
        refunds = await self.pool.fetch(_CLAIM_REFUNDS, self.batch)
        await asyncio.gather(
            *(self._sync_attempt(dict(a)) for a in attempts),
            *(self._sync_refund(dict(r)) for r in refunds),
        )
        depth = await self.pool.fetchval(
            "SELECT count(*) FROM payment_attempts"
            " WHERE status IN ('creating', 'waiting', 'unknown') AND next_sync_at <= now()"
        )
        metrics.SYNC_BACKLOG.set(depth or 0)
        return len(attempts) + len(refunds)

    async def _sync_attempt(self, row: dict[str, Any]) -> None:
        logs.bind_job()  # each item is a task of its own (run_once's gather)
        bound = log.bind(payment_id=row["payment_id"], channel=row["channel"])
        adapter = self.channels.adapter(row["channel"])
        if adapter is None:
            bound.warning("sync_channel_missing")
            return
        try:
            result = await self._query(adapter, row["channel"], row["channel_order_id"])
            if result.outcome is Outcome.FAILED and row["status"] != AttemptStatus.WAITING:
                # the create's answer never came: the order may still reach the channel (a
                # request in flight, a channel that acts after timing out), so close it there
                # first, that a late create cannot open it for payment
                closed = await self._close(adapter, row["channel"], row["channel_order_id"])
                if closed.outcome is not Outcome.SUCCEEDED:
                    result = await self._query(adapter, row["channel"], row["channel_order_id"])
            if result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.WAITING):
                await self.payments.apply_channel_result(
                    row["channel"], row["channel_order_id"], result
                )
            if result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED):
                return
            expired = row["expires_at"] <= datetime.now(UTC)
            if expired and row["payment_status"] == PaymentStatus.PENDING:
                await self._expire(row, adapter)
                return
            await self._reschedule_attempt(row)
        except Exception:
            bound.exception("sync_attempt_failed")
            await self._reschedule_attempt(row)

    async def _query(self, adapter: ChannelAdapter, channel: str, order_id: str) -> ChannelResult:
        result = await adapter.query_payment(order_id)
        metrics.CHANNEL_CALLS.labels(
            channel=channel, operation="query", outcome=result.outcome.value
        ).inc()
        return result

    async def _close(self, adapter: ChannelAdapter, channel: str, order_id: str) -> ChannelResult:
        result = await adapter.close_payment(order_id)
        metrics.CHANNEL_CALLS.labels(
            channel=channel, operation="close", outcome=result.outcome.value
        ).inc()
        return result

    async def _expire(self, row: dict[str, Any], adapter: ChannelAdapter) -> None:
        close = await self._close(adapter, row["channel"], row["channel_order_id"])
        if close.outcome is not Outcome.SUCCEEDED:
            # it may have been paid in the meantime: the channel's word decides
            query = await self._query(adapter, row["channel"], row["channel_order_id"])
            if query.outcome is Outcome.SUCCEEDED:
                await self.payments.apply_channel_result(
                    row["channel"], row["channel_order_id"], query
                )
                return
            if query.outcome is not Outcome.FAILED:
                await self._reschedule_attempt(row)
                return
        await self.payments.transition(
            row["payment_id"],
            PaymentStatus.CLOSED,
            attempt_id=row["id"],
            attempt_status=AttemptStatus.CLOSED,
            failure=("expired", "The payer did not pay before the payment expired."),
        )
        metrics.EXPIRED.inc()

    async def _reschedule_attempt(self, row: dict[str, Any]) -> None:
        await self.pool.execute(
            "UPDATE payment_attempts SET next_sync_at = $2 WHERE id = $1"
            " AND status IN ('creating', 'waiting', 'unknown')",
            row["id"],
            self.next_at(row["sync_count"], row["expires_at"]),
        )

    async def _sync_refund(self, row: dict[str, Any]) -> None:
        """Ask the channel about a pending refund. Succeeded or failed settles it. When the
        channel says it has no such refund (or that it failed), the refund is sent again, and
        the answer to that decides: channels keep one refund per refund id, so a repeat never
        refunds twice, and a refund that never reached the channel (a timeout, a crash before
        the call) gets there."""
        logs.bind_job()  # each item is a task of its own (run_once's gather)
        adapter = self.channels.adapter(row["channel"])
        if adapter is None:
            log.warning("sync_channel_missing", refund_id=row["id"], channel=row["channel"])
            return
        try:
            result = await adapter.query_refund(row["channel_order_id"], row["channel_refund_id"])
            metrics.CHANNEL_CALLS.labels(
                channel=row["channel"], operation="refund_query", outcome=result.outcome.value
            ).inc()
            if result.outcome is Outcome.SUCCEEDED:
                await self.refunds.apply_result(row["channel"], row["channel_refund_id"], result)
                return
            if result.outcome is Outcome.FAILED:
                sent = await self.refunds.send(row, row["total_amount"])
                if sent["status"] != RefundStatus.PENDING:
                    return
        except Exception:
            log.exception("sync_refund_failed", refund_id=row["id"])
        await self.pool.execute(
            "UPDATE refunds SET next_sync_at = $2 WHERE id = $1 AND status = 'pending'",
            row["id"],
            self.next_at(row["sync_count"]),
        )
