"""Payments: create (route, attempt, fail over), query, close, and applying what channels say.

Every change of a payment's status happens in one transaction under the payment's row lock,
checked against the state machine, together with the event and callback rows it causes. A
success is applied only with the payment's amount and currency; a success for an attempt the
gateway gave up (or whose payment it gave up) is a late payment; a channel notification's id is
applied once. Orders are closed at their channel one way (`close_at_channel`): the merchant's
close, the expiry, a create whose answer never came and an attempt failed over while its order
may exist all use it; a channel that cannot close an order says until when it stays payable,
and the attempt is watched until then."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from adapters.base import (
    ChannelAdapter,
    ChannelResult,
    CreatePayment,
    Decision,
    Notification,
    NotificationKind,
    Outcome,
)
from gateway import logs, metrics, timing
from gateway.domain.errors import (
    ChannelUnavailable,
    DuplicateMerchantOrderId,
    GatewayError,
    InvalidState,
    NoRoute,
    NotFound,
)
from gateway.domain.ids import new_id
from gateway.domain.models import CreatePaymentRequest, PaymentObject, event_body
from gateway.domain.records import (
    Attempt,
    AttemptOutcome,
    Event,
    NewAttempt,
    NewPayment,
    NextAction,
    Payment,
)
from gateway.domain.states import (
    EVENT_FOR_PAYMENT_STATUS,
    AttemptStatus,
    PaymentStatus,
    ResultVerdict,
    attempt_can,
    attempt_is_open,
    payment_can,
)
from gateway.domain.verdicts import SuccessMeaning, money_mismatch, refuses, success_meaning
from gateway.risk.engine import RiskEngine
from gateway.services.channels import ChannelRegistry
from gateway.services.refunds import record_late_payment, record_needs_operator, refuse_success
from gateway.store import payments as store
from gateway.store.db import Connection, Pool
from routing.engine import Candidate, RouteDecision

log = structlog.get_logger("payments")

CREATING_WAIT_S = 10.0
"""How long a duplicate create waits for the first one's channel call to finish."""


@dataclass(frozen=True, slots=True)
class CreateOutcome:
    payment: Payment
    created: bool
    """False when the merchant_order_id was used before: `payment` is the one it made."""


@dataclass(frozen=True, slots=True)
class PaymentApplied:
    """A payment after a channel's result was offered to it, and what became of the result."""

    payment: Payment
    verdict: ResultVerdict


class CloseVerdict(enum.StrEnum):
    CLOSED = "closed"
    """Nothing is payable at the channel any more (or until `watch_until` only)."""
    PAID = "paid"
    """The channel refused the close: the order was paid."""
    UNCONFIRMED = "unconfirmed"
    """The channel did not confirm either: ask again later."""


@dataclass(frozen=True, slots=True)
class ClosedAtChannel:
    verdict: CloseVerdict
    watch_until: datetime | None = None
    """With CLOSED: the channel could not close the order; it stays payable until then."""
    paid: ChannelResult | None = None
    """With PAID: the query that says so (to apply)."""


def close_verdict(close: ChannelResult, query: ChannelResult | None) -> CloseVerdict:
    """What a close at the channel, and the query made when the close did not succeed,
    establish. Only the channel's word closes: a close that succeeded, or one it refused (the
    order is paid, closed or failed there) followed by a query that finds it paid or not
    payable. A close whose answer was lost proves nothing, even if the query finds no order: a
    create still in flight could open it after."""
    if close.outcome is Outcome.SUCCEEDED:
        return CloseVerdict.CLOSED
    if query is not None and query.outcome is Outcome.SUCCEEDED:
        return CloseVerdict.PAID
    if close.outcome is Outcome.FAILED and query is not None and query.outcome is Outcome.FAILED:
        return CloseVerdict.CLOSED
    return CloseVerdict.UNCONFIRMED


