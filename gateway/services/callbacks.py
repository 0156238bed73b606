"""The callback dispatcher: delivers the outbox rows (`callback_deliveries`) to merchants.

Deliveries are claimed in PostgreSQL with `FOR UPDATE SKIP LOCKED` and a lease, so any number of
gateway processes can run dispatchers, and a delivery whose process died mid-attempt is claimed
again when its lease runs out (at least once; never lost). Woken by LISTEN/NOTIFY when a
transaction writes deliveries, and when one of its own attempts ends; polling is the fallback.

Bounds: at most `concurrency` deliveries claimed (so at most that many attempts in flight) per
process; at most `per_url_concurrency` attempts in flight to one URL (a slow merchant cannot take
every slot), with as many more claimed and waiting their turn, so that the next attempt to a busy
URL starts without a database round trip and still well within its lease; `timeout_s` per
attempt from name resolution to the last byte read; response bodies read up to `BODY_CAP` bytes;
no redirects.
Requests go through the dispatcher's own HTTP session: no cookies, no proxy from the
environment, and (unless private destinations are allowed) a resolver that refuses loopback,
private and link-local addresses at connection time, so a name cannot pass a check and then
resolve elsewhere.
Each request carries, beside the Standard Webhooks headers, `X-Request-Id`: the request id of
the merchant request, channel notification or background job that caused the event (none for
events older than `events.request_id`); the delivery's logs carry it too."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from prometheus_client import Counter

from gateway import logs, metrics
from gateway.auth.secretbox import SecretBox
from gateway.domain import webhooks
from gateway.domain.records import CallbackAttemptResult, ClaimedDelivery
from gateway.domain.states import DeliveryStatus, EndpointStatus, delivery_can
from gateway.store import webhooks as store
from gateway.store.db import Pool
from gateway.store.payments import CALLBACK_CHANNEL

log = structlog.get_logger("callbacks")

BODY_CAP = 2048
"""Bytes of a receiver's response body read and kept with the attempt."""
ERROR_CAP = 500
GAUGES_EVERY_S = 5.0
PER_URL_CONCURRENCY = 8

DELIVERIES = Counter(
    "gateway_callback_deliveries_total",
    "Callback deliveries ended, by outcome (succeeded; failed: schedule exhausted; gone: 410;"
    " refused: destination not allowed; endpoint_disabled: not sent)",
    ["outcome"],
)


class DestinationRefused(OSError):
    """A callback URL that may not be delivered to (scheme, or a non-public address)."""


