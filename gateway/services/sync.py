"""Status sync and expiry: re-query attempts whose outcome is open (no notification yet, a
timeout, a process that died mid-create) on a backoff, close pending payments at their expiry
(unless the channel says they were paid), close at their channel the orders of attempts given
up while the order may exist there, keep querying closed orders the channel could not close
until they stop being payable (a payment there is a late payment), and re-query pending
refunds. A payment or refund the channel reports neither done nor failed, though money may have
moved (`needs_operator`), is never failed or expired: it is asked about again on the slow end of
the schedule. Every order is closed the one way `PaymentService.close_at_channel` does it.

Work is claimed in PostgreSQL with `FOR UPDATE SKIP LOCKED` plus a lease (the claim pushes
`next_sync_at` forward), so any number of gateway processes can run it. Each attempt or refund
synced is a job of its own: a `job_…` request id, carried by its logs, its channel calls and
the events it causes (and so their callbacks). The loop also forgets, once an hour, the channel
notification ids applied long ago."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import structlog

from adapters.base import ChannelAdapter, ChannelResult, Outcome
from gateway import logs, metrics
from gateway.domain.records import DueAttempt, DueRefund
from gateway.domain.states import (
    AttemptStatus,
    PaymentStatus,
    RefundStatus,
    ResultVerdict,
    attempt_is_open,
)
from gateway.domain.verdicts import WATCH_GRACE, watch_next_sync
from gateway.services.channels import ChannelRegistry
from gateway.services.payments import (
    ClosedAtChannel,
    CloseVerdict,
    PaymentApplied,
    PaymentService,
)
from gateway.services.refunds import RefundService
from gateway.store import payments as payment_store
from gateway.store import refunds as refund_store
from gateway.store.db import Pool

log = structlog.get_logger("sync")

LEASE_S = 60
"""A claimed attempt or refund is this process's for a minute: should it die, another takes it."""

NOTIFICATION_IDS_KEPT_S = 7 * 86400
"""Channels repeat a notification for a day or so (WeChat about 24 h, Alipay 25 h): its id is
kept a week, then forgotten (a repeat after that would be applied again, idempotently)."""
PURGE_EVERY_S = 3600.0


