"""Webhook endpoints and the delivery log as merchants manage them (API.md §1.6): subscribe (at
most MAX_ENDPOINTS per merchant, counted under the merchant's row lock), list, delete; list the
deliveries with their attempts; send a failed delivery again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.domain.errors import InvalidState, NotFound
from gateway.domain.ids import new_id
from gateway.domain.records import Delivery, QueuedDelivery, WebhookEndpoint
from gateway.domain.states import DeliveryStatus
from gateway.store import merchants as merchant_store
from gateway.store import webhooks as store
from gateway.store.db import Pool

MAX_ENDPOINTS = 16


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    deliveries: list[Delivery]
    has_more: bool


class WebhookService:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def create_endpoint(
        self, merchant_id: str, url: str, events: Sequence[str]
    ) -> WebhookEndpoint:
        async with self.pool.acquire() as conn, conn.transaction():
            # concurrent subscriptions of one merchant count one after the other
            await merchant_store.lock_merchant(conn, merchant_id)
            if await store.count_endpoints(conn, merchant_id) >= MAX_ENDPOINTS:
                raise InvalidState(f"A merchant may subscribe at most {MAX_ENDPOINTS} endpoints.")
            return await store.insert_endpoint(conn, new_id("we"), merchant_id, url, events)

    async def list_endpoints(self, merchant_id: str) -> list[WebhookEndpoint]:
        return await store.list_endpoints(self.pool, merchant_id)

    async def delete_endpoint(self, merchant_id: str, endpoint_id: str) -> WebhookEndpoint:
        deleted = await store.delete_endpoint(self.pool, merchant_id, endpoint_id)
        if deleted is None:
            raise NotFound.of("webhook endpoint")
        return deleted

    async def list_deliveries(
        self,
        merchant_id: str,
        *,
        status: DeliveryStatus | None,
        event_id: str | None,
        limit: int,
        starting_after: str | None,
    ) -> DeliveryPage:
        """Newest first; `pending` includes the ones being attempted now."""
        found = await store.list_deliveries(
            self.pool, merchant_id, status, event_id, limit + 1, starting_after
        )
        return DeliveryPage(found[:limit], has_more=len(found) > limit)

    async def retry_delivery(self, merchant_id: str, delivery_id: str) -> QueuedDelivery:
        """One more attempt, now, of a failed delivery."""
        status = await store.delivery_status(self.pool, merchant_id, delivery_id)
        if status is None:
            raise NotFound.of("webhook delivery")
        queued = None
        if status is DeliveryStatus.FAILED:  # not one under way (delivering -> pending too)
            queued = await store.queue_failed_delivery(self.pool, delivery_id)
        if queued is None:  # named as the merchant sees it: one under way is pending
            raise InvalidState(
                f"Only failed deliveries can be retried (this one is {status.public.value})."
            )
        return queued
