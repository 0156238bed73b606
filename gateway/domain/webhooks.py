"""Standard Webhooks signatures (API.md §2) and the retry schedule. Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import Sequence


def secret_bytes(whsec: str) -> bytes:
    """The key of a `whsec_<base64>` secret: the base64-decoded part."""
    return base64.b64decode(whsec.removeprefix("whsec_"))


def sign(whsec: str, msg_id: str, timestamp: int, body: bytes) -> str:
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(whsec), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(whsec: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(whsec, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "payment-gateway-webhooks/1",
    }


def next_delay(
    schedule: Sequence[float], attempts_made: int, rng: random.Random | None = None
) -> float | None:
    """Delay before the next attempt after `attempts_made` failed ones (1-based), with ±10 %
    jitter; None when the schedule is exhausted and the delivery has failed."""
    if attempts_made > len(schedule):
        return None
    base = schedule[attempts_made - 1]
    jitter = (rng or random).uniform(-0.1, 0.1) * base
    return max(0.0, base + jitter)


def parse_retry_after(value: str | None, cap_s: float = 86400.0) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only; an HTTP date is ignored)."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        return None
    return min(float(value), cap_s)
