"""Matching a payment against `when:` conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from routing.engine import route, select_rule
from routing.rules import PaymentFacts, matches, mismatch
from routing.schema import Condition

SHANGHAI = timezone(timedelta(hours=8))
NOON = datetime(2024, 6, 5, 12, 0, tzinfo=SHANGHAI)  # a Wednesday


def cond(data: dict[str, Any]) -> Condition:
    return Condition.model_validate(data)


def facts(**kw: Any) -> PaymentFacts:
    base: dict[str, Any] = {
        "method": "card",
        "amount": 1999,
        "currency": "CNY",
        "merchant_id": "m1",
        "metadata": {},
        "now": NOON,
    }
    base.update(kw)
    return PaymentFacts(**base)


def test_no_condition_matches_everything() -> None:
    assert matches(None, facts())
    assert matches(cond({}), facts())


@pytest.mark.parametrize(
    ("when", "yes", "no"),
    [
        ({"method": "card"}, {"method": "card"}, {"method": "alipay_qr"}),
        ({"method": ["card", "wechat_qr"]}, {"method": "wechat_qr"}, {"method": "unionpay_qr"}),
        ({"currency": "CNY"}, {"currency": "CNY"}, {"currency": "HKD"}),
        ({"currency": ["HKD", "USD"]}, {"currency": "USD"}, {"currency": "CNY"}),
        ({"merchant": "m1"}, {"merchant_id": "m1"}, {"merchant_id": "m2"}),
        ({"merchant": ["m1", "m3"]}, {"merchant_id": "m3"}, {"merchant_id": None}),
        ({"metadata": {"tier": "gold"}}, {"metadata": {"tier": "gold"}}, {"metadata": {}}),
        (
            {"metadata": {"tier": ["gold", "vip"], "cart": "c1"}},
            {"metadata": {"tier": "vip", "cart": "c1", "x": "y"}},
            {"metadata": {"tier": "vip", "cart": "c2"}},
        ),
        ({"metadata": {"n": 7}}, {"metadata": {"n": "7"}}, {"metadata": {"n": "8"}}),
    ],
)
def test_each_condition(when: dict[str, Any], yes: dict[str, Any], no: dict[str, Any]) -> None:
    assert matches(cond(when), facts(**yes))
    assert not matches(cond(when), facts(**no))


@pytest.mark.parametrize(
    ("bounds", "inside", "outside"),
    [
        ({"min": 100, "max": 500}, [100, 300, 500], [99, 501]),
        ({"min": 100}, [100, 10**11], [1, 99]),
        ({"max": 100}, [1, 100], [101]),
    ],
)
def test_amount_ranges_are_inclusive(
    bounds: dict[str, int], inside: list[int], outside: list[int]
) -> None:
    c = cond({"amount": bounds})
    assert all(matches(c, facts(amount=a)) for a in inside)
    assert not any(matches(c, facts(amount=a)) for a in outside)


def test_keys_of_one_condition_all_hold() -> None:
    c = cond({"method": "card", "amount": {"min": 1000}, "merchant": "m1"})
    assert matches(c, facts())
    assert not matches(c, facts(amount=999))
    assert not matches(c, facts(merchant_id="m2"))
    assert not matches(c, facts(method="alipay_qr"))


def test_all_any_not() -> None:
    c = cond(
        {
            "all": [{"method": ["card", "alipay_qr"]}, {"amount": {"min": 100}}],
            "any": [{"merchant": "m1"}, {"metadata": {"tier": "gold"}}],
            "not": {"currency": "HKD"},
        }
    )
    assert matches(c, facts())
    assert matches(c, facts(merchant_id="m9", metadata={"tier": "gold"}))
    assert not matches(c, facts(merchant_id="m9"))  # any: neither
    assert not matches(c, facts(amount=50))  # all: second fails
    assert not matches(c, facts(currency="HKD"))  # not
    nested = cond({"not": {"any": [{"method": "card"}, {"all": [{"merchant": "m2"}]}]}})
    assert not matches(nested, facts())
    assert not matches(nested, facts(method="wechat_qr", merchant_id="m2"))
    assert matches(nested, facts(method="wechat_qr"))


def test_mismatch_says_why() -> None:
    assert mismatch(cond({"method": "alipay_qr"}), facts()) == "method card not in [alipay_qr]"
    assert mismatch(cond({"amount": {"min": 5000}}), facts()) == "amount 1999 below 5000"
    assert mismatch(cond({"amount": {"max": 5}}), facts()) == "amount 1999 above 5"
    assert mismatch(cond({"metadata": {"t": "x"}}), facts()) == "metadata t missing not in [x]"
    assert mismatch(cond({"any": [{"currency": "HKD"}, {"merchant": "m2"}]}), facts()) == (
        "any: none matched (currency CNY not in [HKD]; merchant m1 not in [m2])"
    )
    assert mismatch(cond({"not": {"method": "card"}}), facts()) == (
        "not: the excluded condition matched"
    )
    assert mismatch(cond({"all": [{}, {"merchant": "m2"}]}), facts()) == (
        "all[1]: merchant m1 not in [m2]"
    )


# ---- time windows ---------------------------------------------------------------------------


def at(hh: int, mm: int, day: int = 5) -> datetime:
    """Local Shanghai time on June `day` 2024 (the 5th is a Wednesday)."""
    return datetime(2024, 6, day, hh, mm, tzinfo=SHANGHAI)


@pytest.mark.parametrize(
    ("when", "inside", "outside"),
    [
        ("09:00-17:00", [(9, 0), (12, 30), (16, 59)], [(8, 59), (17, 0), (23, 0)]),
        ("22:00-06:00", [(22, 0), (23, 59), (0, 0), (5, 59)], [(6, 0), (12, 0), (21, 59)]),
        ("20:00-24:00", [(20, 0), (23, 59)], [(0, 0), (19, 59)]),
        ("00:00-00:30", [(0, 0), (0, 29)], [(0, 30), (23, 59)]),
    ],
)
def test_time_windows(
    when: str, inside: list[tuple[int, int]], outside: list[tuple[int, int]]
) -> None:
    c = cond({"time": {"window": when}})
    for hh, mm in inside:
        assert matches(c, facts(now=at(hh, mm))), (when, hh, mm)
    for hh, mm in outside:
        assert not matches(c, facts(now=at(hh, mm))), (when, hh, mm)


def test_time_is_evaluated_in_the_window_timezone() -> None:
    shanghai = cond({"time": {"window": "09:00-10:00"}})  # default Asia/Shanghai
    london = cond({"time": {"window": "09:00-10:00", "timezone": "Europe/London"}})
    utc_0130 = datetime(2024, 1, 10, 1, 30, tzinfo=UTC)  # 09:30 in Shanghai, 01:30 in London
    assert matches(shanghai, facts(now=utc_0130))
    assert not matches(london, facts(now=utc_0130))
    assert matches(london, facts(now=datetime(2024, 1, 10, 9, 30, tzinfo=UTC)))
    # London summer time: 09:30 BST is 08:30 UTC
    assert matches(london, facts(now=datetime(2024, 7, 10, 8, 30, tzinfo=UTC)))


def test_naive_now_is_taken_as_utc() -> None:
    c = cond({"time": {"window": "09:00-10:00"}})
    assert matches(c, facts(now=datetime(2024, 1, 10, 1, 30)))


def test_several_windows() -> None:
    c = cond({"time": {"window": ["08:00-09:00", "18:00-19:00"]}})
    assert matches(c, facts(now=at(8, 30)))
    assert matches(c, facts(now=at(18, 30)))
    assert not matches(c, facts(now=at(12, 0)))


def test_days_belong_to_the_night_that_started_them() -> None:
    # Friday night 22:00 to Saturday 06:00
    c = cond({"time": {"window": "22:00-06:00", "days": ["fri"]}})
    assert matches(c, facts(now=at(23, 0, day=7)))  # Friday 23:00
    assert matches(c, facts(now=at(2, 0, day=8)))  # Saturday 02:00: still Friday's night
    assert not matches(c, facts(now=at(2, 0, day=7)))  # Friday 02:00 is Thursday's night
    assert not matches(c, facts(now=at(23, 0, day=8)))  # Saturday 23:00
    weekend = cond({"time": {"window": "00:00-24:00", "days": ["sat", "sun"]}})
    assert matches(weekend, facts(now=at(12, 0, day=8)))
    assert matches(weekend, facts(now=at(0, 0, day=9)))
    assert not matches(weekend, facts(now=at(23, 59, day=7)))
    assert mismatch(weekend, facts(now=at(23, 59, day=7))) == (
        "time Fri 23:59 Asia/Shanghai outside 00:00-24:00 on sat,sun"
    )


# ---- rule order -----------------------------------------------------------------------------


def test_first_matching_rule_wins_then_default(data, load) -> None:  # type: ignore[no-untyped-def]
    import random

    data["rules"] = [
        {"name": "big", "when": {"amount": {"min": 10000}}, "route": {"channels": ["bank_a"]}},
        {"name": "cards", "when": {"method": "card"}, "route": {"channels": ["bank_b"]}},
    ]
    loaded = load(data)
    assert select_rule(loaded, facts(amount=50000))[:2] == (0, "big")
    assert select_rule(loaded, facts(amount=500))[:2] == (1, "cards")
    assert select_rule(loaded, facts(method="alipay_qr"))[:2] == (None, "default")
    decision = route(loaded, facts(method="alipay_qr"), {}, {}, random.Random(0))
    assert decision.rule == "default" and decision.rule_index is None
    assert [c.channel for c in decision.candidates] == ["alipay_main"]
