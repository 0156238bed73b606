"""What operators read across merchants: payments with their attempts, events, deliveries and
refunds; refunds; merchants without their secrets; every merchant's deliveries; reconciliation
runs and their discrepancies. Statements: `sql/admin.sql`."""

from __future__ import annotations

from datetime import date, datetime

from gateway.domain.records import (
    Attempt,
    Delivery,
    Event,
    MerchantKeyInfo,
    MerchantSummary,
    Payment,
    ReconciliationLine,
    ReconciliationRun,
    Refund,
    WebhookEndpoint,
)
from gateway.domain.states import DeliveryStatus, PaymentStatus, RefundStatus, RunStatus
from gateway.store import rows
from gateway.store.db import Connection, Executor
from gateway.store.queries import query

_LIST_PAYMENTS = query("admin_list_payments")
_GET_PAYMENT = query("admin_get_payment")
_PAYMENT_ATTEMPTS = query("admin_payment_attempts")
_PAYMENT_EVENTS = query("admin_payment_events")
_PAYMENT_REFUNDS = query("admin_payment_refunds")
_PAYMENT_DELIVERIES = query("admin_payment_deliveries")
_LIST_REFUNDS = query("admin_list_refunds")
_LIST_DELIVERIES = query("admin_list_deliveries")
_DELIVERY = query("admin_delivery")
_LIST_MERCHANTS = query("admin_list_merchants")
_GET_MERCHANT = query("admin_get_merchant")
_MERCHANT_KEYS = query("admin_merchant_keys")
_MERCHANT_KEY = query("admin_merchant_key")
_MERCHANT_ENDPOINTS = query("admin_merchant_endpoints")
_LIST_RUNS = query("admin_list_runs")
_GET_RUN = query("admin_get_run")
_RUN_DISCREPANCIES = query("admin_run_discrepancies")


# ---- payments -------------------------------------------------------------------------------


async def list_payments(
    db: Executor,
    *,
    merchant_id: str | None,
    status: PaymentStatus | None,
    channel: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
    limit: int,
    starting_after: str | None,
) -> list[Payment]:
    found = await db.fetch(
        _LIST_PAYMENTS,
        merchant_id,
        None if status is None else status.value,
        channel,
        created_from,
        created_to,
        limit,
        starting_after,
    )
    return [rows.payment(r) for r in found]


async def get_payment(db: Executor, payment_id: str) -> Payment | None:
    row = await db.fetchrow(_GET_PAYMENT, payment_id)
    return None if row is None else rows.payment(row)


async def payment_attempts(db: Executor, payment_id: str) -> list[Attempt]:
    return [rows.attempt(r) for r in await db.fetch(_PAYMENT_ATTEMPTS, payment_id)]


async def payment_events(db: Executor, payment_id: str) -> list[Event]:
    return [rows.event(r) for r in await db.fetch(_PAYMENT_EVENTS, payment_id)]


async def payment_refunds(db: Executor, payment_id: str) -> list[Refund]:
    return [rows.refund(r) for r in await db.fetch(_PAYMENT_REFUNDS, payment_id)]


async def list_refunds(
    db: Executor,
    *,
    status: RefundStatus | None,
    merchant_id: str | None,
    payment_id: str | None,
    limit: int,
    starting_after: str | None,
) -> list[Refund]:
    found = await db.fetch(
        _LIST_REFUNDS,
        None if status is None else status.value,
        merchant_id,
        payment_id,
        limit,
        starting_after,
    )
    return [rows.refund(r) for r in found]


async def payment_deliveries(db: Executor, payment_id: str) -> list[Delivery]:
    """The deliveries of the payment's events (its refunds' too), each with its attempts."""
    return [rows.delivery(r) for r in await db.fetch(_PAYMENT_DELIVERIES, payment_id)]


# ---- deliveries -----------------------------------------------------------------------------


async def list_deliveries(
    db: Executor,
    *,
    status: DeliveryStatus | None,
    merchant_id: str | None,
    event_id: str | None,
    limit: int,
    starting_after: str | None,
) -> list[Delivery]:
    found = await db.fetch(
        _LIST_DELIVERIES,
        None if status is None else status.value,
        merchant_id,
        event_id,
        limit,
        starting_after,
    )
    return [rows.delivery(r) for r in found]


async def lock_delivery(conn: Connection, delivery_id: str) -> tuple[str, DeliveryStatus] | None:
    """(merchant id, status) of any merchant's delivery, locked until the transaction ends."""
    row = await conn.fetchrow(_DELIVERY, delivery_id)
    return None if row is None else (str(row["merchant_id"]), DeliveryStatus(row["status"]))


# ---- merchants ------------------------------------------------------------------------------


async def list_merchants(
    db: Executor, limit: int, starting_after: str | None
) -> list[MerchantSummary]:
    found = await db.fetch(_LIST_MERCHANTS, limit, starting_after)
    return [rows.merchant_summary(r) for r in found]


async def get_merchant(db: Executor, merchant_id: str) -> MerchantSummary | None:
    row = await db.fetchrow(_GET_MERCHANT, merchant_id)
    return None if row is None else rows.merchant_summary(row)


async def merchant_keys(db: Executor, merchant_id: str) -> list[MerchantKeyInfo]:
    return [rows.merchant_key_info(r) for r in await db.fetch(_MERCHANT_KEYS, merchant_id)]


async def merchant_key(db: Executor, key_id: str) -> MerchantKeyInfo | None:
    row = await db.fetchrow(_MERCHANT_KEY, key_id)
    return None if row is None else rows.merchant_key_info(row)


async def merchant_endpoints(db: Executor, merchant_id: str) -> list[WebhookEndpoint]:
    return [rows.endpoint(r) for r in await db.fetch(_MERCHANT_ENDPOINTS, merchant_id)]


# ---- reconciliation -------------------------------------------------------------------------


async def list_runs(
    db: Executor,
    *,
    channel: str | None,
    day: date | None,
    status: RunStatus | None,
    limit: int,
    starting_after: str | None,
) -> list[ReconciliationRun]:
    found = await db.fetch(
        _LIST_RUNS,
        channel,
        day,
        None if status is None else status.value,
        limit,
        starting_after,
    )
    return [rows.reconciliation_run(r) for r in found]


async def get_run(db: Executor, run_id: str) -> ReconciliationRun | None:
    row = await db.fetchrow(_GET_RUN, run_id)
    return None if row is None else rows.reconciliation_run(row)


async def run_discrepancies(
    db: Executor, run_id: str, limit: int, after_seq: int | None
) -> list[ReconciliationLine]:
    found = await db.fetch(_RUN_DISCREPANCIES, run_id, limit, after_seq)
    return [rows.reconciliation_line(r) for r in found]
