"""Standard Webhooks signatures (API.md §2), the retry policy and the destination rules of
callbacks (`DestinationPolicy`: what a webhook endpoint or a payment's `notify_url` may name, and
which resolved addresses a callback may connect to). Pure: no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

from gateway.domain.states import DeliveryStatus

RETRY_AFTER_CAP_S = 86400.0
"""A Retry-After beyond a day is read as a day."""


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


DEFAULT_CALLBACK_PORTS = frozenset({80, 443})

_SPECIAL_IPV6 = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "2002::/16",  # 6to4: an IPv4 address inside
        "::/96",  # IPv4-compatible (deprecated)
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "64:ff9b::/96",  # NAT64, the well-known prefix
        "64:ff9b:1::/48",  # NAT64, local use
        "fec0::/10",  # site-local (deprecated)
        "2001::/32",  # Teredo: an IPv4 address and port inside
    )
)
"""IPv6 ranges that reach IPv4 (or a site) through a translator or a tunnel, which `ipaddress`
calls global: refused whatever IPv4 address they carry."""
_SPECIAL_IPV4 = (ipaddress.IPv4Network("192.0.0.0/24"),)
"""IETF protocol assignments: Python 3.11's tables know only 192.0.0.0/29 of it."""


class DestinationRefused(ValueError):
    """A callback URL that may not be delivered to. The message says what is wrong with the URL
    itself (it is shown to the merchant: nothing resolved or learnt from the network)."""


def public_address(address: str) -> bool:
    """Whether an IP address is one callbacks may reach by default: global unicast; not
    private, loopback, link-local, multicast, reserved, unspecified or shared; not one of the
    IPv6 ranges that carry an IPv4 address or a site (`_SPECIAL_IPV6`)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # no IPv6 zone: link-local anyway
    except ValueError:
        return False
    special = _SPECIAL_IPV6 if isinstance(ip, ipaddress.IPv6Address) else _SPECIAL_IPV4
    if any(ip in net for net in special):
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _literal_ip(host: str) -> str | None:
    """The host as an IP address when it is an IPv6 literal or a canonical dotted quad."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _reads_as_ipv4(host: str) -> bool:
    """Whether some parser would take this host for an IPv4 address: `inet_aton` (and so the
    system resolver) reads `2130706433`, `127.1`, `0x7f.1` or `0177.0.0.1` as 127.0.0.1; and a
    host whose last label is a number (`127.0.0.1.`, `1.2.3.4.5`) is no DNS name (RFC 3696
    §2: a top-level domain is never all-numeric)."""
    try:
        socket.inet_aton(host)
        return True
    except (OSError, ValueError):
        pass
    last = host.rstrip(".").rpartition(".")[2].lower()
    return last.isdigit() or (
        last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])
    )


def ascii_host(host: str) -> str:
    """The host as the HTTP client sends and resolves it: IDNA (which folds compatibility
    characters, so `１２７.０.０.１` becomes `127.0.0.1`), lower case. Raises
    DestinationRefused when it is no host name (an empty or over-long label)."""
    if ":" in host:  # an IPv6 literal
        return host.lower()
    try:
        return host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise DestinationRefused(f"{host} is not a valid host name") from None


@dataclass(frozen=True, slots=True)
class Destination:
    """A callback URL that passed the rules: its host as the client uses it, its port, and the
    host's address when the URL names one (no lookup then)."""

    host: str
    port: int
    address: str | None


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    """Where callbacks may go (API.md §1.6): checked at subscription and for a payment's
    `notify_url` (400), again at every delivery, and for every address a name resolves to.

    By default: http(s) only, to a name or a public address, on `allowed_ports`. With
    `allow_private` (development, tests) any address and any port. Either way an IPv4 address
    must be written a.b.c.d: any other form means what its parser makes of it."""

    allow_private: bool = False
    allowed_ports: frozenset[int] = DEFAULT_CALLBACK_PORTS

    @classmethod
    def of(cls, allow_private: bool, allowed_ports: Iterable[int]) -> DestinationPolicy:
        return cls(allow_private, frozenset(allowed_ports))

    def check_url(self, url: str) -> Destination:
        """The URL's destination; raises DestinationRefused (the message names the fault)."""
        try:
            parts = urlsplit(url)
            hostname, port = parts.hostname, parts.port
        except ValueError:  # an unbalanced bracket, a port that is not a number
            raise DestinationRefused("not a valid URL") from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise DestinationRefused("not an absolute http(s) URL")
        if parts.username is not None or parts.password is not None or "\\" in parts.netloc:
            raise DestinationRefused("the URL carries credentials")
        host = ascii_host(hostname)
        address = _literal_ip(host)
        if address is None and _reads_as_ipv4(host):
            raise DestinationRefused(
                f"{hostname} is not an IPv4 address in canonical form (a.b.c.d)"
            )
        port = port if port is not None else (443 if parts.scheme == "https" else 80)
        if self.allow_private:
            return Destination(host, port, address)
        if address is not None and not public_address(address):
            raise DestinationRefused(f"{hostname} is not a public address")
        if port not in self.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(self.allowed_ports))
            raise DestinationRefused(f"port {port} is not allowed (allowed: {allowed})")
        return Destination(host, port, address)

    def allows_address(self, address: str) -> bool:
        """Whether a callback may connect to this (resolved) address."""
        return self.allow_private or public_address(address)
