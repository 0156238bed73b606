"""Authenticates a merchant request: header, clock window, key, signature, then the nonce.

The nonce is consumed only after the signature verifies, so a forged request cannot burn a
merchant's nonces. The nonce cache is Redis; if Redis cannot answer, requests are refused
(503), never let through unchecked."""

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
    AuthError,
    KeyType,
    Verifier,
    check_timestamp,
    parse_authorization,
    signed_message,
)
from gateway.errors import ApiError
from gateway.store import merchants as store
from gateway.store.db import Pool

log = structlog.get_logger("auth")


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

    async def authenticate(
        self, method: str, path_and_query: str, body: bytes, header: str | None
    ) -> AuthenticatedMerchant:
        try:
            return await self._authenticate(method, path_and_query, body, header)
        except AuthError as exc:
            metrics.AUTH_FAILURES.labels(code=exc.code).inc()
            raise ApiError(401, exc.code, exc.detail) from None

    async def _authenticate(
        self, method: str, path_and_query: str, body: bytes, header: str | None
    ) -> AuthenticatedMerchant:
        auth = parse_authorization(header)
        try:
            key_type = KeyType(auth.alg.lower())
        except ValueError:
            raise AuthError(
                "malformed_authorization",
                f"Unknown algorithm GW1-{auth.alg}; use HMAC-SHA256, ED25519 or RSA-SHA256.",
            ) from None
        now = time.time()
        check_timestamp(auth.timestamp, now)
        cached = await self._key(auth.key_id, now)
        if cached is None:
            raise AuthError("unknown_key", f"No active key {auth.key_id!r}.")
        if cached.verifier.key_type is not key_type:
            raise AuthError(
                "algorithm_mismatch",
                f"Key {auth.key_id} is a {cached.verifier.key_type.header_alg} key.",
            )
        message = signed_message(method, path_and_query, auth.timestamp, auth.nonce, body)
        if not cached.verifier.verify(message, auth.signature):
            raise AuthError("invalid_signature", "The signature does not verify.")
        await self._consume_nonce(auth.key_id, auth.nonce)
        return AuthenticatedMerchant(merchant_id=cached.merchant_id, key_id=auth.key_id)

    async def _key(self, key_id: str, now: float) -> _CachedKey | None:
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > now:
            return cached
        row = await store.active_key(self._pool, key_id)
        if row is None:
            self._cache.pop(key_id, None)
            return None
        key_type = KeyType(row["key_type"])
        if key_type is KeyType.HMAC_SHA256:
            if self._box is None:
                raise ApiError(503, "service_unavailable", "The master key is not configured.")
            secret = self._box.open(bytes(row["secret_enc"]), row["id"])
            verifier = Verifier(key_type, secret=secret)
        else:
            verifier = Verifier(key_type, public_key_pem=row["public_key_pem"])
        cached = _CachedKey(row["merchant_id"], verifier, now + self._ttl)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = cached
        return cached

    async def _consume_nonce(self, key_id: str, nonce: str) -> None:
        try:
            fresh = await self._redis.set(
                f"{self._prefix}nonce:{key_id}:{nonce}", b"1", nx=True, ex=NONCE_TTL_S
            )
        except (RedisError, OSError) as exc:
            log.error("nonce_cache_unavailable", error=repr(exc))
            raise ApiError(
                503,
                "service_unavailable",
                "The replay cache is unavailable; the request was not processed.",
                headers={"Retry-After": "1"},
            ) from None
        if not fresh:
            raise AuthError("nonce_replayed", "This nonce was already used with this key.")