def new_attempt(
    payment_id: str, seq: int, channel: str, adapter: ChannelAdapter, decision: RouteDecision
) -> NewAttempt:
    """Attempt number `seq` of a payment, at `channel` (the one place attempts are made)."""
    return NewAttempt(
        id=new_id("att"),
        payment_id=payment_id,
        seq=seq,
        channel=channel,
        adapter=adapter.adapter,
        channel_order_id=adapter.channel_order_id(payment_id, seq),
        routing_rule=decision.rule,
        routing_version=decision.version,
    )


def attempt_outcome(result: ChannelResult | None) -> AttemptOutcome:
    """What an attempt keeps of a channel's answer."""
    if result is None:
        return AttemptOutcome()
    return AttemptOutcome(
        channel_code=result.channel_code,
        channel_message=result.channel_message,
        decision=result.decision.value,
        channel_trade_no=result.channel_trade_no,
    )


def next_action_of(result: ChannelResult) -> NextAction | None:
    action = result.next_action
    return None if action is None else NextAction(type=action.type, url=action.url)


class PaymentService:
    def __init__(
        self,
        pool: Pool,
        channels: ChannelRegistry,
        public_url: str,
        sync_schedule: tuple[float, ...],
        risk: RiskEngine | None = None,
        late_payment_auto_refund: bool = False,
    ) -> None:
        self.pool = pool
        self.channels = channels
        self.public_url = public_url
        self.sync_schedule = sync_schedule
        self.risk = risk
        self.late_payment_auto_refund = late_payment_auto_refund

    def notify_url(self, channel: str) -> str:
        return f"{self.public_url}/notify/{channel}"

    # ---- channel calls outside a create -----------------------------------------------------
    async def query_at_channel(
        self, adapter: ChannelAdapter, channel: str, channel_order_id: str
    ) -> ChannelResult:
        return await self._counted(channel, "query", adapter.query_payment(channel_order_id))

    async def close_at_channel(
        self, adapter: ChannelAdapter, channel: str, channel_order_id: str
    ) -> ClosedAtChannel:
        """Close an order at its channel, and ask it what became of the order when it would not
        (`close_verdict`). The one way every order the gateway gives up is closed."""
        close = await self._counted(channel, "close", adapter.close_payment(channel_order_id))
        query = None
        if close.outcome is not Outcome.SUCCEEDED:
            query = await self.query_at_channel(adapter, channel, channel_order_id)
        verdict = close_verdict(close, query)
        return ClosedAtChannel(
            verdict,
            watch_until=close.watch_until if verdict is CloseVerdict.CLOSED else None,
            paid=query if verdict is CloseVerdict.PAID else None,
        )

    @staticmethod
    async def _counted(
        channel: str, operation: str, call: Coroutine[Any, Any, ChannelResult]
    ) -> ChannelResult:
        started = asyncio.get_running_loop().time()
        result = await call
        timing.add_channel_time(asyncio.get_running_loop().time() - started)
        metrics.CHANNEL_CALLS.labels(
            channel=channel, operation=operation, outcome=result.outcome.value
        ).inc()
        return result

    # ---- create ---------------------------------------------------------------------------
    async def create(self, merchant_id: str, req: CreatePaymentRequest) -> CreateOutcome:
        """Create a payment and call its channel, or answer a repeat of the merchant_order_id
        with the payment it made. Repeats are found by the insert's unique key, not by a
        lookup first: the new payment's path has two statements, both commits. A request
        refused before the insert (risk, no route, channels down) looks for a payment that an
        earlier request made with the same merchant_order_id, so a retry is answered the
        same whatever the rules say now."""
        try:
            decision, first, remaining, max_attempts = await self._route(merchant_id, req)
        except GatewayError:
            existing = await store.get_payment_by_order(
                self.pool, merchant_id, req.merchant_order_id
            )
            if existing is None:
                raise
            return CreateOutcome(await self._existing(existing, req), created=False)
        now = datetime.now(UTC)
        payment_id = new_id("pay")
        adapter = self.channels.adapter(first.channel)
        assert adapter is not None
        attempt = new_attempt(payment_id, 1, first.channel, adapter, decision)
        try:
            payment = await store.insert_payment_with_attempt(
                self.pool, _new_payment(payment_id, merchant_id, req, now), attempt
            )
        except BaseException:
            if first.probe:
                await self.channels.release_probe(first.channel)
            raise
        if payment is None:  # a concurrent request with the same merchant_order_id won the insert
            if first.probe:
                await self.channels.release_probe(first.channel)
            existing = await store.get_payment_by_order(
                self.pool, merchant_id, req.merchant_order_id
            )
            assert existing is not None
            return CreateOutcome(await self._existing(existing, req), created=False)
        metrics.ROUTING_DECISIONS.labels(rule=decision.rule, channel=first.channel).inc()

        candidate: Candidate | None = first
        seq = 1
        while candidate is not None:
            adapter = self.channels.adapter(candidate.channel)
            assert adapter is not None
            if seq > 1:
                attempt = new_attempt(payment_id, seq, candidate.channel, adapter, decision)
                await self._fail_over(attempt)
            result = await self._call_create(adapter, attempt, payment, req)
            final = await self._apply_create_result(payment, attempt, result)
            if final is not None:
                return CreateOutcome(final, created=True)
            log.warning(
                "payment_failover",
                payment_id=payment_id,
                channel=candidate.channel,
                code=result.channel_code,
                attempt=seq,
            )
            metrics.FAILOVERS.labels(channel=candidate.channel).inc()
            candidate = await self._next_usable(remaining) if seq < max_attempts else None
            seq += 1

        # every attempt failed over: the payment fails as channel_unavailable
        final = await self.transition(
            payment_id,
            PaymentStatus.FAILED,
            failure=("channel_unavailable", "Every eligible channel failed; nothing was charged."),
        )
        return CreateOutcome(final, created=True)

    async def _route(
        self, merchant_id: str, req: CreatePaymentRequest
    ) -> tuple[RouteDecision, Candidate, Iterator[Candidate], int]:
        """Risk rules, then routing: the decision, the first channel to call, the candidates
        left to fail over to, and how many attempts the decision allows. Raises the
        GatewayError that refuses the payment."""
        if self.risk is not None:
            await self.risk.check(merchant_id, req)
        decision = await self.channels.decide(
            method=req.method,
            amount=req.amount,
            currency=req.currency,
            merchant_id=merchant_id,
            metadata=dict(req.metadata),
        )
        candidates = [c for c in decision.candidates if self.channels.adapter(c.channel)]
        if not candidates:
            if decision.all_circuits_open:
                raise self._unavailable(decision.retry_after_s)
            raise NoRoute(req.method, req.amount, req.currency)
        remaining = iter(candidates)
        first = await self._next_usable(remaining)
        if first is None:  # every candidate is a half-open channel with no probe slot free
            raise self._unavailable(decision.retry_after_s)
        return decision, first, remaining, max(1, min(decision.max_attempts, len(candidates)))

    async def _next_usable(self, remaining: Iterator[Candidate]) -> Candidate | None:
        """The next candidate we may call: a half-open channel only with a free probe slot."""
        for candidate in remaining:
            if not candidate.probe or await self.channels.acquire_probe(candidate.channel):
                return candidate
        return None

    @staticmethod
    def _unavailable(retry_after_s: int | None) -> ChannelUnavailable:
        return ChannelUnavailable(
            "Every channel that could take this payment is out of service; nothing was "
            "created. Retry later.",
            retry_after_s=max(1, retry_after_s or 30),
        )

    async def _existing(self, payment: Payment, req: CreatePaymentRequest) -> Payment:
        if (payment.amount, payment.currency, payment.method) != (
            req.amount,
            req.currency,
            req.method,
        ):
            raise DuplicateMerchantOrderId(req.merchant_order_id, payment.id)
        # the first request may still be talking to the channel: wait briefly for its answer,
        # so that every duplicate sees the payer's next action too
        deadline = asyncio.get_running_loop().time() + CREATING_WAIT_S
        while payment.status is PaymentStatus.PENDING and payment.next_action is None:
            attempt = await store.current_attempt(self.pool, payment.id)
            creating = attempt is not None and attempt.status is AttemptStatus.CREATING
            if creating:
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.02)
            fresh = await store.get_payment(self.pool, payment.merchant_id, payment.id)
            assert fresh is not None
            payment = fresh
            if not creating:
                break
        return payment

    async def _fail_over(self, attempt: NewAttempt) -> None:
        """Make `attempt` the payment's current one, under the payment's row lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            locked = await store.lock_payment(conn, attempt.payment_id)
            assert locked is not None
            await store.insert_attempt(conn, attempt)
            await store.switch_payment_channel(conn, attempt)

    async def _call_create(
        self,
        adapter: ChannelAdapter,
        attempt: NewAttempt,
        payment: Payment,
        req: CreatePaymentRequest,
    ) -> ChannelResult:
        started = asyncio.get_running_loop().time()
        try:
            result = await adapter.create_payment(
                CreatePayment(
                    channel_order_id=attempt.channel_order_id,
                    amount=payment.amount,
                    currency=payment.currency,
                    method=payment.method,
                    description=payment.description,
                    notify_url=self.notify_url(attempt.channel),
                    expires_at=payment.expires_at,
                    payer_ip=req.payer.ip if req.payer else None,
                )
            )
        except Exception as exc:  # an adapter bug must not leave the outcome unrecorded
            log.exception("adapter_create_crashed", channel=attempt.channel)
            result = ChannelResult(
                outcome=Outcome.UNKNOWN, channel_code="ADAPTER_ERROR", channel_message=repr(exc)
            )
        elapsed = asyncio.get_running_loop().time() - started
        timing.add_channel_time(elapsed)
        metrics.CHANNEL_CALLS.labels(
            channel=attempt.channel, operation="create", outcome=result.outcome.value
        ).inc()
        metrics.CHANNEL_LATENCY.labels(channel=attempt.channel, operation="create").observe(elapsed)
        healthy = result.outcome not in (Outcome.SYSTEM_ERROR, Outcome.UNKNOWN)
        await self.channels.record(attempt.channel, healthy)
        return result

    async def _apply_create_result(
        self, payment: Payment, attempt: NewAttempt, result: ChannelResult
    ) -> Payment | None:
        """Record what the channel said about a new order. Returns the payment when this
        attempt settles the create, or None to fail over to the next candidate."""
        if result.outcome is Outcome.WAITING:
            updated = await store.mark_attempt_waiting(
                self.pool,
                attempt,
                next_action_of(result),
                result.channel_trade_no,
                result.channel_code,
                self._next_sync_at(0),
            )
            if updated is not None:
                return updated
            # a notification settled it first: answer with what is stored now
            return await store.get_payment(self.pool, payment.merchant_id, payment.id)
        if result.outcome is Outcome.SUCCEEDED:
            applied = await self.apply_channel_result(
                attempt.channel, attempt.channel_order_id, result
            )
            assert applied is not None
            if applied.verdict is not ResultVerdict.REFUSED:
                return applied.payment
            # not applied (its money is not the payment's; alerted): the sync asks again
        if result.outcome in (Outcome.UNKNOWN, Outcome.SUCCEEDED):
            async with self.pool.acquire() as conn, conn.transaction():
                await store.lock_payment(conn, payment.id)
                # only from creating: a notification may have settled it meanwhile
                await store.mark_attempt_unknown(
                    conn, attempt.id, attempt_outcome(result), self._next_sync_at(0)
                )
            return await store.get_payment(self.pool, payment.merchant_id, payment.id)
        if result.outcome is Outcome.SYSTEM_ERROR and result.decision is Decision.FAILOVER:
            async with self.pool.acquire() as conn, conn.transaction():
                await store.lock_payment(conn, payment.id)
                if result.order_may_exist:
                    # the payer never got a way to pay it, but the order may exist there: the
                    # sync closes it at the channel
                    await store.mark_attempt_closing(
                        conn, attempt.id, attempt_outcome(result), self._next_sync_at(0)
                    )
                else:
                    await store.mark_attempt_failed_over(conn, attempt.id, attempt_outcome(result))
            return None
        # a definitive refusal (or a system error the table calls final)
        code = result.channel_code or "channel_declined"
        return await self.transition(
            payment.id,
            PaymentStatus.FAILED,
            attempt_id=attempt.id,
            attempt_status=AttemptStatus.FAILED,
            result=result,
            failure=(code, result.channel_message or "The channel declined the payment."),
        )

    def _next_sync_at(self, sync_count: int) -> datetime:
        delays = self.sync_schedule
        delay = delays[min(sync_count, len(delays) - 1)]
        return datetime.now(UTC) + timedelta(seconds=delay)

    # ---- state changes --------------------------------------------------------------------
    async def transition(
        self,
        payment_id: str,
        target: PaymentStatus,
        *,
        attempt_id: str | None = None,
        attempt_status: AttemptStatus | None = None,
        result: ChannelResult | None = None,
        failure: tuple[str, str] | None = None,
        watch_until: datetime | None = None,
    ) -> Payment:
        """Move a payment (and optionally one attempt) to a new state under the row lock,
        writing the event and its deliveries in the same transaction. A transition the state
        machine does not allow changes nothing and returns the payment as it is. With
        `watch_until`, the attempt's order stays payable at the channel until then: the sync
        keeps querying it."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._transition(
                conn, payment_id, target, attempt_id, attempt_status, result, failure, watch_until
            )

    async def _transition(
        self,
        conn: Connection,
        payment_id: str,
        target: PaymentStatus,
        attempt_id: str | None,
        attempt_status: AttemptStatus | None,
        result: ChannelResult | None,
        failure: tuple[str, str] | None,
        watch_until: datetime | None = None,
    ) -> Payment:
        payment = await store.lock_payment(conn, payment_id)
        assert payment is not None
        if attempt_id is not None and attempt_status is not None:
            attempt = await store.get_attempt(conn, attempt_id)
            if attempt is not None and attempt_can(attempt.status, attempt_status):
                await store.finish_attempt(
                    conn,
                    attempt_id,
                    attempt_status,
                    attempt_outcome(result),
                    watch_until=watch_until,
                    next_sync_at=self._next_sync_at(0) if watch_until is not None else None,
                )
        if not payment_can(payment.status, target):
            return payment
        now = datetime.now(UTC)
        succeeded = target is PaymentStatus.SUCCEEDED
        updated = await store.finish_payment(
            conn,
            payment_id,
            target,
            paid_at=((result.paid_at if result and result.paid_at else now) if succeeded else None),
            channel_trade_no=(result.channel_trade_no or None) if succeeded and result else None,
            closed_at=now if target is PaymentStatus.CLOSED else None,
            failure=failure,
        )
        event_type = EVENT_FOR_PAYMENT_STATUS[target]
        event_id = new_id("evt")
        await store.insert_event(
            conn,
            Event(
                id=event_id,
                merchant_id=updated.merchant_id,
                type=event_type,
                payment_id=payment_id,
                refund_id=None,
                payload=event_body(event_id, event_type, now, PaymentObject.of(updated)),
                created_at=now,
                request_id=logs.current_request_id(),
            ),
            notify_url=updated.notify_url,
        )
        metrics.PAYMENT_TRANSITIONS.labels(status=target.value).inc()
        log.info(
            "payment_transition",
            payment_id=payment_id,
            merchant_id=updated.merchant_id,
            status=target.value,
            event_id=event_id,
        )
        return updated

    async def apply_channel_result(
        self,
        channel: str,
        channel_order_id: str,
        result: ChannelResult,
        *,
        notification_id: str | None = None,
    ) -> PaymentApplied | None:
        """Apply what a channel established about one of its orders (its answer, a query or a
        notification), exactly once: all under the payment's row lock, checked against the
        state machines. A success without the payment's amount and currency is refused
        (recorded and alerted, nothing applied; `refuses`); a notification's id is recorded
        with the change it causes, and a repeat of it applies nothing. None for an order we do
        not know."""
        async with self.pool.acquire() as conn, conn.transaction():
            attempt = await store.attempt_by_channel_order(conn, channel, channel_order_id)
            if attempt is None:
                return None
            payment = await store.lock_payment(conn, attempt.payment_id)
            assert payment is not None
            # re-read the attempt under the payment's lock
            attempt = await store.attempt_by_channel_order(conn, channel, channel_order_id)
            assert attempt is not None
            if result.outcome is Outcome.SUCCEEDED:
                mismatch = money_mismatch(
                    result.amount, result.currency, payment.amount, payment.currency
                )
                repeat = success_meaning(payment.status, attempt.status) is SuccessMeaning.REPEAT
                if mismatch is not None and refuses(mismatch, repeats_applied_success=repeat):
                    await refuse_success(conn, payment, channel, channel_order_id, result, mismatch)
                    return PaymentApplied(payment, ResultVerdict.REFUSED)
            if notification_id is not None and not await store.claim_notification_id(
                conn, channel, notification_id
            ):
                return PaymentApplied(payment, ResultVerdict.REPEATED)
            applied = await self._apply(conn, payment, attempt, result)
            return PaymentApplied(applied, ResultVerdict.APPLIED)

    async def _apply(
        self, conn: Connection, payment: Payment, attempt: Attempt, result: ChannelResult
    ) -> Payment:
        if result.outcome is Outcome.SUCCEEDED:
            meaning = success_meaning(payment.status, attempt.status)
            if meaning is SuccessMeaning.TAKES_PAYMENT:
                return await self._transition(
                    conn,
                    payment.id,
                    PaymentStatus.SUCCEEDED,
                    attempt.id,
                    AttemptStatus.SUCCEEDED,
                    result,
                    None,
                )
            if meaning is SuccessMeaning.LATE:
                # paid at the channel after the gateway gave the attempt (or the payment) up:
                # an operator matter
                await record_late_payment(
                    conn,
                    payment,
                    attempt,
                    result,
                    self.channels.adapter(attempt.channel),
                    auto_refund=self.late_payment_auto_refund,
                )
                if attempt.status is AttemptStatus.CLOSING:  # paid: nothing left to close
                    await store.close_given_up_attempt(conn, attempt.id, None, None)
            return payment
        if result.outcome is Outcome.FAILED:
            latest = await store.current_attempt(conn, payment.id)
            is_latest = latest is not None and latest.id == attempt.id
            if not is_latest or not attempt_is_open(attempt.status):
                return payment
            code = result.channel_code or "channel_declined"
            return await self._transition(
                conn,
                payment.id,
                PaymentStatus.FAILED,
                attempt.id,
                AttemptStatus.FAILED,
                result,
                (code, result.channel_message or "The payment failed at the channel."),
            )
        if result.outcome is Outcome.WAITING and attempt_is_open(attempt.status):
            if result.needs_operator and payment.status is PaymentStatus.PENDING:
                await record_needs_operator(
                    conn, payment, attempt.channel, attempt.channel_order_id, result
                )
            if attempt.status in (AttemptStatus.CREATING, AttemptStatus.UNKNOWN):
                await store.mark_attempt_waiting_after_query(conn, attempt.id, result.channel_code)
                next_action = next_action_of(result)
                if next_action is not None and payment.next_action is None:
                    # a create whose answer was lost: the query gives the payer's next action
                    return await store.set_next_action(conn, payment.id, next_action)
        return payment

    async def close_given_up(
        self, payment_id: str, attempt_id: str, watch_until: datetime | None
    ) -> None:
        """A closing attempt's order is closed at its channel (stays payable until
        `watch_until`, when the channel could not close it: watched until then)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_payment(conn, payment_id)
            await store.close_given_up_attempt(
                conn,
                attempt_id,
                watch_until,
                self._next_sync_at(0) if watch_until is not None else None,
            )

    async def apply_notification(
        self, channel: str, notification: Notification
    ) -> ResultVerdict | None:
        """Apply a verified channel notification. None when it concerns an order we do not
        know (the channel will be asked to send it again)."""
        if notification.kind is not NotificationKind.PAYMENT:
            return None  # refunds are applied by the refund service
        applied = await self.apply_channel_result(
            channel,
            notification.channel_order_id,
            notification.result,
            notification_id=notification.notification_id,
        )
        return None if applied is None else applied.verdict

    # ---- query and close ------------------------------------------------------------------
    async def get(self, merchant_id: str, payment_id: str) -> Payment:
        payment = await store.get_payment(self.pool, merchant_id, payment_id)
        if payment is None:
            raise NotFound.of("payment")
        return payment

    async def get_by_order(self, merchant_id: str, merchant_order_id: str) -> Payment:
        payment = await store.get_payment_by_order(self.pool, merchant_id, merchant_order_id)
        if payment is None:
            raise NotFound.of("payment")
        return payment

    async def sync(self, merchant_id: str, payment_id: str) -> Payment:
        """Ask the channel now (`GET /v1/payments/{id}?sync=true`) and apply its answer."""
        payment = await self.get(merchant_id, payment_id)
        if payment.status is PaymentStatus.PENDING:
            attempt = await store.current_attempt(self.pool, payment_id)
            adapter = self.channels.adapter(attempt.channel) if attempt else None
            if attempt is not None and adapter is not None and attempt_is_open(attempt.status):
                result = await self.query_at_channel(
                    adapter, attempt.channel, attempt.channel_order_id
                )
                # "no such order" for a create whose answer never came is not final: the
                # background sync closes such an order at the channel before failing it
                unsure = (
                    result.outcome is Outcome.FAILED and attempt.status is not AttemptStatus.WAITING
                )
                if not unsure:
                    applied = await self.apply_channel_result(
                        attempt.channel, attempt.channel_order_id, result
                    )
                    if applied is not None:
                        payment = applied.payment
        return payment

    async def close(self, merchant_id: str, payment_id: str) -> Payment:
        payment = await self.get(merchant_id, payment_id)
        if payment.status is PaymentStatus.CLOSED:
            return payment
        if payment.status is not PaymentStatus.PENDING:
            raise InvalidState(f"A {payment.status} payment cannot be closed.")
        attempt = await store.current_attempt(self.pool, payment_id)
        assert attempt is not None
        adapter = self.channels.adapter(attempt.channel)
        watch_until = None
        if adapter is not None and attempt_is_open(attempt.status):
            closed = await self.close_at_channel(adapter, attempt.channel, attempt.channel_order_id)
            if closed.verdict is CloseVerdict.PAID:
                assert closed.paid is not None
                applied = await self.apply_channel_result(
                    attempt.channel, attempt.channel_order_id, closed.paid
                )
                if applied is not None and applied.payment.status is PaymentStatus.SUCCEEDED:
                    raise InvalidState("The payment succeeded and cannot be closed.")
            if closed.verdict is not CloseVerdict.CLOSED:
                raise ChannelUnavailable(
                    "The channel could not close the payment now; retry later.",
                    retry_after_s=5,
                )
            watch_until = closed.watch_until
        updated = await self.transition(
            payment_id,
            PaymentStatus.CLOSED,
            attempt_id=attempt.id,
            attempt_status=AttemptStatus.CLOSED,
            watch_until=watch_until,
        )
        if updated.status is PaymentStatus.SUCCEEDED:
            raise InvalidState("The payment succeeded and cannot be closed.")
        return updated


def _new_payment(
    payment_id: str, merchant_id: str, req: CreatePaymentRequest, now: datetime
) -> NewPayment:
    return NewPayment(
        id=payment_id,
        merchant_id=merchant_id,
        merchant_order_id=req.merchant_order_id,
        amount=req.amount,
        currency=req.currency,
        method=req.method,
        description=req.description,
        notify_url=req.notify_url,
        metadata=dict(req.metadata),
        payer=req.payer.model_dump(exclude_none=True) if req.payer else None,
        expires_at=now + timedelta(seconds=req.expires_in),
    )
