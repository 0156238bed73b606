"""Webhook endpoints, the delivery log, and the dispatcher's claim and finish statements.
Statements: `sql/webhooks.sql`."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from gateway.domain.records import (
    CallbackAttemptResult,
    ClaimedDelivery,
    Delivery,
    PutBack,
    QueuedDelivery,
    WebhookEndpoint,
)
from gateway.domain.states import DeliveryStatus
from gateway.store import rows
from gateway.store.db import Executor
from gateway.store.payments import notify_dispatchers
from gateway.store.queries import query

ABANDONED = (
    "abandoned: the dispatcher making this attempt stopped before recording its result"
    " (lease expired)"
)

_INSERT_ENDPOINT = query("insert_endpoint")
_LIST_ENDPOINTS = query("list_endpoints")
_COUNT_ENDPOINTS = query("count_endpoints")
_DELETE_ENDPOINT = query("delete_endpoint")
_DISABLE_ENDPOINT = query("disable_endpoint")
_LIST_DELIVERIES = query("list_deliveries")
_DELIVERY_STATUS = query("delivery_status")
_QUEUE_FAILED_DELIVERY = query("queue_failed_delivery")
_CLAIM_DUE_DELIVERIES = query("claim_due_deliveries")
_PUT_BACK_DELIVERIES = query("put_back_deliveries")
_FINISH_CALLBACK_ATTEMPTS = query("finish_callback_attempts")
_DUE_DELIVERY_STATS = query("due_delivery_stats")


async def insert_endpoint(
    db: Executor, endpoint_id: str, merchant_id: str, url: str, events: Sequence[str]
) -> WebhookEndpoint:
    row = await db.fetchrow(_INSERT_ENDPOINT, endpoint_id, merchant_id, url, list(events))
    assert row is not None
    return rows.endpoint(row)


async def list_endpoints(db: Executor, merchant_id: str) -> list[WebhookEndpoint]:
    """The merchant's endpoints that are not deleted, oldest first."""
    return [rows.endpoint(r) for r in await db.fetch(_LIST_ENDPOINTS, merchant_id)]


async def count_endpoints(db: Executor, merchant_id: str) -> int:
    return int(await db.fetchval(_COUNT_ENDPOINTS, merchant_id))


async def delete_endpoint(
    db: Executor, merchant_id: str, endpoint_id: str
) -> WebhookEndpoint | None:
    """None when the merchant has no such endpoint (or deleted it already)."""
    row = await db.fetchrow(_DELETE_ENDPOINT, endpoint_id, merchant_id)
    return None if row is None else rows.endpoint(row)


async def disable_endpoint(db: Executor, endpoint_id: str, reason: str) -> int:
    """Disable an endpoint (it answered 410 Gone) and fail its pending deliveries; returns how
    many were failed. Idempotent."""
    count = await db.fetchval(
        _DISABLE_ENDPOINT, endpoint_id, reason, f"endpoint disabled ({reason}): not sent"
    )
    return int(count)


async def list_deliveries(
    db: Executor,
    merchant_id: str,
    status: DeliveryStatus | None,
    event_id: str | None,
    limit: int,
    starting_after: str | None,
) -> list[Delivery]:
    """The merchant's deliveries, newest first, each with its attempts. `pending` includes the
    ones being attempted right now; `starting_after` is the last delivery id of the previous
    page."""
    found = await db.fetch(
        _LIST_DELIVERIES,
        merchant_id,
        None if status is None else status.value,
        event_id,
        limit,
        starting_after,
    )
    return [rows.delivery(r) for r in found]


async def delivery_status(
    db: Executor, merchant_id: str, delivery_id: str
) -> DeliveryStatus | None:
    """None when the merchant has no such delivery."""
    status = await db.fetchval(_DELIVERY_STATUS, delivery_id, merchant_id)
    return None if status is None else DeliveryStatus(status)


async def queue_failed_delivery(db: Executor, delivery_id: str) -> QueuedDelivery | None:
    """failed -> pending, due now; wake the dispatchers. None when it is no longer failed."""
    row = await db.fetchrow(_QUEUE_FAILED_DELIVERY, delivery_id)
    if row is None:
        return None
    await notify_dispatchers(db)
    return QueuedDelivery(id=row["id"], event_id=row["event_id"])


HOST_PATTERN = r"^[a-z][a-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^]/?#]*\]|[^:/?#]*)"
"""A delivery's host, as the claim computes it from the lower-cased URL (the first group): the
key of the per-host capacity. It only shares capacity out, so it reads the URL as written;
where a callback may go is `gateway.domain.webhooks.DestinationPolicy`'s to say."""


async def claim_due(
    db: Executor,
    limit: int,
    *,
    held_by_merchant: Mapping[str, int],
    held_by_host: Mapping[str, int],
    full_merchants: Collection[str],
    full_hosts: Collection[str],
    per_merchant: int,
    per_host: int,
    lease_s: float,
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries (pending ones whose time has come, and attempts whose
    lease ran out: their process died) with `FOR UPDATE SKIP LOCKED`, so concurrent dispatchers
    never take the same row. `held_by_*` is what this dispatcher holds already: no merchant
    ends up with more than `per_merchant`, no host with more than `per_host`; the merchants and
    hosts known to be full (`full_*`) are not even looked at. An abandoned attempt found here
    is recorded as such. Each comes with its host (`HOST_PATTERN`), its event's body and
    request id, and the merchant's sealed webhook secrets (the previous one only while its
    grace lasts)."""
    found = await db.fetch(
        _CLAIM_DUE_DELIVERIES,
        limit,
        list(full_merchants),
        list(full_hosts),
        list(held_by_merchant),
        list(held_by_merchant.values()),
        list(held_by_host),
        list(held_by_host.values()),
        per_merchant,
        per_host,
        lease_s,
        ABANDONED,
        HOST_PATTERN,
    )
    return [rows.claimed_delivery(r) for r in found]


async def put_back(db: Executor, deliveries: Sequence[PutBack]) -> set[str]:
    """Deliveries that found no free slot: pending again after their delay, their claim taken
    back (not counted as an attempt, nothing recorded), if their lease is still held. Returns
    the ids put back."""
    found = await db.fetch(
        _PUT_BACK_DELIVERIES,
        [d.delivery_id for d in deliveries],
        [d.attempt_no for d in deliveries],
        [d.delay_s for d in deliveries],
    )
    return {str(r["id"]) for r in found}


async def finish_attempts(db: Executor, results: Sequence[CallbackAttemptResult]) -> set[str]:
    """Record attempts and move their deliveries on, in one statement. A delivery changes only
    if its dispatcher still holds the lease (a later claim raised `attempts` past the fence);
    the attempt is recorded either way. Returns the ids of the deliveries that changed."""
    changed = await db.fetch(
        _FINISH_CALLBACK_ATTEMPTS,
        [r.delivery_id for r in results],
        [r.attempt_no for r in results],
        [r.status.value for r in results],
        [r.next_attempt_at for r in results],
        [r.status_code for r in results],
        [r.error for r in results],
        [r.attempted_at for r in results],
        [r.latency_ms for r in results],
        [r.response_body for r in results],
    )
    return {str(r["id"]) for r in changed}


async def due_stats(db: Executor) -> tuple[int, float]:
    """(deliveries due now, age in seconds of the oldest of them), leases run out included."""
    row = await db.fetchrow(_DUE_DELIVERY_STATS)
    assert row is not None
    return int(row["n"]), float(row["age"] or 0.0)
