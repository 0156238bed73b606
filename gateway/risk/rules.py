"""Risk decisions, pure: given a payment's facts and the current values of the counters the
rules need, which rule refuses it, if any.

A check is two steps so that the counters cost one Redis round trip:

1. `static_rejection` — blocklists, then per-transaction amount limits, in file order: no
   counters needed.
2. `counter_checks` lists what the daily caps and velocity rules that apply to this payment
   need counted (key, limit, what a payment adds); `counters.RiskCounters` reads them all and,
   only if none would be exceeded, adds this payment to every one of them, atomically.
   `counter_rejection` names the first exceeded check from the values read: a check is
   exceeded when ``value + add > limit`` — the same test the counter script applies.

`evaluate` is both steps in one call (the reference the engine's two steps follow).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.risk.schema import (
    AmountLimit,
    Blocklist,
    DailyCap,
    IPAddress,
    RiskConfig,
    Velocity,
    normalize_ip,
)
from routing.schema import zone

DAY_KEY_GRACE_S = 3600
"""A day's counters outlive the day by this long (processes whose clocks differ slightly)."""


class RuleKind(StrEnum):
    BLOCKLIST = "blocklist"
    AMOUNT_LIMIT = "amount_limit"
    DAILY_CAP = "daily_cap"
    VELOCITY = "velocity"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the rules look at: one payment request, as the merchant sent it."""

    merchant_id: str
    method: str
    currency: str
    amount: int
    payer_id: str | None
    payer_ip: IPAddress | None
    now: datetime
    """Aware; picks the day the daily caps count in."""

    @classmethod
    def of(
        cls,
        *,
        merchant_id: str,
        method: str,
        currency: str,
        amount: int,
        payer_id: str | None = None,
        payer_ip: str | None = None,
        now: datetime,
    ) -> Facts:
        ip = normalize_ip(ipaddress.ip_address(payer_ip)) if payer_ip else None
        return cls(merchant_id, method, currency, amount, payer_id, ip, now)


@dataclass(frozen=True, slots=True)
class Rejection:
    rule: str
    kind: RuleKind
    detail: str
    """For the merchant (the problem's `detail`): never names a blocklist's entries."""
    reason: str
    """For the log: what matched or which counter was full."""


@dataclass(frozen=True, slots=True)
class CounterCheck:
    """One counter a payment must fit in. ``kind`` ``day``: the field ``field`` (``amount`` or
    ``count``) of a hash per merchant and date, living ``ttl_ms``; ``window``: a sorted set of
    the payments of the last ``ttl_ms`` milliseconds (the sliding window, also its lifetime)."""

    rule: str
    kind: Literal["day", "window"]
    key: str
    """Below the gateway's Redis prefix."""
    field: str
    add: int
    limit: int
    ttl_ms: int
    label: str
    """What is counted, for messages: "CNY amount on 2024-05-01", "payments per payer IP"."""

    def exceeded_by(self, value: int) -> bool:
        return value + self.add > self.limit


@dataclass(frozen=True, slots=True)
class _Scope:
    merchants: frozenset[str] | None
    methods: frozenset[str] | None
    currency: str | None

    @classmethod
    def of(cls, rule: Blocklist | AmountLimit | DailyCap | Velocity) -> _Scope:
        return cls(
            frozenset(rule.merchants) if rule.merchants is not None else None,
            frozenset(rule.methods) if rule.methods is not None else None,
            getattr(rule, "currency", None),
        )

    def applies(self, facts: Facts) -> bool:
        return (
            (self.merchants is None or facts.merchant_id in self.merchants)
            and (self.methods is None or facts.method in self.methods)
            and (self.currency is None or facts.currency == self.currency)
        )


class _IPMatcher:
    """Addresses and networks; a lookup masks the address once per distinct prefix length."""

    def __init__(self, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._by_prefix: dict[tuple[int, int], frozenset[int]] = {}
        grouped: dict[tuple[int, int], set[int]] = {}
        for net in networks:
            grouped.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        self._by_prefix = {key: frozenset(values) for key, values in grouped.items()}

    def match(self, ip: IPAddress) -> str | None:
        bits = ip.max_prefixlen
        value = int(ip)
        for (version, prefixlen), networks in self._by_prefix.items():
            if version != ip.version:
                continue
            masked = (value >> (bits - prefixlen)) << (bits - prefixlen) if prefixlen else 0
            if masked in networks:
                net = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
                return str(net((masked, prefixlen)))
        return None


@dataclass(frozen=True, slots=True)
class _CompiledBlocklist:
    rule: Blocklist
    scope: _Scope
    payer_ids: frozenset[str]
    ips: _IPMatcher

    def match(self, facts: Facts) -> str | None:
        if facts.payer_id is not None and facts.payer_id in self.payer_ids:
            return "payer_id is listed"
        if facts.payer_ip is not None:
            network = self.ips.match(facts.payer_ip)
            if network is not None:
                return f"payer_ip {facts.payer_ip} is in {network}"
        return None


class RiskRules:
    """A risk file's rules, compiled for fast checks (sets for lists, masks for networks)."""

    def __init__(self, config: RiskConfig) -> None:
        self.config = config
        self.zone: ZoneInfo = zone(config.timezone)
        self.blocklists = [
            _CompiledBlocklist(
                rule,
                _Scope.of(rule),
                frozenset(rule.payer_ids or ()),
                _IPMatcher(
                    [ipaddress.ip_network(ip) for ip in rule.ips or ()] + list(rule.cidrs or ())
                ),
            )
            for rule in config.blocklists
        ]
        self.limits = [(rule, _Scope.of(rule)) for rule in config.amount_limits]
        self.daily = [(rule, _Scope.of(rule)) for rule in config.daily_caps]
        self.velocity = [(rule, _Scope.of(rule)) for rule in config.velocity]


def static_rejection(rules: RiskRules, facts: Facts) -> Rejection | None:
    """The first blocklist, then amount limit, that refuses the payment."""
    for blocklist in rules.blocklists:
        if not blocklist.scope.applies(facts):
            continue
        reason = blocklist.match(facts)
        if reason is not None:
            name = blocklist.rule.name
            return Rejection(
                name,
                RuleKind.BLOCKLIST,
                f"The payment was refused by risk rule {name!r}.",
                reason,
            )
    for limit, scope in rules.limits:
        if not scope.applies(facts):
            continue
        if limit.min is not None and facts.amount < limit.min:
            bound = f"below the minimum of {limit.min}"
        elif limit.max is not None and facts.amount > limit.max:
            bound = f"above the maximum of {limit.max}"
        else:
            continue
        return Rejection(
            limit.name,
            RuleKind.AMOUNT_LIMIT,
            f"Amount {facts.amount} {facts.currency} is {bound} set by risk rule {limit.name!r}.",
            f"amount {facts.amount} {bound}",
        )
    return None


def local_day(rules: RiskRules, now: datetime) -> tuple[str, int]:
    """The date daily caps count in (``YYYYMMDD`` in the rules' zone) and how long, in
    milliseconds, a counter of that day should live: to the next local midnight, plus grace."""
    local = now.astimezone(rules.zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(), rules.zone)
    remaining = (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds()
    return local.strftime("%Y%m%d"), int((remaining + DAY_KEY_GRACE_S) * 1000)


def counter_checks(rules: RiskRules, facts: Facts) -> list[CounterCheck]:
    """The counters this payment must fit in, daily caps then velocity rules, in file order.
    A velocity rule needs the payer field it counts by: without it, the rule does not apply."""
    checks: list[CounterCheck] = []
    caps = [cap for cap, scope in rules.daily if scope.applies(facts)]
    if caps:
        day, ttl_ms = local_day(rules, facts.now)
        date = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    for cap in caps:
        key = f"risk:day:{cap.name}:{facts.merchant_id}:{day}"
        if cap.max_amount is not None:
            label = f"{cap.currency} amount on {date}"
            checks.append(
                CounterCheck(
                    cap.name, "day", key, "amount", facts.amount, cap.max_amount, ttl_ms, label
                )
            )
        if cap.max_count is not None:
            label = f"number of payments on {date}"
            checks.append(
                CounterCheck(cap.name, "day", key, "count", 1, cap.max_count, ttl_ms, label)
            )
    for rule, scope in rules.velocity:
        if not scope.applies(facts):
            continue
        if rule.per == "payer_id":
            if facts.payer_id is None:
                continue
            key = f"risk:vel:{rule.name}:id:{facts.merchant_id}:{facts.payer_id}"
        else:
            if facts.payer_ip is None:
                continue
            key = f"risk:vel:{rule.name}:ip:{facts.payer_ip.compressed}"
        label = f"payments per {rule.per.replace('_', ' ')} in {rule.window_s} s"
        checks.append(
            CounterCheck(rule.name, "window", key, "", 1, rule.max, rule.window_s * 1000, label)
        )
    return checks


def counter_rejection(checks: Sequence[CounterCheck], values: Sequence[int]) -> Rejection | None:
    """The first check the payment would exceed, given each check's current value."""
    if len(values) != len(checks):
        raise ValueError(f"{len(checks)} counter checks but {len(values)} values")
    for check, value in zip(checks, values, strict=True):
        if not check.exceeded_by(value):
            continue
        kind = RuleKind.DAILY_CAP if check.kind == "day" else RuleKind.VELOCITY
        if check.kind == "day":
            detail = (
                f"The merchant's {check.label} would reach {value + check.add}, over the cap "
                f"of {check.limit} set by risk rule {check.rule!r}."
            )
        else:
            detail = f"Too many {check.label} (at most {check.limit}, risk rule {check.rule!r})."
        return Rejection(
            check.rule, kind, detail, f"{check.label}: {value} + {check.add} > {check.limit}"
        )
    return None


def evaluate(rules: RiskRules, facts: Facts, values: Sequence[int]) -> Rejection | None:
    """Which rule refuses the payment, given the current values of `counter_checks(rules,
    facts)` (in that order), or None when it passes."""
    return static_rejection(rules, facts) or counter_rejection(counter_checks(rules, facts), values)