def check_url(url: str, allow_private: bool) -> None:
    """Refuse what needs no DNS to refuse: a non-http(s) URL, or a literal IP address that is not
    public (aiohttp does not resolve literal addresses, so the resolver never sees them)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("only absolute http(s) URLs are delivered to")
    if allow_private:
        return
    address = webhooks.literal_ip(parts.hostname)
    if address is not None and not webhooks.public_address(address):
        raise DestinationRefused(f"{parts.hostname} is not a public address")


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, and refuses a name any of whose addresses is
    not public (checked at connection time: no window for the name to change in between)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if any(not webhooks.public_address(r["host"]) for r in results):
            raise DestinationRefused(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _refusal(exc: BaseException) -> DestinationRefused | None:
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, DestinationRefused
    ):
        return exc.os_error
    return None


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "\ufffd")


class GroupCommit:
    """Records attempts in batches: the results that come in while a write is under way go out
    together in the next one (one statement and one commit for many attempts, none waiting for a
    timer). Bounded by the dispatcher's claims: each delivery it holds waits here until its own
    result is written, and only then frees its place."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[CallbackAttemptResult, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, result: CallbackAttemptResult) -> bool:
        """Write one attempt's result; True when its delivery moved on (the lease was held)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((result, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        batch: list[tuple[CallbackAttemptResult, asyncio.Future[bool]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    moved = await store.finish_attempts(self._pool, [r for r, _ in batch])
                except Exception as exc:  # each waiter fails; the leases will run out
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for result, future in batch:
                        if not future.done():
                            future.set_result(result.delivery_id in moved)
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
        *,
        schedule: tuple[float, ...],
        allow_private: bool,
        timeout_s: float,
        poll_s: float,
        concurrency: int,
        per_url_concurrency: int = PER_URL_CONCURRENCY,
    ) -> None:
        """Callbacks go out through the dispatcher's own HTTP session (`session`), opened
        while it runs (see the module's docstring)."""
        self.pool = pool
        self.box = box
        self.schedule = schedule
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.lease_s = 2 * timeout_s + 5
        """How long a claimed delivery is ours: it may wait for one attempt to its URL to end
        (at most `timeout_s`: see the bounds), then makes its own, then writes the result."""
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.per_url = min(per_url_concurrency, concurrency)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[str, int] = {}
        """Deliveries claimed and not yet finished, per URL."""
        self._gates: dict[str, asyncio.Semaphore] = {}
        """Per URL: at most `per_url` attempts in flight."""
        self._session: aiohttp.ClientSession | None = None
        self._recorder = GroupCommit(pool)
        self.attempts_started = 0
        """Attempts this dispatcher has started (introspection; the metrics count them all)."""

    def wake(self, *_: object) -> None:
        self._wake.set()

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[aiohttp.ClientSession]:
        """The HTTP session callbacks are sent with, open while the dispatcher runs."""
        connector = aiohttp.TCPConnector(
            limit=self.concurrency,
            limit_per_host=0,
            resolver=None if self.allow_private else PublicOnlyResolver(),
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
        attempts were started (0 when full: an attempt's end wakes the loop)."""
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        claimed = await store.claim_due(self.pool, free, self._held, 2 * self.per_url, self.lease_s)
        self.attempts_started += len(claimed)
        for delivery in claimed:
            url = delivery.url
            self._held[url] = self._held.get(url, 0) + 1
            task = asyncio.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        # each delivery is a task of its own (dispatch_due): its logs carry the request id of
        # what caused the event, as its requests do
        # (None for an event written before events had request ids)
        logs.bind_request_id(delivery.request_id)
        url = delivery.url
        if url not in self._gates:
            self._gates[url] = asyncio.Semaphore(self.per_url)
        try:
            await self._attempt(delivery)
        except Exception:  # the lease runs out and the delivery is attempted again
            log.exception("callback_attempt_crashed", delivery_id=delivery.id)
        finally:
            left = self._held[url] - 1
            if left:
                self._held[url] = left
            else:
                del self._held[url], self._gates[url]
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
            check_url(delivery.url, self.allow_private)
            secret, previous = self._secrets(delivery)
        except DestinationRefused as exc:
            await self._refused(delivery, datetime.now(UTC), exc)
            return
        except ValueError as exc:  # cannot sign: counts as a failed attempt, retried
            reason = f"cannot sign: {exc}"
            await self._after(delivery, datetime.now(UTC), None, reason, None, None, None)
            return
        body = delivery.body.encode()
        status: int | None = None
        error: str | None = None
        text: str | None = None
        retry_after: float | None = None
        refusal: DestinationRefused | None = None
        assert self._session is not None, "the dispatcher's session is open while it runs"
        async with self._gates[delivery.url]:  # a turn at this URL, held by the request alone
            started_at, started = datetime.now(UTC), time.monotonic()
            try:
                headers = webhooks.headers(
                    secret,
                    delivery.event_id,
                    int(time.time()),
                    body,
                    previous,
                    delivery.request_id,
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
                refusal = _refusal(exc)
                if status is None:
                    error = (
                        f"timed out after {self.timeout_s:g} s"
                        if isinstance(exc, TimeoutError)
                        else f"{type(exc).__name__}: {exc}"
                    )
                else:  # the status line arrived, the body did not: the status stands
                    error = f"reading the response: {type(exc).__name__}"
        if refusal is not None:
            await self._refused(delivery, started_at, refusal)
            return
        latency_ms = int((time.monotonic() - started) * 1000)
        metrics.CALLBACK_LATENCY.observe(latency_ms / 1000)
        await self._after(delivery, started_at, status, error, retry_after, latency_ms, text)
        log.debug(
            "callback_attempted", delivery_id=delivery.id, status=status, latency_ms=latency_ms
        )

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
    ) -> None:
        """Apply the retry policy to an attempt's answer and record it."""
        outcome = webhooks.classify(status, delivery.attempts, self.schedule, retry_after)
        bound = log.bind(delivery_id=delivery.id, event_id=delivery.event_id, status=status)
        metrics.CALLBACK_ATTEMPTS.labels(
            outcome=outcome.verdict if outcome.verdict in ("succeeded", "gone") else "failed"
        ).inc()
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
        log.warning("callback_destination_refused", delivery_id=delivery.id, reason=str(exc))
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
        return await self._recorder.record(result)

    async def update_gauges(self) -> None:
        depth, oldest = await store.due_stats(self.pool)
        metrics.CALLBACK_QUEUE.set(depth)
        metrics.CALLBACK_OLDEST_AGE.set(oldest)
