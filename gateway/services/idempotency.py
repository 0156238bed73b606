"""Idempotency-Key handling (API.md §1.3) around any merchant POST: validate the key, claim it
(or answer with the stored response, or refuse a reuse), keep its lease while the request runs,
and store the answer (5xx answers are not stored: the key is released)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from gateway.domain.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidRequest
from gateway.domain.states import IdempotencyState
from gateway.store import idempotency as store
from gateway.store.db import Pool

log = structlog.get_logger("idempotency")

MAX_KEY_LENGTH = 255
RENEW_EVERY_S = store.LEASE_S / 3


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: bytes


def validate_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(0x20 <= ord(c) <= 0x7E for c in key):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters.")


def request_hash(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(method.encode() + b"\n" + path.encode() + b"\n" + body).digest()


class IdempotencyKeys:
    """The merchants' Idempotency-Key records."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def begin(
        self, merchant_id: str, key: str, method: str, path: str, body: bytes
    ) -> Replay | None:
        """Claim the key for this request. None: go ahead (and call `finish` or `abandon`).
        A Replay: answer with the stored response. Raises IdempotencyKeyReused (another
        request had the key) or IdempotencyKeyInUse (it is still running)."""
        digest = request_hash(method, path, body)
        existing = await store.claim(self.pool, merchant_id, key, method, path, digest)
        if existing is None:
            return None
        if (existing.method, existing.path, existing.request_hash) != (method, path, digest):
            raise IdempotencyKeyReused()
        if existing.state is IdempotencyState.IN_FLIGHT:
            raise IdempotencyKeyInUse()
        assert existing.response_status is not None and existing.response_body is not None
        return Replay(existing.response_status, existing.response_body)

    async def finish(self, merchant_id: str, key: str, status: int, body: bytes) -> None:
        if status >= 500:
            await store.release(self.pool, merchant_id, key)
        else:
            await store.complete(self.pool, merchant_id, key, status, body)

    async def abandon(self, merchant_id: str, key: str) -> None:
        await store.release(self.pool, merchant_id, key)

    @contextlib.asynccontextmanager
    async def held(self, merchant_id: str, key: str) -> AsyncIterator[None]:
        """Keep the key's lease while the request runs, renewing it every RENEW_EVERY_S: a
        live request keeps its key however long its channel calls take, and a retry can take
        over the key of a request whose process died within LEASE_S (10 s), not a fixed
        minute."""

        async def renew() -> None:
            while True:
                try:
                    await store.renew(self.pool, merchant_id, key)
                except Exception as exc:  # the next renewal may succeed; the lease is a backstop
                    log.warning("idempotency_lease_renewal_failed", error=repr(exc))
                await asyncio.sleep(RENEW_EVERY_S)

        # most requests end long before the first renewal: a timer, not a task, until then
        loop = asyncio.get_running_loop()
        renewing: list[asyncio.Task[None]] = []
        timer = loop.call_later(RENEW_EVERY_S, lambda: renewing.append(loop.create_task(renew())))
        try:
            yield
        finally:
            timer.cancel()
            for task in renewing:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
