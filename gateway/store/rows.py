"""Rows become records here: one function per record of `gateway.domain.records`, from the
asyncpg row of the statement that reads it. Nothing outside `gateway.store` sees a row."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from gateway.domain.audit import AuditEntry
from gateway.domain.permissions import Role
from gateway.domain.records import (
    Attempt,
    CallbackAttempt,
    ClaimedDelivery,
    DayPayment,
    DayRefund,
    Delivery,
    DueAttempt,
    DueRefund,
    Event,
    Failure,
    FoundAttempt,
    IdempotencyRecord,
    KeyType,
    Merchant,
    MerchantAccess,
    MerchantKey,
    MerchantKeyInfo,
    MerchantSummary,
    NextAction,
    NonceCacheGeneration,
    Operator,
    OperatorSession,
    OperatorToken,
    Payment,
    PaymentGroup,
    RateLimitOverrides,
    ReconciliationLine,
    ReconciliationRun,
    Refund,
    RefundGroup,
    SignInCounter,
    WebhookEndpoint,
)
from gateway.domain.states import (
    AttemptStatus,
    DeliveryStatus,
    EndpointStatus,
    IdempotencyState,
    KeyStatus,
    MerchantStatus,
    PaymentStatus,
    RefundStatus,
    RunStatus,
)


class Row(Protocol):
    """An asyncpg record: values by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def _failure(row: Row) -> Failure | None:
    code = row["failure_code"]
    return Failure(code, row["failure_message"] or "") if code else None


def _next_action(value: Mapping[str, str] | None) -> NextAction | None:
    return None if value is None else NextAction(type=value["type"], url=value["url"])


def next_action_json(action: NextAction | None) -> dict[str, str] | None:
    """How a next action is stored (jsonb)."""
    return None if action is None else {"type": action.type, "url": action.url}


