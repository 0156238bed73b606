"""Properties of the routing decision over generated files, payments and channel health."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing import health as breaker
from routing.engine import CIRCUIT_OPEN, PaymentFacts, eligibility, route
from routing.fees import fee_for
from routing.health import BreakerState, ChannelHealth, SuccessStats
from routing.loader import LoadedRouting
from routing.schema import ADAPTER_METHODS, MAX_AMOUNT, RoutingConfig

NOW = datetime(2024, 6, 5, 4, 0, tzinfo=UTC)
T = NOW.timestamp()
QUICK = settings(max_examples=150, deadline=None, database=None)
CURRENCIES = ["CNY", "HKD", "USD"]


@st.composite
def channel_specs(draw: st.DrawFn) -> dict[str, Any]:
    adapter = draw(st.sampled_from(sorted(ADAPTER_METHODS)))
    low = draw(st.integers(1, 10**6))
    high = draw(st.integers(low, MAX_AMOUNT))
    return {
        "adapter": adapter,
        "methods": sorted(ADAPTER_METHODS[adapter]),
        "currencies": draw(st.lists(st.sampled_from(CURRENCIES), min_size=1, unique=True)),
        "min_amount": low,
        "max_amount": high,
        "fee": {
            "percent": str(draw(st.integers(0, 60_000)) / 10_000),
            "fixed": draw(st.integers(0, 200)),
        },
        "enabled": draw(st.sampled_from([True, True, True, False])),
    }


healths = st.one_of(
    st.just(ChannelHealth()),
    st.builds(
        lambda ago: ChannelHealth(state=BreakerState.OPEN, opened_at=T - ago),
        st.floats(0, 60),
    ),
    st.builds(
        lambda ago, busy, probe_ago: ChannelHealth(
            state=BreakerState.HALF_OPEN,
            opened_at=T - ago,
            probes_in_flight=busy,
            probe_at=T - probe_ago,
        ),
        st.floats(30, 90),
        st.integers(0, 2),
        st.floats(0, 60),
    ),
)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[LoadedRouting, PaymentFacts, dict[str, ChannelHealth], dict[str, SuccessStats], int]:
    count = draw(st.integers(1, 6))
    names = [f"ch{i}" for i in range(count)]
    channels = {name: draw(channel_specs()) for name in names}
    order = draw(st.permutations(names))
    split = draw(st.integers(1, count))
    main, fallback = list(order[:split]), list(order[split:])
    strategy = draw(st.sampled_from(["priority", "weighted", "lowest_fee", "success_rate"]))
    route_cfg: dict[str, Any] = {"strategy": strategy, "fallback": fallback}
    if strategy == "weighted":
        cuts = sorted(
            draw(st.lists(st.integers(0, 100), min_size=len(main) - 1, max_size=len(main) - 1))
        )
        bounds = [0, *cuts, 100]
        route_cfg["weights"] = {n: bounds[i + 1] - bounds[i] for i, n in enumerate(main)}
    else:
        route_cfg["channels"] = main
    config = RoutingConfig.model_validate(
        {
            "channels": channels,
            "default": {"route": route_cfg},
            "settings": {
                "breaker": {"open_s": 30, "half_open_probes": 2},
                "success_rate": {
                    "exploration": draw(st.sampled_from([0, 0.05, 0.5])),
                    "min_samples": 5,
                },
            },
        }
    )
    loaded = LoadedRouting(config=config, version="v", path=Path("generated.yaml"))
    facts = PaymentFacts(
        method=draw(st.sampled_from(sorted({m for ms in ADAPTER_METHODS.values() for m in ms}))),
        amount=draw(st.one_of(st.integers(1, 2_000_000), st.integers(1, MAX_AMOUNT))),
        currency=draw(st.sampled_from(CURRENCIES)),
        merchant_id="m1",
        metadata={},
        now=NOW,
    )
    health = {n: draw(healths) for n in names if draw(st.booleans())}
    stats = {n: SuccessStats(draw(st.integers(0, 50)), draw(st.integers(0, 50))) for n in names}
    return loaded, facts, health, stats, draw(st.integers(0, 2**32))


@QUICK
@given(scenarios())
def test_no_ineligible_channel_is_ever_a_candidate(scenario) -> None:  # type: ignore[no-untyped-def]
    loaded, facts, health, stats, seed = scenario
    decision = route(loaded, facts, health, stats, random.Random(seed))
    config = loaded.config
    b = config.settings.breaker
    for cand in decision.candidates:
        channel = config.channels[cand.channel]
        assert eligibility(channel, facts) is None
        assert channel.enabled and facts.method in channel.methods
        assert facts.currency in channel.currencies
        assert channel.min_amount <= facts.amount <= channel.max_amount
        assert breaker.call_allowed(health.get(cand.channel, ChannelHealth()), T, b)
        assert cand.fee == fee_for(channel.fee, facts.amount)
        assert cand.adapter == channel.adapter
    listed = config.default.route.all_channels()
    seen = [c.channel for c in decision.candidates] + [s.channel for s in decision.skipped]
    assert sorted(seen) == sorted(listed)  # every route channel: kept or skipped, once
    assert decision.all_circuits_open == (
        not decision.candidates and any(s.code == CIRCUIT_OPEN for s in decision.skipped)
    )
    for skip in decision.skipped:
        channel = config.channels[skip.channel]
        if skip.code != CIRCUIT_OPEN:
            assert eligibility(channel, facts) is not None


@QUICK
@given(scenarios())
def test_lowest_fee_puts_a_minimal_fee_first(scenario) -> None:  # type: ignore[no-untyped-def]
    loaded, facts, health, stats, seed = scenario
    route_cfg = loaded.config.default.route
    if route_cfg.strategy != "lowest_fee":
        route_cfg = route_cfg.model_copy(update={"strategy": "lowest_fee"})
        if route_cfg.weights is not None:
            route_cfg = route_cfg.model_copy(
                update={"channels": list(route_cfg.weights), "weights": None}
            )
        config = loaded.config.model_copy(
            update={"default": loaded.config.default.model_copy(update={"route": route_cfg})}
        )
        loaded = LoadedRouting(config=config, version="v", path=loaded.path)
    decision = route(loaded, facts, health, stats, random.Random(seed))
    main = [c for c in decision.candidates if c.channel in route_cfg.main_channels()]
    if main:
        assert main[0].fee == min(c.fee for c in main)
        assert [c.fee for c in main] == sorted(c.fee for c in main)
        assert decision.candidates[: len(main)] == main  # fallbacks only after


@st.composite
def weight_sets(draw: st.DrawFn) -> dict[str, int]:
    count = draw(st.integers(2, 4))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, 100]
    return {f"alipay_{i}": bounds[i + 1] - bounds[i] for i in range(count)}


@settings(
    max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(weights=weight_sets(), seed=st.integers(0, 2**32))
def test_weighted_split_stays_within_tolerance(weights: dict[str, int], seed: int) -> None:
    channels = {name: {"adapter": "alipay", "methods": ["alipay_qr"]} for name in weights}
    config = RoutingConfig.model_validate(
        {"channels": channels, "default": {"route": {"strategy": "weighted", "weights": weights}}}
    )
    loaded = LoadedRouting(config=config, version="v", path=Path("w.yaml"))
    rng = random.Random(seed)
    facts = PaymentFacts("alipay_qr", 1999, "CNY", "m1", {}, NOW)
    draws = 2000
    firsts = Counter(route(loaded, facts, {}, {}, rng).candidates[0].channel for _ in range(draws))
    for name, weight in weights.items():
        # 2000 draws: the standard deviation of a share is at most 1.1 points
        assert abs(firsts[name] / draws - weight / 100) < 0.05, (name, weight, firsts)
        if weight == 0:
            assert firsts[name] == 0
