"""Authenticates a merchant request (API.md §1.1) and admits it within its budget (§1.7):
the source address's failure budget, the header, the clock window, the key, the signature,
then, in one Redis round trip, the nonce and the merchant's budget (`gateway.auth.admission`).

Refusals are cheap where an attacker can make them many: an address that spent its budget of
failed authentications is refused (429) before anything else; an unknown key id is remembered
(`gateway.auth.keys`), so its repeats cost no database read. The nonce is consumed only after
the signature verifies, so a forged request cannot burn a merchant's nonces, nor its budget.
If Redis cannot answer, requests are refused (503), never let through unchecked."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway import metrics
from gateway.auth.admission import Admission, FailureBudget
from gateway.auth.budgets import BudgetPolicy, RateLimit, RequestClass, failure_limit
from gateway.auth.keys import KeyCache
from gateway.auth.secretbox import SecretBox
from gateway.auth.signature import check_timestamp, parse_authorization, signed_message
from gateway.domain.errors import AuthFailed, Budget, RateLimited
from gateway.domain.records import KeyType
from gateway.domain.states import MerchantStatus
from gateway.settings import Settings
from gateway.store.db import Pool


@dataclass(frozen=True, slots=True)
class AuthenticatedMerchant:
    merchant_id: str
    key_id: str
    status: MerchantStatus
    budget: Budget | None
    """Where the request's budget stands after it (None: budgets are off)."""


class Authenticator:
    def __init__(
        self,
        pool: Pool,
        redis: aioredis.Redis,
        box: SecretBox | None,
        *,
        redis_prefix: str,
        key_cache_ttl_s: float,
        budgets: BudgetPolicy | None,
        failures: RateLimit,
    ) -> None:
        self._prefix = redis_prefix
        self._keys = KeyCache(pool, box, key_cache_ttl_s)
        self._admission = Admission(pool, redis, redis_prefix)
        self._failures = FailureBudget(redis, redis_prefix, failures)
        self._budgets = budgets

    @classmethod
    def from_settings(
        cls, pool: Pool, redis: aioredis.Redis, box: SecretBox | None, settings: Settings
    ) -> Authenticator:
        budgets = BudgetPolicy(
            payments_per_s=settings.rate_limit_payments_per_s,
            refunds_per_s=settings.rate_limit_refunds_per_s,
            other_per_s=settings.rate_limit_other_per_s,
            burst_s=settings.rate_limit_burst_s,
        )
        return cls(
            pool,
            redis,
            box,
            redis_prefix=settings.redis_prefix,
            key_cache_ttl_s=settings.key_cache_ttl_s,
            budgets=budgets if settings.rate_limits_enabled else None,
            failures=failure_limit(settings.auth_failure_limit, settings.auth_failure_window_s),
        )

    async def start(self) -> None:
        """Refuse a Redis that may evict nonces (`UnsafeRedisConfig`), and open the nonce
        cache's generation if it has none."""
        await self._admission.start()

    async def authenticate(
        self,
        method: str,
        path_and_query: str,
        body: bytes,
        header: str | None,
        *,
        source: str,
        request_class: RequestClass,
    ) -> AuthenticatedMerchant:
        """The merchant and key a request is signed with, its budget charged. `source` is the
        client's address (its failures are counted). Raises RateLimited (the address's
        failures, or the merchant's budget, are spent), AuthFailed (the signature does not
        hold), ServiceUnavailable (Redis or the master key is missing)."""
        try:
            self._failures.refuse_if_blocked(source)
        except RateLimited:
            metrics.RATE_LIMITED.labels(budget="auth_failures").inc()
            raise
        try:
            return await self._authenticate(method, path_and_query, body, header, request_class)
        except AuthFailed as exc:
            metrics.AUTH_FAILURES.labels(code=exc.code).inc()
            await self._failures.count(source)
            raise
        except RateLimited:
            metrics.RATE_LIMITED.labels(budget=request_class.value).inc()
            raise

    async def _authenticate(
        self,
        method: str,
        path_and_query: str,
        body: bytes,
        header: str | None,
        request_class: RequestClass,
    ) -> AuthenticatedMerchant:
        auth = parse_authorization(header)
        try:
            key_type = KeyType(auth.alg.lower())
        except ValueError:
            raise AuthFailed(
                "malformed_authorization",
                f"Unknown algorithm GW1-{auth.alg}; use HMAC-SHA256, ED25519 or RSA-SHA256.",
            ) from None
        check_timestamp(auth.timestamp, time.time())
        key = await self._keys.get(auth.key_id)
        if key is None:
            raise AuthFailed("unknown_key", f"No active key {auth.key_id!r}.")
        if key.verifier.key_type is not key_type:
            raise AuthFailed(
                "algorithm_mismatch",
                f"Key {auth.key_id} is a {key.verifier.key_type.header_alg} key.",
            )
        message = signed_message(method, path_and_query, auth.timestamp, auth.nonce, body)
        if not key.verifier.verify(message, auth.signature):
            raise AuthFailed("invalid_signature", "The signature does not verify.")
        merchant_id = key.access.merchant_id
        budget = None
        if self._budgets is not None:
            limit = self._budgets.rate_limit(request_class, key.access.rate_limits)
            budget = (f"{self._prefix}rl:{merchant_id}:{request_class.value}", limit)
        standing = await self._admission.admit(auth.key_id, auth.nonce, auth.timestamp, budget)
        return AuthenticatedMerchant(
            merchant_id=merchant_id,
            key_id=auth.key_id,
            status=key.access.status,
            budget=standing,
        )