def _refused(applied: PaymentApplied | None) -> bool:
    return applied is not None and applied.verdict is ResultVerdict.REFUSED


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
        self.watch_grace: timedelta = WATCH_GRACE
        """How long past its `watch_until` a closed order is still queried."""
        self._next_purge = 0.0

    def next_at(self, sync_count: int, expires_at: datetime | None = None) -> datetime:
        delay = self.schedule[min(sync_count, len(self.schedule) - 1)]
        when = datetime.now(UTC) + timedelta(seconds=delay)
        if expires_at is not None and expires_at > datetime.now(UTC):
            when = min(when, expires_at)
        return when

    def slow_end(self) -> datetime:
        """The schedule's longest delay from now: for what only an operator can settle."""
        return datetime.now(UTC) + timedelta(seconds=self.schedule[-1])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.run_once()
                await self._purge_notification_ids()
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

    async def _purge_notification_ids(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        await payment_store.purge_notification_ids(self.pool, NOTIFICATION_IDS_KEPT_S)

    # ---- attempts -------------------------------------------------------------------------
    async def _sync_attempt(self, due: DueAttempt) -> None:
        logs.bind_job()  # each item is a task of its own (run_once's gather)
        bound = log.bind(payment_id=due.payment_id, channel=due.channel)
        adapter = self.channels.adapter(due.channel)
        if adapter is None:
            bound.warning("sync_channel_missing")
            return
        try:
            if due.status is AttemptStatus.CLOSING:
                await self._close_given_up(due, adapter)
            elif attempt_is_open(due.status):
                await self._follow(due, adapter)
            else:
                await self._watch(due, adapter)
        except Exception:
            bound.exception("sync_attempt_failed")
            await self._reschedule_attempt(due)

    async def _follow(self, due: DueAttempt, adapter: ChannelAdapter) -> None:
        """An open attempt: ask the channel, apply its answer, expire the payment when due."""
        result = await self.payments.query_at_channel(adapter, due.channel, due.channel_order_id)
        if result.outcome is Outcome.FAILED and due.status is not AttemptStatus.WAITING:
            # the create's answer never came and the channel holds no order (yet): the create
            # may still reach it (a request in flight, a channel that acts after timing out), so
            # the order number is closed there before the payment fails, that a late create
            # cannot open it for payment
            closed = await self.payments.close_at_channel(
                adapter, due.channel, due.channel_order_id
            )
            if closed.verdict is CloseVerdict.UNCONFIRMED:
                await self._reschedule_attempt(due)
                return
            if closed.verdict is CloseVerdict.CLOSED:
                code = result.channel_code or "channel_declined"
                await self.payments.transition(
                    due.payment_id,
                    PaymentStatus.FAILED,
                    attempt_id=due.id,
                    attempt_status=AttemptStatus.FAILED,
                    result=result,
                    failure=(code, result.channel_message or "The payment failed at the channel."),
                    watch_until=closed.watch_until,
                )
                return
            assert closed.paid is not None
            result = closed.paid
        if result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.WAITING):
            applied = await self.payments.apply_channel_result(
                due.channel, due.channel_order_id, result
            )
            if result.outcome is not Outcome.WAITING and not _refused(applied):
                return
        if result.needs_operator:
            # money may have moved: recorded for an operator, never expired or failed here
            await payment_store.reschedule_attempt_sync(self.pool, due.id, self.slow_end())
            return
        expired = due.expires_at <= datetime.now(UTC)
        if expired and due.payment_status is PaymentStatus.PENDING:
            await self._expire(due, adapter)
            return
        await self._reschedule_attempt(due)

    async def _expire(self, due: DueAttempt, adapter: ChannelAdapter) -> None:
        closed = await self.payments.close_at_channel(adapter, due.channel, due.channel_order_id)
        if closed.verdict is CloseVerdict.PAID:  # in the meantime: the channel's word decides
            await self._apply_paid(due, closed)
            return
        if closed.verdict is CloseVerdict.UNCONFIRMED:
            await self._reschedule_attempt(due)
            return
        await self.payments.transition(
            due.payment_id,
            PaymentStatus.CLOSED,
            attempt_id=due.id,
            attempt_status=AttemptStatus.CLOSED,
            failure=("expired", "The payer did not pay before the payment expired."),
            watch_until=closed.watch_until,
        )
        metrics.EXPIRED.inc()

    async def _close_given_up(self, due: DueAttempt, adapter: ChannelAdapter) -> None:
        """An attempt failed over while its order may exist at the channel: closed there until
        the channel confirms, with backoff; paid there, it is a late payment."""
        closed = await self.payments.close_at_channel(adapter, due.channel, due.channel_order_id)
        if closed.verdict is CloseVerdict.PAID:  # a late payment, which ends the closing
            await self._apply_paid(due, closed)
        elif closed.verdict is CloseVerdict.CLOSED:
            await self.payments.close_given_up(due.payment_id, due.id, closed.watch_until)
        else:
            await self._reschedule_attempt(due)
        metrics.ATTEMPT_CLOSES.labels(channel=due.channel, result=closed.verdict.value).inc()
        log.info(
            "given_up_attempt_close",
            payment_id=due.payment_id,
            channel=due.channel,
            channel_order_id=due.channel_order_id,
            result=closed.verdict.value,
            watch_until=closed.watch_until.isoformat() if closed.watch_until else None,
        )

    async def _apply_paid(self, due: DueAttempt, closed: ClosedAtChannel) -> None:
        """The channel would not close the order: it was paid. Applied (a success, or a late
        payment); asked about again later when its money was refused."""
        assert closed.paid is not None
        applied = await self.payments.apply_channel_result(
            due.channel, due.channel_order_id, closed.paid
        )
        if _refused(applied):
            await self._reschedule_attempt(due)

    async def _watch(self, due: DueAttempt, adapter: ChannelAdapter) -> None:
        """A closed order the channel could not close: queried until it stops being payable
        (`watch_until`, plus a grace); a payment there is a late payment, which ends the
        watch."""
        result = await self.payments.query_at_channel(adapter, due.channel, due.channel_order_id)
        at: datetime | None = None
        if result.outcome is Outcome.SUCCEEDED:
            applied = await self.payments.apply_channel_result(
                due.channel, due.channel_order_id, result
            )
            if _refused(applied):
                at = self.next_at(due.sync_count)
        elif due.watch_until is not None:
            at = watch_next_sync(
                datetime.now(UTC), self.next_at(due.sync_count), due.watch_until, self.watch_grace
            )
        await payment_store.reschedule_attempt_sync(self.pool, due.id, at)

    async def _reschedule_attempt(self, due: DueAttempt) -> None:
        await payment_store.reschedule_attempt_sync(
            self.pool, due.id, self.next_at(due.sync_count, due.expires_at)
        )

    # ---- refunds --------------------------------------------------------------------------
    async def _sync_refund(self, due: DueRefund) -> None:
        """Ask the channel about a pending refund. Succeeded (with the refund's amount and
        currency) or failed settles it. When the channel says it has no such refund (or that
        it failed), the refund is sent again, and the answer to that decides: channels keep one
        refund per refund id, so a repeat never refunds twice, and a refund that never reached
        the channel (a timeout, a crash before the call) gets there. One the channel reports
        neither done nor failed, though money may have moved, is recorded for an operator and
        asked about again on the slow end of the schedule."""
        logs.bind_job()  # each item is a task of its own (run_once's gather)
        refund = due.refund
        adapter = self.channels.adapter(refund.channel)
        if adapter is None:
            log.warning("sync_channel_missing", refund_id=refund.id, channel=refund.channel)
            return
        at = self.next_at(refund.sync_count)
        try:
            result = await self._query_refund(adapter, refund.channel, due)
            if result.outcome is Outcome.SUCCEEDED:
                applied = await self.refunds.apply_result(
                    refund.channel, refund.channel_refund_id, result
                )
                if applied is None or applied.verdict is not ResultVerdict.REFUSED:
                    return
            elif result.outcome is Outcome.FAILED:
                sent = await self.refunds.send(refund, due.payment_amount)
                if sent.status is not RefundStatus.PENDING:
                    return
            elif result.outcome is Outcome.WAITING and result.needs_operator:
                await self.refunds.apply_result(refund.channel, refund.channel_refund_id, result)
                at = self.slow_end()
        except Exception:
            log.exception("sync_refund_failed", refund_id=refund.id)
        await refund_store.reschedule_refund_sync(self.pool, refund.id, at)

    @staticmethod
    async def _query_refund(adapter: ChannelAdapter, channel: str, due: DueRefund) -> ChannelResult:
        refund = due.refund
        result = await adapter.query_refund(refund.channel_order_id, refund.channel_refund_id)
        metrics.CHANNEL_CALLS.labels(
            channel=channel, operation="refund_query", outcome=result.outcome.value
        ).inc()
        return result
