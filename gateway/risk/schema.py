"""The risk file's schema (pydantic v2). Pure: no I/O.

Four kinds of rule, each a list of named entries; a payment that one of them refuses gets
403 `risk_rejected` naming the rule:

- ``blocklists``: payer ids, payer IPs and CIDR networks (IPv4 and IPv6) that are refused;
- ``amount_limits``: per-transaction ``min`` / ``max`` (minor units) per merchant and method;
- ``daily_caps``: per merchant, the ``max_amount`` and / or ``max_count`` of payments in one
  day (the local date in ``timezone``, Asia/Shanghai by default);
- ``velocity``: at most ``max`` payments ``per`` payer id or payer IP in any ``window_s``
  seconds (a sliding window).

Every rule may be scoped with ``merchants`` and ``methods`` (it then applies to those payments
only); amount limits and daily caps also apply to one ``currency`` (default CNY), since amounts
in different currencies neither compare nor add up. Rule names are unique across the file:
they are what the merchant, the logs and the metrics see, and they key the rule's counters.

The scalar types (amounts, methods, currencies, names, time zones) are the routing file's, so
the two files read and fail alike.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from routing.schema import (
    DEFAULT_TIMEZONE,
    Amount,
    ChannelName,
    Currency,
    Methods,
    Texts,
    TimeZoneName,
    _one_or_many,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_DAILY_AMOUNT = 10**15
"""Daily amount caps stay below 2^53 with a payment added, so Redis's Lua numbers are exact."""
MAX_DAILY_COUNT = 10**9
MAX_VELOCITY = 100_000
"""A velocity window keeps one entry per payment counted: this bounds its memory."""
MAX_WINDOW_S = 7 * 86_400


def _err(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("risk", message, ctx or None)


def normalize_ip(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:203.0.113.9``) is its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _ip(value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise _err("must be an IP address as a string, got {got}", got=repr(value))
    try:
        return normalize_ip(ipaddress.ip_address(value.strip()))
    except ValueError:
        hint = " (networks go under `cidrs`)" if "/" in value else ""
        raise _err("not an IPv4 or IPv6 address: {got}{hint}", got=repr(value), hint=hint) from None


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise _err("must be a network such as 203.0.113.0/24, got {got}", got=repr(value))
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise _err(
            "not an IPv4 or IPv6 network such as 203.0.113.0/24: {got}", got=repr(value)
        ) from None
    raise _err("{got} has host bits set (the network is {net})", got=repr(value), net=str(loose))


def _bounded(low: int, high: int, what: str) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err("must be an integer {what}, got {got}", what=what, got=repr(value))
        if not low <= value <= high:
            raise _err("must be between {lo} and {hi}, got {got}", lo=low, hi=high, got=value)
        return value

    return PlainValidator(check)


RuleName = ChannelName
"""1 to 64 letters, digits, '_' or '-': safe in Redis keys and metric labels."""
IPs = Annotated[list[Annotated[IPAddress, PlainValidator(_ip)]], BeforeValidator(_one_or_many)]
Networks = Annotated[
    list[Annotated[IPNetwork, PlainValidator(_network)]], BeforeValidator(_one_or_many)
]
DailyAmount = Annotated[int, _bounded(1, MAX_DAILY_AMOUNT, "amount in minor units (fen)")]
DailyCount = Annotated[int, _bounded(1, MAX_DAILY_COUNT, "count")]
VelocityMax = Annotated[int, _bounded(1, MAX_VELOCITY, "count")]
WindowSeconds = Annotated[int, _bounded(1, MAX_WINDOW_S, "number of seconds")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Rule(_Model):
    name: RuleName
    description: str | None = None
    merchants: Texts | None = None
    """Only these merchants' payments (all merchants when left out)."""
    methods: Methods | None = None
    """Only payments by these methods (all methods when left out)."""


class Blocklist(_Rule):
    """Payments whose payer id, or payer IP, is listed are refused. A payment without a payer
    id (or IP) is not matched by that part of the list."""

    payer_ids: Texts | None = None
    ips: IPs | None = None
    cidrs: Networks | None = None

    @model_validator(mode="after")
    def _something(self) -> Blocklist:
        if self.payer_ids is None and self.ips is None and self.cidrs is None:
            raise _err("give payer_ids, ips or cidrs")
        return self


class AmountLimit(_Rule):
    """Inclusive per-transaction bounds in minor units of `currency`."""

    currency: Currency = "CNY"
    min: Amount | None = None
    max: Amount | None = None

    @model_validator(mode="after")
    def _bounds(self) -> AmountLimit:
        if self.min is None and self.max is None:
            raise _err("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _err("min {lo} is above max {hi}", lo=self.min, hi=self.max)
        return self


class DailyCap(_Rule):
    """Per merchant and local date: the payments in `currency` may add up to `max_amount`
    (minor units) and number `max_count`, inclusive."""

    currency: Currency = "CNY"
    max_amount: DailyAmount | None = None
    max_count: DailyCount | None = None

    @model_validator(mode="after")
    def _something(self) -> DailyCap:
        if self.max_amount is None and self.max_count is None:
            raise _err("give max_amount, max_count or both")
        return self


class Velocity(_Rule):
    """At most `max` payments in any `window_s` seconds from one payer id (counted per
    merchant: payer ids are the merchant's own) or from one payer IP (counted across the
    merchants the rule applies to). Payments without that payer field are not counted."""

    per: Literal["payer_id", "payer_ip"]
    max: VelocityMax
    window_s: WindowSeconds


class RiskConfig(_Model):
    timezone: TimeZoneName = DEFAULT_TIMEZONE
    """The zone whose dates the daily caps count in."""
    blocklists: list[Blocklist] = Field(default_factory=list)
    amount_limits: list[AmountLimit] = Field(default_factory=list)
    daily_caps: list[DailyCap] = Field(default_factory=list)
    velocity: list[Velocity] = Field(default_factory=list)

    def named(self) -> list[tuple[str, _Rule]]:
        """(path, rule) for every rule, in the order they are checked."""
        return [
            (f"{section}[{index}]", rule)
            for section in ("blocklists", "amount_limits", "daily_caps", "velocity")
            for index, rule in enumerate(getattr(self, section))
        ]


def semantic_errors(config: RiskConfig) -> list[str]:
    """The errors pydantic cannot see, each as ``path: message``."""
    errors: list[str] = []
    seen: dict[str, str] = {}
    for path, rule in config.named():
        if rule.name in seen:
            errors.append(f"{path}.name: {rule.name!r} is already the name of {seen[rule.name]}")
        else:
            seen[rule.name] = path
    return errors
