"""Merchants' keys, cached in the process with what their merchant's requests are admitted with
(its status and budgets):

- a key found active is kept, parsed and ready to verify, for `ttl_s`
  (GATEWAY_KEY_CACHE_TTL_S, at most 60 s): a revoked key may be accepted for up to that long
  by a process that read it just before;
- its merchant's status and budget overrides are read again after at most
  `MERCHANT_TTL_S`, so that a status change takes effect within 5 s in every process
  (API.md §4.1);
- a key id with no active key is remembered as unknown as long as the status is, so that
  requests naming it again cost no database read (a flood of ever new key ids is stopped by
  the failure budget of its source address, `gateway.auth.admission.FailureBudget`);
- concurrent lookups of one key id, or one merchant, share one database read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.auth.secretbox import SecretBox
from gateway.auth.signature import Verifier
from gateway.domain.errors import ServiceUnavailable
from gateway.domain.records import KeyType, MerchantAccess, MerchantKey
from gateway.store import merchants as store
from gateway.store.db import Pool

MERCHANT_TTL_S = 5.0
_MAX_ENTRIES = 10_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ActiveKey:
    key_id: str
    verifier: Verifier
    access: MerchantAccess


@dataclass(slots=True)
class _Key:
    merchant_id: str
    verifier: Verifier
    expires: float


@dataclass(slots=True)
class _Access:
    access: MerchantAccess
    expires: float


class KeyCache:
    def __init__(self, pool: Pool, box: SecretBox | None, ttl_s: float) -> None:
        self._pool = pool
        self._box = box
        self._ttl = ttl_s
        self._merchant_ttl = min(ttl_s, MERCHANT_TTL_S)
        self._keys: dict[str, _Key] = {}
        self._access: dict[str, _Access] = {}
        self._unknown: dict[str, float] = {}
        """Key id → until when (monotonic) it is known to have no active key."""
        self._key_reads: dict[str, asyncio.Task[ActiveKey | None]] = {}
        self._access_reads: dict[str, asyncio.Task[MerchantAccess | None]] = {}

    async def get(self, key_id: str) -> ActiveKey | None:
        """The active key `key_id` (None: no such active key). Raises ServiceUnavailable for an
        HMAC key while the master key is not configured."""
        now = time.monotonic()
        key = self._keys.get(key_id)
        if key is not None and key.expires > now:
            access = self._access.get(key.merchant_id)
            if access is not None and access.expires > now:
                return ActiveKey(key_id, key.verifier, access.access)
            fresh = await _shared(
                self._access_reads, key.merchant_id, lambda: self._read_access(key.merchant_id)
            )
            return None if fresh is None else ActiveKey(key_id, key.verifier, fresh)
        unknown_until = self._unknown.get(key_id)
        if unknown_until is not None and unknown_until > now:
            return None
        return await _shared(self._key_reads, key_id, lambda: self._read_key(key_id))

    async def _read_key(self, key_id: str) -> ActiveKey | None:
        found = await store.key_access(self._pool, key_id)
        now = time.monotonic()
        if found is None:
            self._keys.pop(key_id, None)
            if len(self._unknown) >= _MAX_ENTRIES:
                self._unknown.clear()
            self._unknown[key_id] = now + self._merchant_ttl
            return None
        key, access = found
        verifier = self._verifier(key)
        if len(self._keys) >= _MAX_ENTRIES:
            self._keys.clear()
            self._access.clear()
        self._unknown.pop(key_id, None)
        self._keys[key_id] = _Key(key.merchant_id, verifier, now + self._ttl)
        self._access[key.merchant_id] = _Access(access, now + self._merchant_ttl)
        return ActiveKey(key_id, verifier, access)

    async def _read_access(self, merchant_id: str) -> MerchantAccess | None:
        access = await store.merchant_access(self._pool, merchant_id)
        if access is None:
            self._access.pop(merchant_id, None)
            return None
        self._access[merchant_id] = _Access(access, time.monotonic() + self._merchant_ttl)
        return access

    def _verifier(self, key: MerchantKey) -> Verifier:
        if key.key_type is KeyType.HMAC_SHA256:
            if self._box is None:
                raise ServiceUnavailable("The master key is not configured.")
            assert key.secret_enc is not None, "an HMAC key has a secret (CHECK constraint)"
            return Verifier(key.key_type, secret=self._box.open(key.secret_enc, key.id))
        return Verifier(key.key_type, public_key_pem=key.public_key_pem)


async def _shared(
    reads: dict[str, asyncio.Task[T]], name: str, read: Callable[[], Awaitable[T]]
) -> T:
    """`read()`, or the same read already under way for `name`: one database read for every
    request that needs it at once. The read runs as a task of its own, so that one caller
    giving up (a client gone) does not fail the others."""
    task = reads.get(name)
    if task is None:

        async def run() -> T:
            try:
                return await read()
            finally:
                reads.pop(name, None)

        task = asyncio.ensure_future(run())
        reads[name] = task
    return await asyncio.shield(task)
