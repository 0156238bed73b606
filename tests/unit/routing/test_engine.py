"""The routing decision: eligibility, each strategy, fallbacks, the breaker's effect."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from routing.engine import Candidate, PaymentFacts, RouteDecision, Skipped, route
from routing.health import BreakerState, ChannelHealth, SuccessStats
from routing.loader import LoadedRouting

NOW = datetime(2024, 6, 5, 4, 0, tzinfo=UTC)
T = NOW.timestamp()


def pay(method: str = "card", amount: int = 1999, currency: str = "CNY", **kw: Any) -> PaymentFacts:
    return PaymentFacts(
        method, amount, currency, kw.get("merchant_id", "m1"), kw.get("metadata", {}), NOW
    )


def decide(
    loaded: LoadedRouting,
    facts: PaymentFacts,
    health: dict[str, ChannelHealth] | None = None,
    stats: dict[str, SuccessStats] | None = None,
    seed: int = 0,
) -> RouteDecision:
    return route(loaded, facts, health or {}, stats or {}, random.Random(seed))


def names(decision: RouteDecision) -> list[str]:
    return [c.channel for c in decision.candidates]


def with_default(data: dict[str, Any], **route_cfg: Any) -> dict[str, Any]:
    data["default"] = {"route": route_cfg}
    return data


OPEN = ChannelHealth(state=BreakerState.OPEN, opened_at=T - 5)


# ---- priority and eligibility ---------------------------------------------------------------


def test_priority_keeps_the_listed_order_with_fees(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(with_default(data, channels=["bank_b", "bank_a"]))
    decision = decide(loaded, pay(amount=20000))
    assert decision.candidates == [
        Candidate("bank_b", "bank", 120, "priority 1"),  # 0.5 % + 20
        Candidate("bank_a", "bank", 120, "priority 2"),  # 0.6 %
    ]
    assert decision.rule == "default" and decision.strategy == "priority"
    assert decision.version == loaded.version
    assert decision.max_attempts == 3
    assert not decision.skipped and not decision.all_circuits_open


def test_ineligible_channels_are_skipped_with_their_reason(data, load) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bank_a"]["enabled"] = False
    loaded = load(
        with_default(
            data,
            channels=["bank_a", "bank_b", "alipay_main"],
            fallback=["unionpay_main"],
        )
    )
    low = decide(loaded, pay(amount=50))
    assert low.candidates == []
    assert low.skipped == [
        Skipped("bank_a", "disabled", "disabled"),
        Skipped("bank_b", "amount below limit (min 100)", "amount_below_min"),
        Skipped("alipay_main", "does not serve card", "method"),
        Skipped("unionpay_main", "does not serve card", "method"),
    ]
    assert not low.all_circuits_open and low.retry_after_s is None
    high = decide(loaded, pay(amount=1_000_001))
    assert high.skipped[1] == Skipped(
        "bank_b", "amount above limit (max 1000000)", "amount_above_max"
    )
    usd = decide(loaded, pay(method="unionpay_qr", currency="USD"))
    assert usd.skipped[3] == Skipped("unionpay_main", "does not accept USD", "currency")


def test_fallback_channels_come_last(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(with_default(data, channels=["bank_b"], fallback=["alipay_main", "bank_a"]))
    decision = decide(loaded, pay())
    assert [(c.channel, c.reason) for c in decision.candidates] == [
        ("bank_b", "priority 1"),
        ("bank_a", "fallback"),
    ]


def test_max_attempts_is_passed_on_not_applied(data, load) -> None:  # type: ignore[no-untyped-def]
    data["settings"] = {"max_attempts": 1}
    loaded = load(with_default(data, channels=["bank_a", "bank_b"]))
    decision = decide(loaded, pay())
    assert decision.max_attempts == 1 and names(decision) == ["bank_a", "bank_b"]


# ---- rules left with no enabled channel ---------------------------------------------------


def test_a_rule_with_no_enabled_channel_is_passed_over(data, load) -> None:  # type: ignore[no-untyped-def]
    data["rules"] = [
        {"name": "big", "when": {"method": "card", "amount": {"min": 5000}},
         "route": {"channels": ["bank_b"], "fallback": ["bank_a"]}},
        {"name": "cards", "when": {"method": "card"}, "route": {"channels": ["bank_a"]}},
    ]  # fmt: skip
    data["channels"]["bank_b"]["enabled"] = False
    loaded = load(data)
    # bank_a, a fallback of `big`, is still enabled: `big` decides
    decision = decide(loaded, pay(amount=9000))
    assert (decision.rule, decision.rule_index, names(decision)) == ("big", 0, ["bank_a"])
    data["channels"]["bank_a"]["enabled"] = False
    loaded = load(data)
    # now neither rule has an enabled channel: both are passed over, the default decides
    decision = decide(loaded, pay(amount=9000))
    assert (decision.rule, decision.rule_index) == ("default", None)
    assert decision.candidates == [] and not decision.all_circuits_open  # 422 no_route
    assert decision.skipped[0] == Skipped("bank_a", "disabled", "disabled")


def test_the_next_rule_decides_for_a_rule_passed_over(data, load) -> None:  # type: ignore[no-untyped-def]
    data["rules"] = [
        {"name": "first", "when": {"method": "card"}, "route": {"channels": ["bank_b"]}},
        {"name": "second", "when": {"method": ["card", "alipay_qr"]},
         "route": {"channels": ["bank_a", "alipay_main"]}},
    ]  # fmt: skip
    data["channels"]["bank_b"]["enabled"] = False
    decision = decide(load(data), pay(amount=9000))
    assert (decision.rule, decision.rule_index, names(decision)) == ("second", 1, ["bank_a"])


# ---- circuit breaker ------------------------------------------------------------------------


def test_open_circuit_is_skipped(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(with_default(data, channels=["bank_a", "bank_b"]))
    decision = decide(loaded, pay(), {"bank_a": OPEN})
    assert names(decision) == ["bank_b"]
    assert decision.skipped == [Skipped("bank_a", "circuit open", "circuit_open")]
    assert not decision.all_circuits_open


def test_all_circuits_open(data, load) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bank_b"]["enabled"] = False
    loaded = load(with_default(data, channels=["bank_a", "bank_b", "alipay_main"]))
    decision = decide(loaded, pay(), {"bank_a": OPEN, "alipay_main": OPEN})
    assert decision.candidates == []
    assert decision.all_circuits_open
    assert decision.retry_after_s == 25  # opened 5 s ago, open_s 30
    assert [s.code for s in decision.skipped] == ["circuit_open", "disabled", "method"]


def test_due_circuit_is_a_probe(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(with_default(data, channels=["bank_a", "bank_b"]))
    due = ChannelHealth(state=BreakerState.OPEN, opened_at=T - 31)
    decision = decide(loaded, pay(), {"bank_a": due})
    assert decision.candidates[0] == Candidate(
        "bank_a", "bank", 12, "priority 1 (half-open probe)", probe=True
    )
    assert not decision.candidates[1].probe
    busy = ChannelHealth(
        state=BreakerState.HALF_OPEN, opened_at=T - 40, probes_in_flight=1, probe_at=T - 1
    )
    decision = decide(loaded, pay(), {"bank_a": busy})
    assert names(decision) == ["bank_b"]
    assert decision.skipped == [Skipped("bank_a", "circuit half-open, probes busy", "circuit_open")]


# ---- weighted -------------------------------------------------------------------------------


def weighted(data: dict[str, Any], **weights: int) -> dict[str, Any]:
    data["rules"] = [
        {
            "name": "split",
            "when": {"method": "alipay_qr"},
            "route": {"strategy": "weighted", "weights": weights, "fallback": ["unionpay_main"]},
        }
    ]
    return data


def test_weighted_pick_then_heaviest_first(data, load) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["alipay_3"] = {"adapter": "alipay", "methods": ["alipay_qr"]}
    loaded = load(weighted(data, alipay_main=20, alipay_backup=50, alipay_3=30))
    firsts = Counter()
    for seed in range(3000):
        decision = decide(loaded, pay("alipay_qr"), seed=seed)
        first, *rest = decision.candidates
        firsts[first.channel] += 1
        assert first.reason.startswith("weighted pick (")
        expected_rest = [
            n for n in ["alipay_backup", "alipay_3", "alipay_main"] if n != first.channel
        ]
        assert [c.channel for c in rest] == expected_rest
        assert all(c.reason.startswith("weighted fallback") for c in rest)
    assert abs(firsts["alipay_main"] / 3000 - 0.2) < 0.04
    assert abs(firsts["alipay_backup"] / 3000 - 0.5) < 0.04
    assert abs(firsts["alipay_3"] / 3000 - 0.3) < 0.04


def test_weighted_renormalises_over_the_eligible(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(weighted(data, alipay_main=70, alipay_backup=30))
    for seed in range(50):
        decision = decide(loaded, pay("alipay_qr"), {"alipay_main": OPEN}, seed=seed)
        assert decision.candidates[0] == Candidate(
            "alipay_backup", "alipay", 11, "weighted pick (30% of the eligible 30%)"
        )


def test_zero_weight_is_only_a_fallback(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(weighted(data, alipay_main=100, alipay_backup=0))
    for seed in range(50):
        assert names(decide(loaded, pay("alipay_qr"), seed=seed)) == [
            "alipay_main",
            "alipay_backup",
        ]
    alone = decide(loaded, pay("alipay_qr"), {"alipay_main": OPEN})
    assert alone.candidates[0] == Candidate("alipay_backup", "alipay", 11, "weighted fallback (0%)")


# ---- lowest fee -----------------------------------------------------------------------------


def test_lowest_fee_is_computed_per_payment(data, load) -> None:  # type: ignore[no-untyped-def]
    # bank_a 0.6 %, bank_b 0.5 % + 20 fen: bank_b is cheaper from 200 yuan up
    loaded = load(with_default(data, strategy="lowest_fee", channels=["bank_a", "bank_b"]))
    small = decide(loaded, pay(amount=10_000))
    assert [(c.channel, c.fee, c.reason) for c in small.candidates] == [
        ("bank_a", 60, "lowest fee 60"),
        ("bank_b", 70, "fee 70"),
    ]
    tie = decide(loaded, pay(amount=20_000))  # 120 each: the listed order breaks ties
    assert names(tie) == ["bank_a", "bank_b"]
    large = decide(loaded, pay(amount=100_000))
    assert [(c.channel, c.fee) for c in large.candidates] == [("bank_b", 520), ("bank_a", 600)]


# ---- success rate ---------------------------------------------------------------------------


def rate_route(data: dict[str, Any], exploration: float) -> dict[str, Any]:
    data["channels"]["alipay_3"] = {"adapter": "alipay", "methods": ["alipay_qr"]}
    data["settings"] = {"success_rate": {"exploration": exploration, "min_samples": 10}}
    data["rules"] = [
        {
            "name": "adaptive",
            "when": {"method": "alipay_qr"},
            "route": {
                "strategy": "success_rate",
                "channels": ["alipay_main", "alipay_backup", "alipay_3"],
            },
        }
    ]
    return data


def test_success_rate_orders_by_recent_ratio(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(rate_route(data, exploration=0))
    stats = {
        "alipay_main": SuccessStats(80, 20),
        "alipay_backup": SuccessStats(95, 5),
        "alipay_3": SuccessStats(3, 0),  # unproven: fewer than min_samples
    }
    decision = decide(loaded, pay("alipay_qr"), stats=stats)
    assert [(c.channel, c.reason) for c in decision.candidates] == [
        ("alipay_backup", "success rate 0.95 (100 results)"),
        ("alipay_main", "success rate 0.80 (100 results)"),
        ("alipay_3", "unproven (3 of 10 results)"),
    ]
    nothing = decide(loaded, pay("alipay_qr"))
    assert names(nothing) == ["alipay_main", "alipay_backup", "alipay_3"]


def test_success_rate_explores(data, load) -> None:  # type: ignore[no-untyped-def]
    stats = {
        "alipay_main": SuccessStats(80, 20),
        "alipay_backup": SuccessStats(95, 5),
        "alipay_3": SuccessStats(90, 10),
    }
    always = load(rate_route(data, exploration=1))
    firsts = Counter()
    for seed in range(400):
        decision = decide(always, pay("alipay_qr"), stats=stats, seed=seed)
        firsts[decision.candidates[0].channel] += 1
        assert decision.candidates[0].reason.startswith("exploration; ")
        assert sorted(names(decision)) == ["alipay_3", "alipay_backup", "alipay_main"]
    assert firsts["alipay_backup"] == 0
    assert firsts["alipay_main"] > 100 and firsts["alipay_3"] > 100

    loaded = load(rate_route(data, exploration=0.05))
    explored = sum(
        decide(loaded, pay("alipay_qr"), stats=stats, seed=s).candidates[0].channel
        != "alipay_backup"
        for s in range(4000)
    )
    assert 100 < explored < 300  # about 5 %


# ---- purity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["card", "alipay_qr", "wechat_qr", "unionpay_qr"])
def test_same_inputs_same_decision(data, load, method: str) -> None:  # type: ignore[no-untyped-def]
    loaded = load(weighted(data, alipay_main=50, alipay_backup=50))
    assert decide(loaded, pay(method), seed=7) == decide(loaded, pay(method), seed=7)
