"""Ordering a route's eligible channels. Each strategy returns every channel it is given, best
first, with the reason for its place; the engine appends the route's `fallback:` channels."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from routing.health import SuccessStats
from routing.schema import RouteConfig, SuccessRateSettings


@dataclass(frozen=True, slots=True)
class Eligible:
    """A channel that may take the payment."""

    name: str
    position: int
    """1-based place in the route's `channels:` or `weights:`."""
    fee: int


Ordered = list[tuple[Eligible, str]]


def priority(eligible: list[Eligible]) -> Ordered:
    return [(e, f"priority {e.position}") for e in sorted(eligible, key=lambda e: e.position)]


def weighted(eligible: list[Eligible], weights: Mapping[str, int], rng: random.Random) -> Ordered:
    """One weighted draw among the eligible channels (weights renormalised over them); the
    others follow as fallbacks, heaviest first."""
    rest = sorted(eligible, key=lambda e: (-weights.get(e.name, 0), e.position))
    total = sum(weights.get(e.name, 0) for e in eligible)
    if total <= 0:
        return [(e, f"weighted fallback ({weights.get(e.name, 0)}%)") for e in rest]
    draw = rng.randrange(total)
    pick = rest[0]
    for e in sorted(eligible, key=lambda e: e.position):
        draw -= weights.get(e.name, 0)
        if draw < 0:
            pick = e
            break
    weight = weights.get(pick.name, 0)
    share = f"{weight}%" if total == 100 else f"{weight}% of the eligible {total}%"
    ordered: Ordered = [(pick, f"weighted pick ({share})")]
    ordered += [
        (e, f"weighted fallback ({weights.get(e.name, 0)}%)") for e in rest if e is not pick
    ]
    return ordered


def lowest_fee(eligible: list[Eligible]) -> Ordered:
    ordered = sorted(eligible, key=lambda e: (e.fee, e.position))
    return [(e, f"lowest fee {e.fee}" if i == 0 else f"fee {e.fee}") for i, e in enumerate(ordered)]


def success_rate(
    eligible: list[Eligible],
    stats: Mapping[str, SuccessStats],
    settings: SuccessRateSettings,
    rng: random.Random,
) -> Ordered:
    """Channels with at least `min_samples` recent results, best success ratio first, then the
    unproven ones in route order. With probability `exploration` a channel other than the best
    is drawn uniformly and goes first."""

    def stat(e: Eligible) -> SuccessStats:
        return stats.get(e.name) or SuccessStats()

    measured = [e for e in eligible if stat(e).total >= settings.min_samples]
    unproven = [e for e in eligible if stat(e).total < settings.min_samples]
    measured.sort(key=lambda e: (-(stat(e).ratio or 0.0), e.position))
    unproven.sort(key=lambda e: e.position)

    def reason(e: Eligible) -> str:
        s = stat(e)
        if s.total >= settings.min_samples:
            return f"success rate {s.ratio or 0.0:.2f} ({s.total} results)"
        return f"unproven ({s.total} of {settings.min_samples} results)"

    ordered: Ordered = [(e, reason(e)) for e in [*measured, *unproven]]
    if len(ordered) > 1 and settings.exploration > 0 and rng.random() < settings.exploration:
        chosen, why = ordered.pop(rng.randrange(1, len(ordered)))
        ordered.insert(0, (chosen, f"exploration; {why}"))
    return ordered


def order(
    route: RouteConfig,
    eligible: list[Eligible],
    stats: Mapping[str, SuccessStats],
    settings: SuccessRateSettings,
    rng: random.Random,
) -> Ordered:
    if not eligible:
        return []
    if route.strategy == "weighted":
        return weighted(eligible, route.weights or {}, rng)
    if route.strategy == "lowest_fee":
        return lowest_fee(eligible)
    if route.strategy == "success_rate":
        return success_rate(eligible, stats, settings, rng)
    return priority(eligible)
