"""Standard Webhooks signatures (API.md §2), the retry policy and the destination rules of
callbacks. Pure: no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from gateway.domain.states import DeliveryStatus

RETRY_AFTER_CAP_S = 86400.0
"""A Retry-After beyond a day is read as a day."""
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def secret_bytes(whsec: str) -> bytes:
    """The key of a `whsec_<base64>` secret: the base64-decoded part."""
    return base64.b64decode(whsec.removeprefix("whsec_"))


def sign(whsec: str, msg_id: str, timestamp: int, body: bytes) -> str:
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(whsec), to_sign, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(
    whsec: str,
    msg_id: str,
    timestamp: int,
    body: bytes,
    previous: Sequence[str] = (),
    request_id: str | None = None,
) -> dict[str, str]:
    """The callback's headers. During a secret rotation's grace period `previous` holds the old
    secret: `webhook-signature` then carries both signatures, space-separated, the new one first
    (Standard Webhooks lets a receiver accept any of them). `request_id`, that of the request or
    job that caused the event, goes in `X-Request-Id` (outside the signature, which covers
    `webhook-id.webhook-timestamp.body` only); no such header without one."""
    signatures = [sign(s, msg_id, timestamp, body) for s in (whsec, *previous)]
    result = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
        "user-agent": "payment-gateway-webhooks/1",
        "accept-encoding": "identity",
    }
    if request_id:
        result["X-Request-Id"] = request_id
    return result


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


def parse_retry_after(
    value: str | None, cap_s: float = RETRY_AFTER_CAP_S, now: datetime | None = None
) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
    None when absent, unreadable or already past."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap_s)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(seconds, cap_s) if seconds > 0 else None


Verdict = Literal["succeeded", "retry", "exhausted", "gone"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt's answer means for its delivery."""

    verdict: Verdict
    delay_s: float | None = None
    """Seconds until the next attempt (verdict `retry` only)."""

    @property
    def delivery_status(self) -> DeliveryStatus:
        """The delivery's status after this attempt."""
        if self.verdict == "succeeded":
            return DeliveryStatus.SUCCEEDED
        return DeliveryStatus.PENDING if self.verdict == "retry" else DeliveryStatus.FAILED


def classify(
    status_code: int | None,
    attempts_made: int,
    schedule: Sequence[float],
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """Any 2xx is success; 410 Gone ends the delivery (and disables a subscribed endpoint);
    anything else (another status, a redirect, no answer) is retried on the schedule, or after
    Retry-After when a 429 or 503 gives one, until the schedule is exhausted."""
    if status_code is not None and 200 <= status_code < 300:
        return Outcome("succeeded")
    if status_code == 410:
        return Outcome("gone")
    delay = next_delay(schedule, attempts_made, rng)
    if delay is None:
        return Outcome("exhausted")
    if status_code in (429, 503) and retry_after_s is not None:
        delay = retry_after_s  # the receiver said when it can take it
    return Outcome("retry", delay)


def public_address(address: str) -> bool:
    """Whether an IP address is one callbacks may reach by default: global unicast, not
    loopback, private, link-local, shared, reserved, or such an address dressed as IPv6."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # no IPv6 zone: link-local anyway
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


def literal_ip(host: str) -> str | None:
    """The host as an IP address when it is one (brackets of an IPv6 literal removed)."""
    candidate = host.strip("[]")
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None
