"""The risk check a payment passes before routing: the rules in force (hot-reloaded), applied to
the request, with the counters in Redis. Each load and refusal of the file is noted in
`file_watch`, for the audit log.

A refusal raises `RiskRejected` naming the rule (the merchant gets 403 `risk_rejected` with
`"rule": "<name>"` in the problem); it creates nothing, is logged (`risk_rejected`) and counted
(`gateway_risk_rejections_total`).

Redis down: **fail closed**. Blocklists and amount limits need no Redis and still refuse; a
payment that daily caps or velocity rules apply to is refused with `ServiceUnavailable` (503
`service_unavailable`, `Retry-After: 1`) and nothing is created. The nonce check before this
already refuses every request while Redis is unreachable, so failing open here would buy no
availability, only unenforced limits during a Redis failure that starts mid-request.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from gateway import metrics
from gateway.domain.audit import FileWatch
from gateway.domain.errors import RiskRejected, ServiceUnavailable
from gateway.domain.models import CreatePaymentRequest
from gateway.risk.counters import RiskCounters
from gateway.risk.loader import RiskHolder
from gateway.risk.rules import Facts, Rejection, counter_checks, counter_rejection, static_rejection

log = structlog.get_logger("risk")


class RiskEngine:
    def __init__(self, holder: RiskHolder, redis: aioredis.Redis, prefix: str) -> None:
        self.holder = holder
        self.counters = RiskCounters(redis, prefix)
        self.file_watch = FileWatch("risk", holder)
        """What this process loads and refuses, for the audit log."""
        log.info("risk_rules_loaded", path=str(holder.path), version=holder.current.version)

    def reload(self) -> bool:
        """Re-read the risk file (see `RiskHolder.reload`); log and count what happened."""
        before = self.holder.reload_failures
        changed = self.holder.reload()
        self.file_watch.poll()
        if changed:
            log.info("risk_rules_reloaded", version=self.holder.current.version)
        if self.holder.reload_failures > before:
            metrics.RISK_RELOAD_FAILURES.inc()
            log.error("risk_reload_refused", error=self.holder.last_error)
        return changed

    async def check(self, merchant_id: str, req: CreatePaymentRequest) -> None:
        """Pass, or raise RiskRejected (ServiceUnavailable when the counters are unreachable).
        A payment that passes is added to the counters of the rules that apply to it."""
        loaded = self.holder.current
        facts = Facts.of(
            merchant_id=merchant_id,
            method=req.method,
            currency=req.currency,
            amount=req.amount,
            payer_id=req.payer.id if req.payer else None,
            payer_ip=req.payer.ip if req.payer else None,
            now=datetime.now(UTC),
        )
        rejection = static_rejection(loaded.rules, facts)
        if rejection is None:
            checks = counter_checks(loaded.rules, facts)
            if not checks:
                return
            try:
                passed, values = await self.counters.check_and_add(
                    checks, merchant_id, req.merchant_order_id
                )
            except (RedisError, OSError) as exc:
                log.error("risk_counters_unavailable", merchant_id=merchant_id, error=repr(exc))
                raise ServiceUnavailable(
                    "The risk counters are unavailable; the payment was not created.",
                    retry_after_s=1,
                ) from None
            if passed:  # within every limit, or a retry of a payment counted before
                return
            rejection = counter_rejection(checks, values)
            if rejection is None:
                return
        self._refuse(merchant_id, req, rejection, loaded.version)

    def _refuse(
        self, merchant_id: str, req: CreatePaymentRequest, rejection: Rejection, version: str
    ) -> None:
        metrics.RISK_REJECTIONS.labels(rule=rejection.rule).inc()
        log.warning(
            "risk_rejected",
            rule=rejection.rule,
            kind=rejection.kind.value,
            reason=rejection.reason,
            merchant_id=merchant_id,
            merchant_order_id=req.merchant_order_id,
            method=req.method,
            amount=req.amount,
            currency=req.currency,
            risk_version=version,
        )
        raise RiskRejected(rejection.detail, rejection.rule)
