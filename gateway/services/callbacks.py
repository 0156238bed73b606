"""The callback dispatcher: delivers the outbox rows (`callback_deliveries`) to merchants.

Deliveries are claimed in PostgreSQL with `FOR UPDATE SKIP LOCKED` and a lease, so any number of
gateway processes can run dispatchers, and a delivery whose process died mid-attempt is claimed
again when its lease runs out (at least once; never lost). Woken by LISTEN/NOTIFY when a
transaction writes deliveries, and when one of its own attempts ends; polling is the fallback.

Capacity, shared fairly: at most `concurrency` deliveries claimed (so at most that many attempts
in flight) per process; at most `GATEWAY_CALLBACK_MAX_PER_MERCHANT` attempts in flight per
merchant and `GATEWAY_CALLBACK_MAX_PER_HOST` per destination host, all processes together
(`SlotLeases`: leases in Redis), so that one merchant's many slow endpoints cannot hold every
slot. A claim takes no more of a
merchant or host than this process may still run, and skips the ones it knows to be full; a
claimed delivery that finds no shared slot is put back, due again in about `PUT_BACK_S`, as if
it had not been claimed (not an attempt). With Redis away each process keeps the caps by itself.
`timeout_s` per attempt from name resolution to the last byte read; response bodies read up to
`BODY_CAP` bytes (kept in the delivery log: only ever from a destination that was allowed); no
redirects.

Destinations (`check_url`, `gateway.domain.webhooks.DestinationPolicy`): checked again before
every attempt, as the HTTP client reads the URL. Names resolve only in the dispatcher's own
resolver, at connection time: unless private destinations are allowed it refuses a name any
of whose addresses is not public, and the client connects only to the addresses it returned
(no second lookup, so a name cannot pass the check and then resolve elsewhere). What the
merchant's delivery log says of a failure is its kind only ("connection failed", "timed out
after 10 s"): a refused resolution reads like one that failed, so the log is no DNS or
port-scan oracle; the detail is logged for operators (`callback_attempt_failed`,
`callback_destination_refused`). Requests go through the dispatcher's own HTTP session: no
cookies, no proxy from the environment.
Each request carries, beside the Standard Webhooks headers, `X-Request-Id`: the request id of
the merchant request, channel notification or background job that caused the event (none for
events older than `events.request_id`); the delivery's logs carry it too."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import aiohttp
import redis.asyncio as aioredis
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from prometheus_client import Counter
from yarl import URL

from gateway import logs, metrics
from gateway.auth.secretbox import SecretBox
from gateway.domain import webhooks
from gateway.domain.records import CallbackAttemptResult, ClaimedDelivery, PutBack
from gateway.domain.states import DeliveryStatus, EndpointStatus, delivery_can
from gateway.domain.webhooks import Destination, DestinationPolicy, DestinationRefused
from gateway.services.callback_slots import Full, SlotLeases
from gateway.settings import Settings
from gateway.store import webhooks as store
from gateway.store.db import Pool
from gateway.store.payments import CALLBACK_CHANNEL

log = structlog.get_logger("callbacks")

BODY_CAP = 2048
"""Bytes of a receiver's response body read and kept with the attempt (only ever from a
destination that was allowed: a refused one is never connected to)."""
ERROR_CAP = 500
GAUGES_EVERY_S = 5.0
PUT_BACK_S = 1.0
"""About how long (±20 %) a delivery that found no free slot waits before it is due again, and
this process leaves the full merchant or host out of its claims."""
SLOT_MARGIN_S = 5.0
"""A slot's lease outlasts the attempt's timeout by this much."""

DELIVERIES = Counter(
    "gateway_callback_deliveries_total",
    "Callback deliveries ended, by outcome (succeeded; failed: schedule exhausted; gone: 410;"
    " refused: destination not allowed; endpoint_disabled: not sent)",
    ["outcome"],
)

__all__ = ["DestinationRefused", "check_url"]


def check_url(url: str, policy: DestinationPolicy) -> Destination:
    """The policy's verdict on a callback URL, as the HTTP client will read it: the host and
    port the policy checked must be the ones aiohttp connects to (its URL parser and IDNA are
    yarl's), else the URL is refused. Raises DestinationRefused."""
    destination = policy.check_url(url)
    try:
        target = URL(url)
    except ValueError:
        raise DestinationRefused("not a valid URL") from None
    if (target.raw_host or "").lower() != destination.host or target.port != destination.port:
        raise DestinationRefused("the URL's host does not read the same to every parser")
    return destination


class NonPublicAddress(OSError):
    """Raised by the resolver: a name with an address callbacks may not reach. An OSError, so
    that aiohttp reports it as the connection's cause (`ClientConnectorError.os_error`)."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        super().__init__(f"{host} resolves to a non-public address")
        self.host = host
        self.addresses = addresses


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, and refuses a name any of whose addresses the
    policy does not allow. aiohttp connects only to the addresses returned here, and calls no
    resolver for an IP literal (which `check_url` has checked): what is connected to was
    checked."""

    def __init__(self, policy: DestinationPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if any(not self._policy.allows_address(r["host"]) for r in results):
            raise NonPublicAddress(host, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


def _non_public(exc: BaseException) -> NonPublicAddress | None:
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, NonPublicAddress):
        return exc.os_error
    return None


def failure_kind(exc: BaseException, timeout_s: float) -> str:
    """What the merchant's delivery log says of an attempt that got no answer: the kind of
    failure, never the client's message (addresses, ports, the resolver's words would make the
    log a DNS and port-scan oracle). A name refused after resolution is a connection that
    failed, like one that did not resolve."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate not accepted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed before an answer"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "not a valid HTTP answer"
    return "delivery failed"


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one exchange with a destination gave."""

    started_at: datetime
    status: int | None
    error: str | None
    retry_after: float | None
    latency_ms: int
    text: str | None
    refused: bool
    """The name resolved to an address callbacks may not reach (nothing was sent)."""


T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Writes the dispatcher's outcomes (attempt results, put-backs) in batches: the ones that
    come in while a write is under way go out together in the next one (one statement and one
    commit for many, none waiting for a timer). Bounded by the dispatcher's claims: each
    delivery it holds waits here until its own outcome is written, and only then frees its
    place."""

    def __init__(
        self, write: Callable[[list[T]], Awaitable[set[str]]], key: Callable[[T], str]
    ) -> None:
        """`write` stores a batch and returns the keys of the deliveries it moved on."""
        self._write_batch = write
        self._key = key
        self._waiting: list[tuple[T, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, item: T) -> bool:
        """Write one outcome; True when its delivery moved on (the lease was held)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        batch: list[tuple[T, asyncio.Future[bool]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    moved = await self._write_batch([item for item, _ in batch])
                except Exception as exc:  # each waiter fails; the leases will run out
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for item, future in batch:
                        if not future.done():
                            future.set_result(self._key(item) in moved)
                batch = []
        finally:
            self._writer = None
            unwritten, self._waiting = batch + self._waiting, []
            for _, future in unwritten:  # cancelled: nothing will write these
                if not future.done():
                    future.cancel()


class CallbackDispatcher:
    def __init__(
        self,
        pool: Pool,
        box: SecretBox | None,
        slots: SlotLeases,
        *,
        schedule: tuple[float, ...],
        destinations: DestinationPolicy,
        timeout_s: float,
        poll_s: float,
        concurrency: int,
    ) -> None:
        """Callbacks go out through the dispatcher's own HTTP session (`session`), opened
        while it runs (see the module's docstring); `slots` holds the per-merchant and
        per-host caps of every process together."""
        self.pool = pool
        self.box = box
        self.slots = slots
        self.schedule = schedule
        self.destinations = destinations
        """Where callbacks may go: also what the API checks URLs against (API.md §1.6)."""
        self.timeout_s = timeout_s
        self.lease_s = 2 * timeout_s + 5
        """How long a claimed delivery is ours: it waits for its slot (at most a second: see
        `callback_slots`), makes its attempt (at most `timeout_s`), then writes the result."""
        self.poll_s = poll_s
        self.concurrency = concurrency
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._held_by_merchant: Tally[str] = Tally()
        self._held_by_host: Tally[str] = Tally()
        """Deliveries claimed and not yet finished, per merchant and per host."""
        self._full_until: dict[tuple[Full, str], float] = {}
        """(merchant or host, its id) -> until when (monotonic) the shared cap was found full:
        left out of this process's claims meanwhile."""
        self._session: aiohttp.ClientSession | None = None
        self._results = GroupCommit[CallbackAttemptResult](
            lambda batch: store.finish_attempts(pool, batch), lambda r: r.delivery_id
        )
        self._put_backs = GroupCommit[PutBack](
            lambda batch: store.put_back(pool, batch), lambda p: p.delivery_id
        )
        self.attempts_started = 0
        """Attempts this dispatcher has made, refused ones included, put-backs not
        (introspection; the metrics count them all)."""
        self.put_backs = 0
        """Claimed deliveries this dispatcher put back for want of a shared slot."""

    @classmethod
    def from_settings(
        cls, settings: Settings, pool: Pool, box: SecretBox | None, redis: aioredis.Redis
    ) -> CallbackDispatcher:
        """The dispatcher `gateway.app` runs: its settings, the shared caps in `redis`."""
        slots = SlotLeases(
            redis,
            settings.redis_prefix,
            per_merchant=settings.callback_max_per_merchant,
            per_host=settings.callback_max_per_host,
        )
        return cls(
            pool,
            box,
            slots,
            schedule=settings.webhook_retry_schedule,
            destinations=DestinationPolicy.of(
                settings.callback_allow_private, settings.callback_allowed_ports
            ),
            timeout_s=settings.callback_timeout_s,
            poll_s=settings.dispatcher_poll_s,
            concurrency=settings.dispatcher_concurrency,
        )

    def wake(self, *_: object) -> None:
        self._wake.set()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """The HTTP session callbacks are sent with, open while the dispatcher runs."""
        policy = self.destinations
        connector = aiohttp.TCPConnector(
            limit=self.concurrency,
            limit_per_host=0,
            resolver=None if policy.allow_private else PublicOnlyResolver(policy),
        )
        async with aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
        ) as session:
            self._session = session
            try:
                yield session
            finally:
                self._session = None

    async def run(self, stop: asyncio.Event) -> None:
        async with self.session():
            listener = asyncio.create_task(self._listen(stop))
            last_gauges = 0.0
            try:
                while not stop.is_set():
                    self._wake.clear()
                    claimed = 0
                    try:
                        claimed = await self.dispatch_due()
                        if time.monotonic() - last_gauges > GAUGES_EVERY_S:
                            last_gauges = time.monotonic()
                            await self.update_gauges()
                    except Exception as exc:  # the database is away: poll again later
                        log.warning("dispatcher_db_error", error=repr(exc)[:ERROR_CAP])
                    if claimed:
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
            finally:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
                if self._tasks:  # let the attempts in flight finish and record their results
                    await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self, stop: asyncio.Event) -> None:
        """Hold a LISTEN connection; reconnect when it drops (polling covers the gap)."""
        while not stop.is_set():
            try:
                async with self.pool.acquire() as conn:
                    await conn.add_listener(CALLBACK_CHANNEL, self.wake)
                    try:
                        while not conn.is_closed():
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(stop.wait(), 1)
                            if stop.is_set():
                                break
                    finally:
                        if not conn.is_closed():
                            await conn.remove_listener(CALLBACK_CHANNEL, self.wake)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dispatcher_listen_failed", error=repr(exc)[:ERROR_CAP])
                await asyncio.sleep(1)

    async def dispatch_due(self) -> int:
        """Claim what is due, up to the free capacity, and start delivering it. Returns how many
        were claimed (0 when full: an attempt's end wakes the loop)."""
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        now = time.monotonic()
        self._full_until = {k: t for k, t in self._full_until.items() if t > now}
        full = {
            kind: {key for (k, key) in self._full_until if k == kind}
            | {key for key, n in held.items() if n >= cap}
            for kind, held, cap in (
                ("merchant", self._held_by_merchant, self.slots.per_merchant),
                ("host", self._held_by_host, self.slots.per_host),
            )
        }
        claimed = await store.claim_due(
            self.pool,
            free,
            held_by_merchant=self._held_by_merchant,
            held_by_host=self._held_by_host,
            full_merchants=full["merchant"],
            full_hosts=full["host"],
            per_merchant=self.slots.per_merchant,
            per_host=self.slots.per_host,
            lease_s=self.lease_s,
        )
        for delivery in claimed:
            self._held_by_merchant[delivery.merchant_id] += 1
            self._held_by_host[delivery.host] += 1
            task = asyncio.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        # each delivery is a task of its own (dispatch_due): its logs carry the request id of
        # what caused the event, as its requests do
        # (None for an event written before events had request ids)
        logs.bind_request_id(delivery.request_id)
        try:
            await self._attempt(delivery)
        except Exception:  # the lease runs out and the delivery is attempted again
            log.exception("callback_attempt_crashed", delivery_id=delivery.id)
        finally:
            for held, key in (
                (self._held_by_merchant, delivery.merchant_id),
                (self._held_by_host, delivery.host),
            ):
                held[key] -= 1
                if held[key] <= 0:
                    del held[key]
            self._wake.set()

    def _secrets(self, delivery: ClaimedDelivery) -> tuple[str, list[str]]:
        if self.box is None:
            raise ValueError("GATEWAY_MASTER_KEY is not set: cannot sign callbacks")
        merchant_id = delivery.merchant_id
        current = self.box.open(delivery.secret_enc, merchant_id)
        previous = delivery.previous_secret_enc
        return current, [] if previous is None else [self.box.open(previous, merchant_id)]

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        if delivery.endpoint_id is not None and delivery.endpoint_status is not (
            EndpointStatus.ACTIVE
        ):
            await self._record(
                delivery,
                datetime.now(UTC),
                DeliveryStatus.FAILED,
                error="endpoint disabled: not sent",
            )
            DELIVERIES.labels(outcome="endpoint_disabled").inc()
            return
        try:
            check_url(delivery.url, self.destinations)
            secret, previous = self._secrets(delivery)
        except DestinationRefused as exc:
            await self._refused(delivery, datetime.now(UTC), exc)
            return
        except ValueError as exc:  # cannot sign: counts as a failed attempt, retried
            reason = f"cannot sign: {exc}"
            await self._after(delivery, datetime.now(UTC), None, reason, None, None, None)
            return
        slot = await self.slots.acquire(
            delivery.merchant_id, delivery.host, self.timeout_s + SLOT_MARGIN_S
        )
        if slot.full is not None:
            await self._put_back(delivery, slot.full)
            return
        try:
            answer = await self._exchange(delivery, secret, previous)
        except BaseException:  # cancelled: give the slot back all the same
            await self.slots.release(slot)
            raise
        # the slot goes back while the result is written: neither waits for the other (a slow
        # or absent Redis does not delay the result)
        await asyncio.gather(self.slots.release(slot), self._answered(delivery, answer))

    async def _answered(self, delivery: ClaimedDelivery, answer: _Answer) -> None:
        metrics.CALLBACK_LATENCY.observe(answer.latency_ms / 1000)
        await self._after(
            delivery,
            answer.started_at,
            answer.status,
            answer.error,
            answer.retry_after,
            answer.latency_ms,
            answer.text,
            answer.refused,
        )
        log.debug(
            "callback_attempted",
            delivery_id=delivery.id,
            status=answer.status,
            latency_ms=answer.latency_ms,
        )

    async def _exchange(
        self, delivery: ClaimedDelivery, secret: str, previous: list[str]
    ) -> _Answer:
        """Send the callback and read the answer (status, Retry-After, the body up to
        `BODY_CAP`), or say what went wrong: the merchant's words in `error`, the detail in the
        logs."""
        body = delivery.body.encode()
        status: int | None = None
        error: str | None = None
        text: str | None = None
        retry_after: float | None = None
        refusal: NonPublicAddress | None = None
        assert self._session is not None, "the dispatcher's session is open while it runs"
        started_at, started = datetime.now(UTC), time.monotonic()
        try:
            headers = webhooks.headers(
                secret, delivery.event_id, int(time.time()), body, previous, delivery.request_id
            )
            async with (
                asyncio.timeout(self.timeout_s),
                self._session.post(
                    delivery.url, data=body, headers=headers, allow_redirects=False
                ) as resp,
            ):
                status = resp.status
                retry_after = webhooks.parse_retry_after(resp.headers.get("Retry-After"))
                text = await self._read_capped(resp)
        except Exception as exc:  # whatever went wrong on the way is this attempt's error
            refusal = _non_public(exc)
            if status is None:
                error = failure_kind(exc, self.timeout_s)
            else:  # the status line arrived, the body did not: the status stands
                error = "reading the response failed"
            if refusal is not None:
                log.warning(
                    "callback_destination_refused",
                    delivery_id=delivery.id,
                    host=refusal.host,
                    addresses=refusal.addresses,
                    reason="resolves to a non-public address",
                )
            else:
                log.info(
                    "callback_attempt_failed",
                    delivery_id=delivery.id,
                    status=status,
                    error=error,
                    detail=f"{type(exc).__name__}: {exc}"[:ERROR_CAP],
                )
        latency_ms = int((time.monotonic() - started) * 1000)
        return _Answer(
            started_at, status, error, retry_after, latency_ms, text, refusal is not None
        )

    async def _put_back(self, delivery: ClaimedDelivery, full: Full) -> None:
        """No free slot (the shared cap of the merchant or of the host): due again shortly, not
        an attempt; this process leaves the full one out of its claims meanwhile."""
        delay = PUT_BACK_S * random.uniform(0.8, 1.2)
        key = delivery.merchant_id if full == "merchant" else delivery.host
        self._full_until[(full, key)] = time.monotonic() + delay
        put_back = PutBack(delivery.id, delivery.attempts, delay)
        self.put_backs += 1
        if not await self._put_backs.record(put_back):
            log.warning("callback_lease_lost", delivery_id=delivery.id, hint="not put back")
        log.debug("callback_put_back", delivery_id=delivery.id, full=full, delay_s=round(delay, 3))

    @staticmethod
    async def _read_capped(resp: aiohttp.ClientResponse) -> str:
        data = bytearray()
        while len(data) < BODY_CAP:
            chunk = await resp.content.read(BODY_CAP - len(data))
            if not chunk:
                break
            data += chunk
        return _text(data.decode("utf-8", "replace"))

    async def _after(
        self,
        delivery: ClaimedDelivery,
        started_at: datetime,
        status: int | None,
        error: str | None,
        retry_after: float | None,
        latency_ms: int | None,
        text: str | None,
        refused: bool = False,
    ) -> None:
        """Apply the retry policy to an attempt's answer and record it. `refused`: the name
        resolved to an address callbacks may not reach (retried like a failed connection, which
        is what the merchant sees; counted apart for operators)."""
        outcome = webhooks.classify(status, delivery.attempts, self.schedule, retry_after)
        bound = log.bind(delivery_id=delivery.id, event_id=delivery.event_id, status=status)
        attempt_outcome = outcome.verdict if outcome.verdict in ("succeeded", "gone") else "failed"
        metrics.CALLBACK_ATTEMPTS.labels(outcome="refused" if refused else attempt_outcome).inc()
        dropped = 0
        if outcome.verdict == "gone":
            if delivery.endpoint_id is not None:
                dropped = await store.disable_endpoint(self.pool, delivery.endpoint_id, "410 Gone")
                error = "410 Gone: endpoint disabled"
            else:
                error = "410 Gone: not retried"
        next_at = None
        if outcome.delay_s is not None:
            next_at = datetime.now(UTC) + timedelta(seconds=outcome.delay_s)
        updated = await self._record(
            delivery, started_at, outcome.delivery_status, status, error, latency_ms, text, next_at
        )
        if not updated:
            bound.warning("callback_lease_lost", hint="the attempt ran past its lease")
            return
        if outcome.verdict == "retry":
            bound.info(
                "callback_retry_scheduled", error=error, delay_s=round(outcome.delay_s or 0, 3)
            )
            return
        DELIVERIES.labels(
            outcome="failed" if outcome.verdict == "exhausted" else outcome.verdict
        ).inc()
        if outcome.verdict == "exhausted":
            bound.warning("callback_gave_up", error=error, attempts=delivery.attempts)
        elif outcome.verdict == "gone":
            if dropped:
                DELIVERIES.labels(outcome="endpoint_disabled").inc(dropped)
            bound.warning("callback_gone", endpoint_id=delivery.endpoint_id, dropped=dropped)

    async def _refused(
        self, delivery: ClaimedDelivery, started_at: datetime, exc: DestinationRefused
    ) -> None:
        log.warning(
            "callback_destination_refused",
            delivery_id=delivery.id,
            host=delivery.host,
            reason=str(exc),
        )
        metrics.CALLBACK_ATTEMPTS.labels(outcome="refused").inc()
        DELIVERIES.labels(outcome="refused").inc()
        await self._record(delivery, started_at, DeliveryStatus.FAILED, error=f"refused: {exc}")

    async def _record(
        self,
        delivery: ClaimedDelivery,
        started_at: datetime,
        status: DeliveryStatus,
        status_code: int | None = None,
        error: str | None = None,
        latency_ms: int | None = None,
        body: str | None = None,
        next_at: datetime | None = None,
    ) -> bool:
        """Record the attempt (batched with others); False when the lease was lost."""
        assert delivery_can(DeliveryStatus.DELIVERING, status), status
        self.attempts_started += 1
        result = CallbackAttemptResult(
            delivery_id=delivery.id,
            attempt_no=delivery.attempts,
            status=status,
            next_attempt_at=next_at,
            status_code=status_code,
            error=None if error is None else _text(error[:ERROR_CAP]),
            attempted_at=started_at,
            latency_ms=latency_ms,
            response_body=body,
        )
        return await self._results.record(result)

    async def update_gauges(self) -> None:
        depth, oldest = await store.due_stats(self.pool)
        metrics.CALLBACK_QUEUE.set(depth)
        metrics.CALLBACK_OLDEST_AGE.set(oldest)
