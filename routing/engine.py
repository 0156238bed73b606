"""The routing decision: which rule a payment matches and the channels to try, in order.

Pure: everything it needs comes in as arguments (the rules in force, the payment, the channels'
health and success statistics, a random source), so the same inputs give the same decision.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from routing import health as breaker
from routing.fees import fee_for
from routing.health import ChannelHealth, SuccessStats
from routing.loader import LoadedRouting
from routing.rules import PaymentFacts, matches
from routing.schema import ChannelConfig, RouteConfig
from routing.strategies import Eligible, order

__all__ = [
    "Candidate",
    "PaymentFacts",
    "RouteDecision",
    "Skipped",
    "eligibility",
    "route",
    "select_rule",
]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A channel to try, with its fee for this payment (minor units) and why it is here."""

    channel: str
    adapter: str
    fee: int
    reason: str
    probe: bool = False
    """The channel's circuit is half-open: this call would be a probe. Take a slot with
    `ChannelHealthStore.acquire` before calling, and skip the channel if refused."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A channel of the route that may not take this payment, and why."""

    channel: str
    reason: str
    code: str = "ineligible"
    """disabled | method | currency | amount_below_min | amount_above_max | circuit_open"""


@dataclass(frozen=True, slots=True)
class RouteDecision:
    rule: str
    """The matched rule's name, or "default"."""
    strategy: str
    candidates: list[Candidate]
    """Every eligible channel, in the order to try them (the gateway stops at max_attempts)."""
    skipped: list[Skipped]
    version: str
    all_circuits_open: bool = False
    """No candidate, and only because of open circuits: answer 503 channel_unavailable."""
    max_attempts: int = 3
    retry_after_s: int | None = None
    """When every circuit is open: seconds until the first of them lets a call through."""
    rule_index: int | None = None
    """The matched rule's index in `rules:`, None for the default."""
    facts: PaymentFacts | None = field(default=None, compare=False)


CIRCUIT_OPEN = "circuit_open"


def select_rule(loaded: LoadedRouting, facts: PaymentFacts) -> tuple[int | None, str, RouteConfig]:
    """(index or None, name, route) of the first rule the payment matches, else the default.
    A rule whose route has no enabled channel is passed over as if it did not match (API.md
    §4: `enabled: false` is the operator's switch; the next rule decides)."""
    config = loaded.config
    for index, rule in enumerate(config.rules):
        if matches(rule.when, facts) and config.enabled_channels(rule.route):
            return index, rule.name, rule.route
    return None, "default", config.default.route


def eligibility(channel: ChannelConfig, facts: PaymentFacts) -> tuple[str, str] | None:
    """None when the channel's static limits allow the payment, else (code, reason)."""
    if not channel.enabled:
        return "disabled", "disabled"
    if facts.method not in channel.methods:
        return "method", f"does not serve {facts.method}"
    if facts.currency not in channel.currencies:
        return "currency", f"does not accept {facts.currency}"
    if facts.amount < channel.min_amount:
        return "amount_below_min", f"amount below limit (min {channel.min_amount})"
    if facts.amount > channel.max_amount:
        return "amount_above_max", f"amount above limit (max {channel.max_amount})"
    return None


def route(
    loaded: LoadedRouting,
    facts: PaymentFacts,
    health: Mapping[str, ChannelHealth],
    stats: Mapping[str, SuccessStats],
    rng: random.Random,
) -> RouteDecision:
    """Decide where the payment goes. A channel missing from `health` counts as healthy, one
    missing from `stats` as having no results."""
    config = loaded.config
    settings = config.settings
    index, rule_name, route_cfg = select_rule(loaded, facts)
    now = facts.now.timestamp()
    amount = max(0, facts.amount)

    main: list[Eligible] = []
    fallback: list[Eligible] = []
    probes: set[str] = set()
    skipped: list[Skipped] = []
    waits: list[float] = []
    main_names = route_cfg.main_channels()
    for position, name in enumerate(route_cfg.all_channels(), start=1):
        channel = config.channels[name]
        refusal = eligibility(channel, facts)
        if refusal is not None:
            skipped.append(Skipped(name, refusal[1], refusal[0]))
            continue
        state = health.get(name) or breaker.HEALTHY
        if not breaker.call_allowed(state, now, settings.breaker):
            wait = breaker.retry_after(state, now, settings.breaker)
            waits.append(wait if wait is not None else settings.breaker.open_s)
            shown = breaker.effective_state(state, now, settings.breaker).value
            reason = "circuit open" if shown == "open" else "circuit half-open, probes busy"
            skipped.append(Skipped(name, reason, CIRCUIT_OPEN))
            continue
        if breaker.is_probe(state, now, settings.breaker):
            probes.add(name)
        item = Eligible(name=name, position=position, fee=fee_for(channel.fee, amount))
        if position <= len(main_names):
            main.append(item)
        else:
            fallback.append(item)

    ordered = order(route_cfg, main, stats, settings.success_rate, rng)
    ordered += [(item, "fallback") for item in fallback]
    candidates = [
        Candidate(
            channel=item.name,
            adapter=config.channels[item.name].adapter,
            fee=item.fee,
            reason=reason + (" (half-open probe)" if item.name in probes else ""),
            probe=item.name in probes,
        )
        for item, reason in ordered
    ]
    all_open = not candidates and any(s.code == CIRCUIT_OPEN for s in skipped)
    return RouteDecision(
        rule=rule_name,
        strategy=route_cfg.strategy,
        candidates=candidates,
        skipped=skipped,
        version=loaded.version,
        all_circuits_open=all_open,
        max_attempts=settings.max_attempts,
        retry_after_s=max(1, math.ceil(min(waits))) if all_open and waits else None,
        rule_index=index,
        facts=facts,
    )
