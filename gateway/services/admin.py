"""What operators read and do across merchants, behind `/admin/…` (and the console): payments
with everything that happened to them, refunds, merchants without their secrets and their
keys, every merchant's deliveries and their retry, reconciliation runs and their discrepancies, a
channel's circuit reset and a routing reload. Each change is audited: in its own transaction
where it is a database change, else (Redis, the rules file) in a transaction opened around
it, so that a change that fails leaves no entry. A routing reload is the exception: the
rules swap in memory at once, and its entries (the operator's, and the file this process
loaded or refused) are written right after."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Generic, TypeVar

from gateway.auth.secretbox import SecretBox
from gateway.domain import admin_views
from gateway.domain.admin_views import Json
from gateway.domain.errors import InvalidState, NotFound, ServiceUnavailable
from gateway.domain.records import (
    Delivery,
    KeyType,
    MerchantSummary,
    Payment,
    QueuedDelivery,
    ReconciliationLine,
    ReconciliationRun,
    Refund,
)
from gateway.domain.states import DeliveryStatus, PaymentStatus, RefundStatus, RunStatus
from gateway.services import audit, merchants
from gateway.services.audit import Actor
from gateway.services.channels import ChannelRegistry
from gateway.services.merchants import IssuedKey
from gateway.store import admin as store
from gateway.store import webhooks as webhook_store
from gateway.store.db import Pool
from routing.health import effective_state

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool

    @classmethod
    def of(cls, found: list[T], limit: int) -> Page[T]:
        """`found` was read with `limit + 1`: the one past the limit says there is more."""
        return cls(found[:limit], has_more=len(found) > limit)


@dataclass(frozen=True, slots=True)
class RunDetail:
    run: ReconciliationRun
    discrepancies: Page[ReconciliationLine]


class AdminService:
    def __init__(self, pool: Pool, box: SecretBox | None, channels: ChannelRegistry) -> None:
        self.pool = pool
        self.box = box
        self.channels = channels

    # ---- payments ---------------------------------------------------------------------------

    async def list_payments(
        self,
        *,
        merchant_id: str | None,
        status: PaymentStatus | None,
        channel: str | None,
        created_from: datetime | None,
        created_to: datetime | None,
        limit: int,
        starting_after: str | None,
    ) -> Page[Payment]:
        found = await store.list_payments(
            self.pool,
            merchant_id=merchant_id,
            status=status,
            channel=channel,
            created_from=created_from,
            created_to=created_to,
            limit=limit + 1,
            starting_after=starting_after,
        )
        return Page.of(found, limit)

    async def payment_detail(self, payment_id: str) -> Json:
        """The payment with its attempts, events, deliveries (each with its attempts) and
        refunds, read in one snapshot."""
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            payment = await store.get_payment(conn, payment_id)
            if payment is None:
                raise NotFound.of("payment")
            return admin_views.payment_detail(
                payment,
                await store.payment_attempts(conn, payment_id),
                await store.payment_events(conn, payment_id),
                await store.payment_deliveries(conn, payment_id),
                await store.payment_refunds(conn, payment_id),
            )

    async def list_refunds(
        self,
        *,
        status: RefundStatus | None,
        merchant_id: str | None,
        payment_id: str | None,
        limit: int,
        starting_after: str | None,
    ) -> Page[Refund]:
        found = await store.list_refunds(
            self.pool,
            status=status,
            merchant_id=merchant_id,
            payment_id=payment_id,
            limit=limit + 1,
            starting_after=starting_after,
        )
        return Page.of(found, limit)

    # ---- deliveries -------------------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        status: DeliveryStatus | None,
        merchant_id: str | None,
        event_id: str | None,
        limit: int,
        starting_after: str | None,
    ) -> Page[Delivery]:
        found = await store.list_deliveries(
            self.pool,
            status=status,
            merchant_id=merchant_id,
            event_id=event_id,
            limit=limit + 1,
            starting_after=starting_after,
        )
        return Page.of(found, limit)

    async def retry_delivery(self, delivery_id: str, actor: Actor) -> QueuedDelivery:
        """One more attempt, now, of any merchant's failed delivery."""
        async with self.pool.acquire() as conn, conn.transaction():
            found = await store.lock_delivery(conn, delivery_id)
            if found is None:
                raise NotFound.of("webhook delivery")
            merchant_id, status = found
            queued = None
            if status is DeliveryStatus.FAILED:
                queued = await webhook_store.queue_failed_delivery(conn, delivery_id)
            if queued is None:
                raise InvalidState(
                    f"Only failed deliveries can be retried (this one is {status.value})."
                )
            await audit.record(
                conn,
                actor,
                "delivery.retry",
                f"delivery:{delivery_id}",
                before={"status": status.value, "merchant_id": merchant_id},
                after={"status": DeliveryStatus.PENDING.value, "merchant_id": merchant_id},
            )
        return queued

    # ---- merchants --------------------------------------------------------------------------

    async def list_merchants(self, limit: int, starting_after: str | None) -> Page[MerchantSummary]:
        return Page.of(await store.list_merchants(self.pool, limit + 1, starting_after), limit)

    async def merchant_detail(self, merchant_id: str) -> Json:
        merchant = await store.get_merchant(self.pool, merchant_id)
        if merchant is None:
            raise NotFound.of("merchant")
        keys = await store.merchant_keys(self.pool, merchant_id)
        endpoints = await store.merchant_endpoints(self.pool, merchant_id)
        return admin_views.merchant_detail(merchant, keys, endpoints)

    def _box(self) -> SecretBox:
        if self.box is None:
            raise ServiceUnavailable("GATEWAY_MASTER_KEY is not set: no key can be issued.")
        return self.box

    async def rotate_merchant_key(
        self, merchant_id: str, key_type: KeyType, public_key_pem: str | None, actor: Actor
    ) -> IssuedKey:
        """A second active key (the answer holds its secret, shown once)."""
        if await store.get_merchant(self.pool, merchant_id) is None:
            raise NotFound.of("merchant")
        return await merchants.rotate_key(
            self.pool, self._box(), merchant_id, key_type, public_key_pem, audit_as=actor
        )

    async def revoke_merchant_key(
        self, merchant_id: str, key_id: str, actor: Actor, reason: str
    ) -> None:
        key = await store.merchant_key(self.pool, key_id)
        if key is None or key.merchant_id != merchant_id:
            raise NotFound.of("key")
        try:
            await merchants.revoke_key(self.pool, key_id, audit_as=actor, reason=reason)
        except merchants.MerchantError:
            raise InvalidState(f"Key {key_id} is revoked already.") from None

    # ---- reconciliation ---------------------------------------------------------------------

    async def list_runs(
        self,
        *,
        channel: str | None,
        day: date | None,
        status: RunStatus | None,
        limit: int,
        starting_after: str | None,
    ) -> Page[ReconciliationRun]:
        found = await store.list_runs(
            self.pool,
            channel=channel,
            day=day,
            status=status,
            limit=limit + 1,
            starting_after=starting_after,
        )
        return Page.of(found, limit)

    async def run_detail(self, run_id: str, limit: int, after_seq: int | None) -> RunDetail:
        """A run and a page of its discrepancies (its lines that did not match)."""
        run = await store.get_run(self.pool, run_id)
        if run is None:
            raise NotFound.of("reconciliation run")
        lines = await store.run_discrepancies(self.pool, run_id, limit + 1, after_seq)
        return RunDetail(run, Page.of(lines, limit))

    # ---- channels and routing ---------------------------------------------------------------

    async def reset_channel(self, name: str, actor: Actor) -> None:
        """Close a channel's circuit by hand, for every process (an operator who knows it has
        recovered)."""
        if name not in self.channels.routing.config.channels:
            raise NotFound(f"No channel {name!r} in the rules in force.")
        health, _ = await self.channels.health.snapshot([name])
        breaker = self.channels.routing.config.settings.breaker
        before = (
            effective_state(health[name], time.time(), breaker).value
            if name in health
            else "closed"
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await audit.record(
                conn,
                actor,
                "channel.reset",
                f"channel:{name}",
                before={"circuit": before},
                after={"circuit": "closed"},
            )
            await self.channels.health.reset(name)  # commits only once this is done

    async def reload_routing(self, actor: Actor) -> bool:
        """Re-read the routing file now (a refused content is validated again); the
        operator's reload and what it loaded or refused are audited together."""
        watch = self.channels.file_watch
        changed = self.channels.reload()
        events = watch.take()
        holder = self.channels.holder
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await audit.record_file_events(conn, audit.process_actor(actor.request_id), events)
                await audit.record(
                    conn,
                    actor,
                    "routing.reload",
                    str(holder.path),
                    after={
                        "changed": changed,
                        "version": holder.current.version,
                        "stale": holder.stale,
                    },
                )
        except BaseException:
            watch.put_back(events)  # the next flush writes what this process loaded
            raise
        return changed
