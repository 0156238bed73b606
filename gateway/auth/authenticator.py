"""Authenticates a merchant request: header, clock window, key, signature, then the nonce.

The nonce is consumed only after the signature verifies, so a forged request cannot burn a
merchant's nonces. The nonce cache is Redis; if Redis cannot answer, requests are refused
(503), never let through unchecked.

Redis is disposable: restarted empty (or its keys evicted), it no longer knows the nonces of
the last 15 minutes, and a captured request still inside the 300 s clock window could be
replayed once. So the cache keeps an epoch, the moment it was found empty (Redis's clock, a
key without expiry set by the same script that consumes nonces): a request signed before the
epoch is refused with 503 (re-sign and retry), since its nonce can no longer be checked. The
gateway sets the epoch when it starts, so a request is only refused that way when the cache
was really lost. What is left: a request signed in the very second the cache was found empty,
or whose timestamp is ahead of the epoch because the merchant's clock runs fast (by at most
the 300 s window)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway import metrics
from gateway.auth.secretbox import SecretBox
from gateway.auth.signature import (
    NONCE_TTL_S,
    Verifier,
    check_timestamp,
    parse_authorization,
    signed_message,
)
from gateway.domain.errors import AuthFailed, ServiceUnavailable
from gateway.domain.records import KeyType
from gateway.store import merchants as store
from gateway.store.db import Pool

log = structlog.get_logger("auth")


# KEYS[1]: the nonce's key, KEYS[2]: the epoch's key. ARGV[1]: the request's timestamp (unix
# s), ARGV[2]: the nonce's lifetime (s). Returns 1: fresh nonce, consumed; 0: replayed;
# -epoch (< 0): signed before the cache's epoch, nothing consumed.
_CONSUME_NONCE = """
local epoch = tonumber(redis.call('GET', KEYS[2]))
if epoch == nil then
  epoch = tonumber(redis.call('TIME')[1])
  redis.call('SET', KEYS[2], epoch)
end
if tonumber(ARGV[1]) < epoch then return -epoch end
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then return 1 end
return 0
"""


@dataclass(frozen=True, slots=True)
class AuthenticatedMerchant:
    merchant_id: str
    key_id: str


@dataclass(slots=True)
class _CachedKey:
    merchant_id: str
    verifier: Verifier
    expires: float


class Authenticator:
    def __init__(
        self,
        pool: Pool,
        redis: aioredis.Redis,
        box: SecretBox | None,
        redis_prefix: str,
        cache_ttl_s: float,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._box = box
        self._prefix = redis_prefix
        self._ttl = cache_ttl_s
        self._cache: dict[str, _CachedKey] = {}
        self._consume = redis.register_script(_CONSUME_NONCE)
        self._epoch_key = f"{redis_prefix}nonce-epoch"

    async def start(self) -> None:
        """Set the nonce cache's epoch if it has none (a new cache: nothing was lost). Best
        effort: with Redis away, the first request that gets through sets it."""
        try:
            now = await self._redis.time()
            await self._redis.set(self._epoch_key, int(now[0]), nx=True)
        except (RedisError, OSError) as exc:
            log.warning("nonce_epoch_not_set", error=repr(exc))

    async def authenticate(
        self, method: str, path_and_query: str, body: bytes, header: str | None
    ) -> AuthenticatedMerchant:
        """The merchant and key a request is signed with. Raises AuthFailed (the signature
        does not hold), ServiceUnavailable (the nonce cache or the master key is missing)."""
        try:
            return await self._authenticate(method, path_and_query, body, header)
        except AuthFailed as exc:
            metrics.AUTH_FAILURES.labels(code=exc.code).inc()
            raise

    async def _authenticate(
        self, method: str, path_and_query: str, body: bytes, header: str | None
    ) -> AuthenticatedMerchant:
        auth = parse_authorization(header)
        try:
            key_type = KeyType(auth.alg.lower())
        except ValueError:
            raise AuthFailed(
                "malformed_authorization",
                f"Unknown algorithm GW1-{auth.alg}; use HMAC-SHA256, ED25519 or RSA-SHA256.",
            ) from None
        now = time.time()
        check_timestamp(auth.timestamp, now)
        cached = await self._key(auth.key_id, now)
        if cached is None:
            raise AuthFailed("unknown_key", f"No active key {auth.key_id!r}.")
        if cached.verifier.key_type is not key_type:
            raise AuthFailed(
                "algorithm_mismatch",
                f"Key {auth.key_id} is a {cached.verifier.key_type.header_alg} key.",
            )
        message = signed_message(method, path_and_query, auth.timestamp, auth.nonce, body)
        if not cached.verifier.verify(message, auth.signature):
            raise AuthFailed("invalid_signature", "The signature does not verify.")
        await self._consume_nonce(auth.key_id, auth.nonce, auth.timestamp)
        return AuthenticatedMerchant(merchant_id=cached.merchant_id, key_id=auth.key_id)

    async def _key(self, key_id: str, now: float) -> _CachedKey | None:
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > now:
            return cached
        key = await store.active_key(self._pool, key_id)
        if key is None:
            self._cache.pop(key_id, None)
            return None
        if key.key_type is KeyType.HMAC_SHA256:
            if self._box is None:
                raise ServiceUnavailable("The master key is not configured.")
            assert key.secret_enc is not None, "an HMAC key has a secret (CHECK constraint)"
            secret = self._box.open(key.secret_enc, key.id)
            verifier = Verifier(key.key_type, secret=secret)
        else:
            verifier = Verifier(key.key_type, public_key_pem=key.public_key_pem)
        cached = _CachedKey(key.merchant_id, verifier, now + self._ttl)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = cached
        return cached

    async def _consume_nonce(self, key_id: str, nonce: str, timestamp: int) -> None:
        try:
            answer = int(
                await self._consume(
                    keys=[f"{self._prefix}nonce:{key_id}:{nonce}", self._epoch_key],
                    args=[timestamp, NONCE_TTL_S],
                )
            )
        except (RedisError, OSError) as exc:
            log.error("nonce_cache_unavailable", error=repr(exc))
            raise ServiceUnavailable(
                "The replay cache is unavailable; the request was not processed.",
                retry_after_s=1,
            ) from None
        if answer == 0:
            raise AuthFailed("nonce_replayed", "This nonce was already used with this key.")
        if answer < 0:
            metrics.AUTH_FAILURES.labels(code="nonce_cache_reset").inc()
            log.warning("nonce_cache_reset", epoch=-answer, timestamp=timestamp)
            raise ServiceUnavailable(
                "The replay cache was reset after this request was signed, so its nonce "
                "cannot be checked; sign the request again and retry.",
                retry_after_s=0,
            )
