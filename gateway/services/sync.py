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

import structlog

from adapters.base import ChannelAdapter, ChannelResult, Outcome
from gateway import logs, metrics
from gateway.domain.records import DueAttempt, DueRefund
from gateway.domain.states import AttemptStatus, PaymentStatus, RefundStatus
from gateway.services.channels import ChannelRegistry
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.store import payments as payment_store
from gateway.store import refunds as refund_store
from gateway.store.db import Pool

log = structlog.get_logger("sync")

LEASE_S = 60
"""A claimed attempt or refund is this process's for a minute: should it die, another takes it."""


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
        attempts = await payment_store.claim_due_attempts(self.pool, self.batch, LEASE_S)
        refunds = await refund_store.claim_due_refunds(self.pool, self.batch, LEASE_S)
        await asyncio.gather(
            *(self._sync_attempt(a) for a in attempts),
            *(self._sync_refund(r) for r in refunds),
        )
        metrics.SYNC_BACKLOG.set(await payment_store.count_due_attempts(self.pool))
        return len(attempts) + len(refunds)

    async def _sync_attempt(self, due: DueAttempt) -> None:
        logs.bind_job()  # each item is a task of its own (run_once's gather)
        bound = log.bind(payment_id=due.payment_id, channel=due.channel)
        adapter = self.channels.adapter(due.channel)
        if adapter is None:
            bound.warning("sync_channel_missing")
            return
        try:
            result = await self._query(adapter, due.channel, due.channel_order_id)
            if result.outcome is Outcome.FAILED and due.status is not AttemptStatus.WAITING:
                # the create's answer never came: the order may still reach the channel (a
                # request in flight, a channel that acts after timing out), so close it there
                # first, that a late create cannot open it for payment
                closed = await self._close(adapter, due.channel, due.channel_order_id)
                if closed.outcome is not Outcome.SUCCEEDED:
                    result = await self._query(adapter, due.channel, due.channel_order_id)
            if result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.WAITING):
                await self.payments.apply_channel_result(due.channel, due.channel_order_id, result)
            if result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED):
                return
            expired = due.expires_at <= datetime.now(UTC)
            if expired and due.payment_status is PaymentStatus.PENDING:
                await self._expire(due, adapter)
                return
            await self._reschedule_attempt(due)
        except Exception:
            bound.exception("sync_attempt_failed")
            await self._reschedule_attempt(due)

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

    async def _expire(self, due: DueAttempt, adapter: ChannelAdapter) -> None:
        close = await self._close(adapter, due.channel, due.channel_order_id)
        if close.outcome is not Outcome.SUCCEEDED:
            # it may have been paid in the meantime: the channel's word decides
            query = await self._query(adapter, due.channel, due.channel_order_id)
            if query.outcome is Outcome.SUCCEEDED:
                await self.payments.apply_channel_result(due.channel, due.channel_order_id, query)
                return
            if query.outcome is not Outcome.FAILED:
                await self._reschedule_attempt(due)
                return
        await self.payments.transition(
            due.payment_id,
            PaymentStatus.CLOSED,
            attempt_id=due.id,
            attempt_status=AttemptStatus.CLOSED,
            failure=("expired", "The payer did not pay before the payment expired."),
        )
        metrics.EXPIRED.inc()

    async def _reschedule_attempt(self, due: DueAttempt) -> None:
        await payment_store.reschedule_attempt_sync(
            self.pool, due.id, self.next_at(due.sync_count, due.expires_at)
        )

    async def _sync_refund(self, due: DueRefund) -> None:
        """Ask the channel about a pending refund. Succeeded or failed settles it. When the
        channel says it has no such refund (or that it failed), the refund is sent again, and
        the answer to that decides: channels keep one refund per refund id, so a repeat never
        refunds twice, and a refund that never reached the channel (a timeout, a crash before
        the call) gets there."""
        logs.bind_job()  # each item is a task of its own (run_once's gather)
        refund = due.refund
        adapter = self.channels.adapter(refund.channel)
        if adapter is None:
            log.warning("sync_channel_missing", refund_id=refund.id, channel=refund.channel)
            return
        try:
            result = await adapter.query_refund(refund.channel_order_id, refund.channel_refund_id)
            metrics.CHANNEL_CALLS.labels(
                channel=refund.channel, operation="refund_query", outcome=result.outcome.value
            ).inc()
            if result.outcome is Outcome.SUCCEEDED:
                await self.refunds.apply_result(refund.channel, refund.channel_refund_id, result)
                return
            if result.outcome is Outcome.FAILED:
                sent = await self.refunds.send(refund, due.payment_amount)
                if sent.status is not RefundStatus.PENDING:
                    return
        except Exception:
            log.exception("sync_refund_failed", refund_id=refund.id)
        await refund_store.reschedule_refund_sync(
            self.pool, refund.id, self.next_at(refund.sync_count)
        )
