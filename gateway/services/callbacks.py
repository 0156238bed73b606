"""The callback dispatcher: delivers the outbox rows (`callback_deliveries`) to merchants.

Deliveries are claimed in PostgreSQL with `FOR UPDATE SKIP LOCKED` and a lease, so any number of
gateway processes can run dispatchers, and a delivery whose process died mid-attempt is claimed
again when its lease runs out (at least once; never lost). Woken by LISTEN/NOTIFY when a
transaction writes deliveries, with polling as the fallback."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import structlog

from gateway import metrics
from gateway.auth.secretbox import SecretBox
from gateway.domain import webhooks
from gateway.store import merchants as merchant_store
from gateway.store.db import Pool
from gateway.store.payments import CALLBACK_CHANNEL

log = structlog.get_logger("callbacks")

LEASE_S = 60
BODY_CAP = 2048

_CLAIM = f"""
WITH due AS (
    SELECT id FROM callback_deliveries
     WHERE (status = 'pending' AND next_attempt_at <= now())
        OR (status = 'delivering' AND locked_until < now())
     ORDER BY next_attempt_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
)
UPDATE callback_deliveries d
   SET status = 'delivering', locked_until = now() + interval '{LEASE_S} seconds',
       attempts = d.attempts + 1, updated_at = now()
  FROM due
 WHERE d.id = due.id
RETURNING d.id, d.event_id, d.merchant_id, d.endpoint_id, d.url, d.attempts,
          (SELECT e.payload FROM events e WHERE e.id = d.event_id) AS payload,
          (SELECT w.status FROM webhook_endpoints w WHERE w.id = d.endpoint_id) AS endpoint_status