def payment(row: Row) -> Payment:
    return Payment(
        id=row["id"],
        merchant_id=row["merchant_id"],
        merchant_order_id=row["merchant_order_id"],
        status=PaymentStatus(row["status"]),
        amount=row["amount"],
        currency=row["currency"],
        method=row["method"],
        description=row["description"],
        notify_url=row["notify_url"],
        metadata=row["metadata"] or {},
        payer=row["payer"],
        channel=row["channel"],
        channel_order_id=row["channel_order_id"],
        channel_trade_no=row["channel_trade_no"],
        next_action=_next_action(row["next_action"]),
        refunded_amount=row["refunded_amount"],
        refund_reserved=row["refund_reserved"],
        failure=_failure(row),
        attempt_count=row["attempt_count"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        paid_at=row["paid_at"],
        closed_at=row["closed_at"],
    )


def attempt(row: Row) -> Attempt:
    return Attempt(
        id=row["id"],
        payment_id=row["payment_id"],
        seq=row["seq"],
        channel=row["channel"],
        adapter=row["adapter"],
        channel_order_id=row["channel_order_id"],
        status=AttemptStatus(row["status"]),
        channel_code=row["channel_code"],
        channel_message=row["channel_message"],
        decision=row["decision"],
        channel_trade_no=row["channel_trade_no"],
        routing_rule=row["routing_rule"],
        routing_version=row["routing_version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_sync_at=row["next_sync_at"],
        sync_count=row["sync_count"],
        watch_until=row["watch_until"],
    )


def due_attempt(row: Row) -> DueAttempt:
    return DueAttempt(
        id=row["id"],
        payment_id=row["payment_id"],
        channel=row["channel"],
        channel_order_id=row["channel_order_id"],
        status=AttemptStatus(row["status"]),
        sync_count=row["sync_count"],
        merchant_id=row["merchant_id"],
        payment_status=PaymentStatus(row["payment_status"]),
        expires_at=row["expires_at"],
        watch_until=row["watch_until"],
    )


def refund(row: Row) -> Refund:
    return Refund(
        id=row["id"],
        payment_id=row["payment_id"],
        merchant_id=row["merchant_id"],
        merchant_refund_id=row["merchant_refund_id"],
        amount=row["amount"],
        currency=row["currency"],
        reason=row["reason"],
        status=RefundStatus(row["status"]),
        channel=row["channel"],
        channel_order_id=row["channel_order_id"],
        channel_refund_id=row["channel_refund_id"],
        channel_refund_no=row["channel_refund_no"],
        channel_code=row["channel_code"],
        failure=_failure(row),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        next_sync_at=row["next_sync_at"],
        sync_count=row["sync_count"],
        counts_on_payment=row["counts_on_payment"],
    )


def due_refund(row: Row) -> DueRefund:
    return DueRefund(refund=refund(row), payment_amount=row["payment_amount"])


def endpoint(row: Row) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row["id"],
        merchant_id=row["merchant_id"],
        url=row["url"],
        events=tuple(row["events"]),
        status=EndpointStatus(row["status"]),
        disabled_reason=row["disabled_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _callback_attempt(entry: Mapping[str, Any]) -> CallbackAttempt:
    """An entry of `list_deliveries`' jsonb attempt log (timestamps as ISO 8601 text)."""
    return CallbackAttempt(
        attempted_at=datetime.fromisoformat(entry["attempted_at"]),
        status_code=entry["status_code"],
        latency_ms=entry["latency_ms"],
        error=entry["error"],
        response_body=entry["response_body"],
    )


def delivery(row: Row) -> Delivery:
    return Delivery(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        merchant_id=row["merchant_id"],
        endpoint_id=row["endpoint_id"],
        url=row["url"],
        status=DeliveryStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
        attempt_log=tuple(_callback_attempt(a) for a in row["attempt_log"]),
    )


def claimed_delivery(row: Row) -> ClaimedDelivery:
    endpoint_status = row["endpoint_status"]
    previous = row["previous_secret_enc"]
    return ClaimedDelivery(
        id=row["id"],
        event_id=row["event_id"],
        merchant_id=row["merchant_id"],
        endpoint_id=row["endpoint_id"],
        url=row["url"],
        host=row["host"],
        attempts=row["attempts"],
        body=row["body"],
        request_id=row["request_id"],
        endpoint_status=None if endpoint_status is None else EndpointStatus(endpoint_status),
        secret_enc=bytes(row["secret_enc"]),
        previous_secret_enc=None if previous is None else bytes(previous),
    )


def merchant(row: Row) -> Merchant:
    return Merchant(id=row["id"], name=row["name"], created_at=row["created_at"])


def merchant_key(row: Row) -> MerchantKey:
    secret = row["secret_enc"]
    return MerchantKey(
        id=row["id"],
        merchant_id=row["merchant_id"],
        key_type=KeyType(row["key_type"]),
        secret_enc=None if secret is None else bytes(secret),
        public_key_pem=row["public_key_pem"],
    )


_RATE_LIMIT_FIELDS = ("payments_per_s", "refunds_per_s", "other_per_s")


def rate_limits(value: Mapping[str, float]) -> RateLimitOverrides:
    """The `merchants.rate_limits` object (its CHECK allows these members only)."""
    return RateLimitOverrides(**{name: value.get(name) for name in _RATE_LIMIT_FIELDS})


def rate_limits_json(limits: RateLimitOverrides) -> dict[str, float]:
    """What `merchants.rate_limits` stores: the overrides that are set."""
    values = {name: getattr(limits, name) for name in _RATE_LIMIT_FIELDS}
    return {name: value for name, value in values.items() if value is not None}


def merchant_access(row: Row) -> MerchantAccess:
    return MerchantAccess(
        merchant_id=row["merchant_id"],
        status=MerchantStatus(row["merchant_status"]),
        rate_limits=rate_limits(row["rate_limits"]),
    )


def nonce_generation(row: Row) -> NonceCacheGeneration:
    return NonceCacheGeneration(
        id=row["id"],
        redis_run_id=row["redis_run_id"],
        redis_replid=row["redis_replid"],
        opened_at=row["opened_at"],
        refuse_before=row["refuse_before"],
        nonces_recorded=row["nonces_recorded"],
    )


def idempotency_record(row: Row) -> IdempotencyRecord:
    body = row["response_body"]
    return IdempotencyRecord(
        method=row["method"],
        path=row["path"],
        request_hash=bytes(row["request_hash"]),
        state=IdempotencyState(row["state"]),
        response_status=row["response_status"],
        response_body=None if body is None else bytes(body),
    )


def day_payment(row: Row) -> DayPayment:
    return DayPayment(
        id=row["id"],
        merchant_id=row["merchant_id"],
        channel_order_id=row["channel_order_id"],
        amount=row["amount"],
    )


def day_refund(row: Row) -> DayRefund:
    return DayRefund(
        id=row["id"],
        payment_id=row["payment_id"],
        merchant_id=row["merchant_id"],
        channel_order_id=row["channel_order_id"],
        channel_refund_id=row["channel_refund_id"],
        amount=row["amount"],
    )


def found_attempt(row: Row) -> FoundAttempt:
    return FoundAttempt(
        channel=row["channel"],
        channel_order_id=row["channel_order_id"],
        attempt_status=AttemptStatus(row["attempt_status"]),
        payment_id=row["payment_id"],
        merchant_id=row["merchant_id"],
        amount=row["amount"],
        payment_status=PaymentStatus(row["payment_status"]),
        payment_channel_order_id=row["payment_channel_order_id"],
        paid_at=row["paid_at"],
    )


def reconciliation_run(row: Row) -> ReconciliationRun:
    return ReconciliationRun(
        id=row["id"],
        channel=row["channel"],
        day=row["day"],
        status=RunStatus(row["status"]),
        statement_lines=row["statement_lines"],
        our_records=row["our_records"],
        matched=row["matched"],
        missing_ours=row["missing_ours"],
        missing_channel=row["missing_channel"],
        amount_mismatch=row["amount_mismatch"],
        status_mismatch=row["status_mismatch"],
        other_channel=row["other_channel"],
        summary=row["summary"],
        error=row["error"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def reconciliation_line(row: Row) -> ReconciliationLine:
    return ReconciliationLine(
        seq=row["seq"],
        outcome=row["outcome"],
        kind=row["kind"],
        channel_order_id=row["channel_order_id"],
        channel_refund_id=row["channel_refund_id"],
        payment_id=row["payment_id"],
        refund_id=row["refund_id"],
        merchant_id=row["merchant_id"],
        our_amount=row["our_amount"],
        their_amount=row["their_amount"],
        our_status=row["our_status"],
        their_status=row["their_status"],
        channel_trade_no=row["channel_trade_no"],
        note=row["note"],
    )


def payment_group(row: Row) -> PaymentGroup:
    return PaymentGroup(
        row["merchant_id"], row["channel"], row["currency"], row["amount"], row["count"]
    )


def refund_group(row: Row) -> RefundGroup:
    return RefundGroup(
        row["merchant_id"], row["channel"], row["currency"], row["count"], row["amount"]
    )


def operator(row: Row) -> Operator:
    return Operator(
        id=row["id"],
        email=row["email"],
        role=Role(row["role"]),
        password_hash=row["password_hash"],
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
        last_sign_in_at=row["last_sign_in_at"],
    )


def operator_token(row: Row) -> OperatorToken:
    return OperatorToken(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def operator_session(row: Row) -> OperatorSession:
    """A row of `live_operator_session`: the session's columns, then its operator's."""
    return OperatorSession(
        id=row["session_id"],
        operator=operator(row),
        csrf_token=row["csrf_token"],
        created_at=row["session_created_at"],
        expires_at=row["expires_at"],
        last_seen_at=row["last_seen_at"],
    )


def sign_in_counter(row: Row) -> SignInCounter:
    return SignInCounter(
        key=row["key"],
        failures=row["failures"],
        first_at=row["first_at"],
        last_at=row["last_at"],
        locked_until=row["locked_until"],
        now=row["now"],
    )


def audit_entry(row: Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        actor=row["actor"],
        role=row["role"],
        action=row["action"],
        target=row["target"],
        before=row["before"],
        after=row["after"],
        reason=row["reason"],
        source_ip=row["source_ip"],
        request_id=row["request_id"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def merchant_summary(row: Row) -> MerchantSummary:
    return MerchantSummary(
        id=row["id"],
        name=row["name"],
        created_at=row["created_at"],
        active_keys=row["active_keys"],
        previous_webhook_secret_expires_at=row["previous_webhook_secret_expires_at"],
    )


def merchant_key_info(row: Row) -> MerchantKeyInfo:
    return MerchantKeyInfo(
        id=row["id"],
        merchant_id=row["merchant_id"],
        key_type=KeyType(row["key_type"]),
        status=KeyStatus(row["status"]),
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def event(row: Row) -> Event:
    return Event(
        id=row["id"],
        merchant_id=row["merchant_id"],
        type=row["type"],
        payment_id=row["payment_id"],
        refund_id=row["refund_id"],
        payload=row["payload"],
        created_at=row["created_at"],
        request_id=row["request_id"],
    )
