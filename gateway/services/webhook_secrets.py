"""Webhook secret rotation, behind `gateway merchant rotate-webhook-secret --merchant ID
[--grace-hours 24] --json` (gateway/cli/merchant.py), which prints the new `whsec_` secret.
Until the grace period ends, callbacks carry two signatures, `v1,<new> v1,<old>` (Standard
Webhooks), so the merchant can switch its verifier to the new secret whenever it likes within
that time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.auth.secretbox import SecretBox
from gateway.domain.models import rfc3339
from gateway.services import audit
from gateway.services.audit import Actor
from gateway.services.merchants import MerchantError, new_webhook_secret
from gateway.store import merchants as store
from gateway.store.db import Pool

MAX_GRACE_HOURS = 24 * 30


@dataclass(frozen=True, slots=True)
class RotatedSecret:
    merchant_id: str
    webhook_secret: str
    previous_secret_expires_at: datetime | None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "merchant_id": self.merchant_id,
            "webhook_secret": self.webhook_secret,
            "previous_secret_expires_at": rfc3339(self.previous_secret_expires_at),
        }


async def rotate_webhook_secret(
    pool: Pool,
    box: SecretBox,
    merchant_id: str,
    grace_hours: float,
    *,
    audit_as: Actor | None = None,
) -> RotatedSecret:
    """Give the merchant a new webhook secret; the current one keeps signing (beside the new
    one) for `grace_hours` (0: it stops at once). A rotation within a grace period drops the
    older previous secret."""
    if not 0 <= grace_hours <= MAX_GRACE_HOURS:
        raise MerchantError(f"--grace-hours must be 0 to {MAX_GRACE_HOURS}")
    secret = new_webhook_secret()
    async with pool.acquire() as conn, conn.transaction():
        found, expires = await store.rotate_webhook_secret(
            conn, merchant_id, box.seal(secret, merchant_id), grace_hours * 3600
        )
        if not found:
            raise MerchantError(f"no merchant {merchant_id}")
        if audit_as is not None:  # given by the command line (audited as cli:<user>)
            await audit.record(
                conn,
                audit_as,
                "merchant.webhook_secret_rotate",
                f"merchant:{merchant_id}",
                after={"previous_secret_expires_at": rfc3339(expires)},
            )
    return RotatedSecret(merchant_id, secret, expires)