"""  # noqa: S608 - constants only

_FINISH = """
WITH d AS (
    UPDATE callback_deliveries
       SET status = $2, next_attempt_at = COALESCE($3, next_attempt_at), locked_until = NULL,
           last_status_code = $4, last_error = $5, updated_at = now(),
           delivered_at = CASE WHEN $2 = 'succeeded' THEN now() ELSE delivered_at END
     WHERE id = $1 AND status = 'delivering'
    RETURNING id
)
INSERT INTO callback_attempts (delivery_id, status_code, latency_ms, response_body, error)
SELECT id, $4, $6, $7, $5 FROM d
"""


class DestinationRefused(Exception):
    pass


async def check_destination(url: str, allow_private: bool) -> None:
    """Refuse non-http(s) URLs, and loopback / private / link-local destinations after DNS
    resolution unless allowed (development and tests)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("only absolute http(s) URLs are delivered to")
    if allow_private:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DestinationRefused(f"cannot resolve {parts.hostname}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise DestinationRefused(f"{parts.hostname} resolves to a non-public address")


class CallbackDispatcher:
    def __init__(
        self,
        pool: Pool,
        box: SecretBox | None,
        http: aiohttp.ClientSession,
        *,
        schedule: tuple[float, ...],
        allow_private: bool,
        timeout_s: float,
        poll_s: float,
        concurrency: int,
    ) -> None:
        self.pool = pool
        self.box = box
        self.http = http
        self.schedule = schedule
        self.allow_private = allow_private
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.poll_s = poll_s
        self.concurrency = concurrency
        self._wake = asyncio.Event()
        self._secrets: dict[str, tuple[str, float]] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(concurrency)

    def wake(self, *_: Any) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        listener = asyncio.create_task(self._listen(stop))
        last_gauge = 0.0
        try:
            while not stop.is_set():
                try:
                    claimed = await self.dispatch_due()
                    if time.monotonic() - last_gauge > 5:
                        await self._update_gauges()
                        last_gauge = time.monotonic()
                except (asyncpg.PostgresError, OSError) as exc:
                    log.warning("dispatcher_db_error", error=repr(exc))
                    claimed = 0
                if claimed:
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)

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
                log.warning("dispatcher_listen_failed", error=repr(exc))
                await asyncio.sleep(1)

    async def dispatch_due(self) -> int:
        """Claim what is due (up to free capacity) and start delivering it. Returns the count."""
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            return 1
        rows = await self.pool.fetch(_CLAIM, free)
        for row in rows:
            task = asyncio.create_task(self._deliver(dict(row)))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Deliver everything due now and wait for it (tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            claimed = await self.dispatch_due()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            if not claimed and not self._inflight:
                return

    async def _secret(self, merchant_id: str) -> str:
        cached = self._secrets.get(merchant_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        if self.box is None:
            raise RuntimeError("GATEWAY_MASTER_KEY is not set: cannot sign callbacks")
        sealed = await merchant_store.webhook_secret(self.pool, merchant_id)
        if sealed is None:
            raise RuntimeError(f"merchant {merchant_id} has no webhook secret")
        secret = self.box.open(sealed, merchant_id)
        self._secrets[merchant_id] = (secret, time.monotonic() + 60)
        return secret

    async def _deliver(self, row: dict[str, Any]) -> None:
        async with self._sem:
            try:
                await self._attempt(row)
            except Exception:
                log.exception("callback_attempt_crashed", delivery_id=row["id"])

    async def _attempt(self, row: dict[str, Any]) -> None:
        delivery_id = row["id"]
        bound = log.bind(delivery_id=delivery_id, event_id=row["event_id"])
        if row["endpoint_id"] is not None and row["endpoint_status"] != "active":
            await self._finish(row, "failed", None, None, "endpoint disabled", 0, None)
            return
        try:
            await check_destination(row["url"], self.allow_private)
        except DestinationRefused as exc:
            bound.warning("callback_destination_refused", reason=str(exc))
            await self._finish(row, "failed", None, None, str(exc), 0, None)
            return
        body = orjson.dumps(row["payload"])
        secret = await self._secret(row["merchant_id"])
        headers = webhooks.headers(secret, row["event_id"], int(time.time()), body)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        text: str | None = None
        retry_after: float | None = None
        try:
            async with self.http.post(
                row["url"], data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                text = (await resp.content.read(BODY_CAP)).decode("utf-8", "replace")
                retry_after = webhooks.parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        latency_ms = int((time.monotonic() - started) * 1000)
        metrics.CALLBACK_LATENCY.observe(latency_ms / 1000)
        if status is not None and 200 <= status < 300:
            metrics.CALLBACK_ATTEMPTS.labels(outcome="succeeded").inc()
            await self._finish(row, "succeeded", None, status, None, latency_ms, text)
            bound.info("callback_delivered", status=status, latency_ms=latency_ms)
            return
        if status == 410 and row["endpoint_id"] is not None:
            await self.pool.execute(
                "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = '410 Gone',"
                " updated_at = now() WHERE id = $1 AND status = 'active'",
                row["endpoint_id"],
            )
            metrics.CALLBACK_ATTEMPTS.labels(outcome="gone").inc()
            await self._finish(row, "failed", None, status, "410 Gone: endpoint disabled",
                               latency_ms, text)  # fmt: skip
            bound.warning("callback_endpoint_disabled", endpoint_id=row["endpoint_id"])
            return
        delay = webhooks.next_delay(self.schedule, row["attempts"])
        if delay is not None and status in (429, 503) and retry_after is not None:
            delay = retry_after  # the receiver said when it can take it
        metrics.CALLBACK_ATTEMPTS.labels(outcome="failed").inc()
        if delay is None:
            await self._finish(row, "failed", None, status, error, latency_ms, text)
            bound.warning("callback_gave_up", status=status, error=error)
            return
        next_at = datetime.now(UTC) + timedelta(seconds=delay)
        await self._finish(row, "pending", next_at, status, error, latency_ms, text)
        bound.info("callback_retry_scheduled", status=status, error=error, delay_s=round(delay, 3))

    async def _finish(
        self,
        row: dict[str, Any],
        status: str,
        next_at: datetime | None,
        status_code: int | None,
        error: str | None,
        latency_ms: int,
        body: str | None,
    ) -> None:
        await self.pool.execute(
            _FINISH, row["id"], status, next_at, status_code, error, latency_ms, body
        )

    async def _update_gauges(self) -> None:
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM now() - min(next_attempt_at)) AS age"
            " FROM callback_deliveries WHERE status = 'pending' AND next_attempt_at <= now()"
        )
        if row is not None:
            metrics.CALLBACK_QUEUE.set(row["n"])
            metrics.CALLBACK_OLDEST_AGE.set(float(row["age"] or 0))
