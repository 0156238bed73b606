"""Validation of the routing file: every refusal names the path of the offending value."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.engine import PaymentFacts, route
from routing.loader import RoutingError, load_routing, parse_routing
from routing.schema import ADAPTER_METHODS, MAX_AMOUNT, METHODS, Window

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "config" / "routing.yaml"
ENV = {"GATEWAY_PUBLIC_URL": "http://127.0.0.1:8080"}


# ---- the shipped file -----------------------------------------------------------------------


def test_shipped_file_is_valid_and_points_at_the_simulators() -> None:
    loaded = load_routing(SHIPPED, ENV)
    channels = loaded.config.channels
    assert {ch.adapter for ch in channels.values()} == set(ADAPTER_METHODS)
    per_adapter: dict[str, int] = {}
    for name, ch in channels.items():
        per_adapter[ch.adapter] = per_adapter.get(ch.adapter, 0) + 1
        assert ch.config["base_url"] == f"http://127.0.0.1:8080/sim/{ch.adapter}", name
    assert max(per_adapter.values()) >= 2
    assert "alipay_main" in channels and "alipay_backup" in channels
    assert len(loaded.version) == 12


def test_shipped_file_shows_every_feature() -> None:
    config = load_routing(SHIPPED, ENV).config
    strategies = {r.route.strategy for r in config.rules} | {config.default.route.strategy}
    assert strategies == {"priority", "weighted", "lowest_fee", "success_rate"}
    conds = [r.when for r in config.rules if r.when is not None]

    def walk(c):  # type: ignore[no-untyped-def]
        yield c
        for part in [*(c.all_ or ()), *(c.any_ or ())]:
            yield from walk(part)
        if c.not_ is not None:
            yield from walk(c.not_)

    flat = [c for cond in conds for c in walk(cond)]
    for key in ("method", "currency", "amount", "merchant", "metadata", "time"):
        assert any(getattr(c, key) is not None for c in flat), key
    for key in ("all_", "any_", "not_"):
        assert any(getattr(c, key) is not None for c in flat), key
    assert any(c.time is not None and c.time.window[0].crosses_midnight for c in flat)
    assert any(not ch.enabled for ch in config.channels.values())
    assert any(r.route.fallback for r in config.rules)


@pytest.mark.parametrize(
    ("method", "adapter"),
    [
        ("card", "bank"),
        ("wechat_qr", "wechat"),
        ("alipay_qr", "alipay"),
        ("unionpay_qr", "unionpay"),
    ],
)
@pytest.mark.parametrize("amount", [1, 99, 1999, 5_000_001, MAX_AMOUNT])
def test_shipped_file_routes_plain_payments(method: str, adapter: str, amount: int) -> None:
    import random

    loaded = load_routing(SHIPPED, ENV)
    decision = route(
        loaded, PaymentFacts(method, amount, "CNY", "mch_any", {}), {}, {}, random.Random(1)
    )
    assert decision.candidates, decision
    assert {c.adapter for c in decision.candidates} == {adapter}


# ---- cross-file checks ----------------------------------------------------------------------


def _rules(data, *rules):  # type: ignore[no-untyped-def]
    data["rules"] = list(rules)
    return data


def _rule(name, route, when=None):  # type: ignore[no-untyped-def]
    rule = {"name": name, "route": route}
    if when is not None:
        rule["when"] = when
    return rule


def test_unknown_channel_names_its_path(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("a", {"channels": ["bank_a"]}, {"method": "card", "amount": {"max": 10}}),
        _rule("b", {"channels": ["bank_b"]}, {"method": "card", "amount": {"max": 20}}),
        _rule("c", {"channels": ["alipay_main", "alipay_bak"]}, {"method": "alipay_qr"}),
    )
    assert errors_of(data) == ["rules[2].route.channels: unknown channel 'alipay_bak'"]


def test_unknown_channel_in_weights_fallback_and_default(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule(
            "w",
            {"strategy": "weighted", "weights": {"alipay_main": 50, "nope": 50}},
            {"method": "alipay_qr"},
        ),
    )
    data["default"]["route"]["fallback"] = ["ghost"]
    assert errors_of(data) == [
        "rules[0].route.weights.nope: unknown channel 'nope'",
        "default.route.fallback: unknown channel 'ghost'",
    ]


def test_weights_must_add_up_to_100(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule(
            "w",
            {"strategy": "weighted", "weights": {"alipay_main": 60, "alipay_backup": 30}},
            {"method": "alipay_qr"},
        ),
    )
    assert errors_of(data) == ["rules[0].route.weights: weights add up to 90, not 100"]


def test_weight_range(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["default"]["route"] = {
        "strategy": "weighted",
        "weights": {"alipay_main": 120, "alipay_backup": -20},
    }
    assert errors_of(data) == [
        "default.route.weights.alipay_main: input should be less than or equal to 100",
        "default.route.weights.alipay_backup: input should be greater than or equal to 0",
    ]


def test_strategy_and_channel_list_must_agree(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("w", {"strategy": "weighted", "channels": ["alipay_main"]}, {"method": "alipay_qr"}),
        _rule("p", {"strategy": "priority", "weights": {"bank_a": 100}}, {"method": "card"}),
    )
    assert errors_of(data) == [
        "rules[0].route.channels: the weighted strategy takes `weights: {channel: percent}` "
        "instead of `channels`",
        "rules[0].route.weights: required by the weighted strategy",
        "rules[1].route.weights: only the weighted strategy takes weights (this route's "
        "strategy is priority)",
        "rules[1].route.channels: required by the priority strategy",
    ]


def test_unknown_strategy(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["default"]["route"]["strategy"] = "cheapest"
    assert errors_of(data) == [
        "default.route.strategy: unknown strategy 'cheapest' (known: priority, weighted, "
        "lowest_fee, success_rate)"
    ]


def test_channel_listed_twice_in_a_route(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["default"]["route"] = {"channels": ["bank_a", "bank_b"], "fallback": ["bank_a"]}
    assert errors_of(data) == [
        "default.route.fallback[0]: channel 'bank_a' is already listed at default.route.channels[0]"
    ]


def test_rule_after_a_catch_all_can_never_match(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("cards", {"channels": ["bank_a"]}, {"method": "card"}),
        _rule("everything", {"channels": ["bank_a", "alipay_main"]}),
        _rule("alipay", {"channels": ["alipay_main"]}, {"method": "alipay_qr"}),
    )
    assert errors_of(data) == [
        "rules[2]: rule 'alipay' can never match: rule 'everything' (rules[1]) above it "
        "matches every payment"
    ]


def test_rule_inside_an_earlier_broader_rule_can_never_match(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("cards", {"channels": ["bank_a", "alipay_main"]}, {"method": ["card", "alipay_qr"]}),
        _rule("big_cards", {"channels": ["bank_b"]}, {"method": "card", "amount": {"min": 500}}),
    )
    assert errors_of(data) == [
        "rules[1]: rule 'big_cards' can never match: rule 'cards' (rules[0]) above it "
        "matches every payment this one would"
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"method": "card", "amount": {"min": 500}}, {"method": "card"}),  # narrow first: fine
        ({"method": "card", "not": {"merchant": "m1"}}, {"method": "card", "merchant": "m2"}),
        ({"metadata": {"tier": "gold"}}, {"method": "card"}),
        ({"amount": {"min": 10, "max": 100}}, {"amount": {"min": 50, "max": 200}}),
        ({"time": {"window": "09:00-17:00"}}, {"time": {"window": "10:00-11:00"}}),
    ],
)
def test_rules_that_can_still_match_are_accepted(data, load, first, second) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("one", {"channels": ["bank_a", "alipay_main"]}, first),
        _rule("two", {"channels": ["bank_a", "alipay_main"]}, second),
    )
    assert [r.name for r in load(data).config.rules] == ["one", "two"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"amount": {"min": 10, "max": 300}}, {"amount": {"min": 50, "max": 200}}),
        ({"metadata": {"tier": ["gold", "silver"]}}, {"metadata": {"tier": "gold", "x": "1"}}),
        ({"merchant": ["m1", "m2"]}, {"all": [{"merchant": "m1"}, {"method": "card"}]}),
        ({"any": [{"method": "card"}, {"currency": "HKD"}]}, {"method": "card"}),
        ({"all": [{"method": "card"}, {}]}, {"method": "card", "currency": "CNY"}),
        ({}, {"method": "card"}),
    ],
)
def test_hidden_rules_are_refused(data, errors_of, first, second) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("one", {"channels": ["bank_a", "unionpay_main"]}, first),
        _rule("two", {"channels": ["bank_a", "unionpay_main"]}, second),
    )
    [error] = errors_of(data)
    assert error.startswith("rules[1]: rule 'two' can never match: rule 'one' (rules[0])")


def test_rule_method_no_channel_of_its_route_serves(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("cards", {"channels": ["alipay_main"]}, {"method": ["card", "alipay_qr"]}),
        _rule("hkd", {"channels": ["bank_a"]}, {"currency": "HKD"}),
    )
    assert errors_of(data) == [
        "rules[0].when.method: no channel of this rule's route serves 'card'",
        "rules[1].when.currency: no channel of this rule's route accepts 'HKD'",
    ]


# ---- enabled: false is always a valid edit (API.md §4) ----------------------------------------


def test_disabling_leaves_warnings_where_it_used_to_be_an_error(data, load) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bank_b"]["enabled"] = False
    data["channels"]["unionpay_main"]["enabled"] = False
    _rules(
        data,
        _rule("cards", {"channels": ["alipay_main", "bank_b"]}, {"method": ["card", "alipay_qr"]}),
        _rule("hkd", {"channels": ["bank_a", "unionpay_main"]}, {"currency": "HKD"}),
    )
    warnings = load(data).warnings
    assert (
        "rules[0].when.method: no enabled channel of this rule's route serves 'card' "
        "(disabled: bank_b); such payments get no_route"
    ) in warnings
    assert (
        "rules[1].when.currency: no enabled channel of this rule's route accepts 'HKD' "
        "(disabled: unionpay_main); such payments get no_route"
    ) in warnings


def test_a_route_with_every_channel_disabled_is_a_warning(data, load) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["wechat_main"]["enabled"] = False
    _rules(data, _rule("wx", {"channels": ["wechat_main"]}, {"method": "wechat_qr"}))
    assert (
        "rules[0].route: no enabled channel (disabled: wechat_main): rule 'wx' is passed over, "
        "the rules below it decide"
    ) in load(data).warnings


def test_a_default_route_with_every_channel_disabled_is_a_warning(data, load) -> None:  # type: ignore[no-untyped-def]
    data["default"]["route"]["channels"] = ["bank_a"]
    data["default"]["route"]["fallback"] = ["bank_b"]
    data["channels"]["bank_a"]["enabled"] = False
    data["channels"]["bank_b"]["enabled"] = False
    assert (
        "default.route: no enabled channel (disabled: bank_a, bank_b): payments no rule takes "
        "get no_route"
    ) in load(data).warnings


def test_a_catch_all_rule_passed_over_leaves_the_default_in_use(data, load) -> None:  # type: ignore[no-untyped-def]
    _rules(data, _rule("all", {"channels": ["wechat_main"]}))
    assert any(w.startswith("default: never used") for w in load(data).warnings)
    data["channels"]["wechat_main"]["enabled"] = False
    warnings = load(data).warnings
    assert not any(w.startswith("default: never used") for w in warnings)
    assert any(w.startswith("rules[0].route: no enabled channel") for w in warnings)


def _shipped_data() -> dict:  # type: ignore[type-arg]
    data = yaml.safe_load(SHIPPED.read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", sorted(_shipped_data()["channels"]))
def test_disabling_any_channel_of_the_shipped_file_is_valid(name: str) -> None:
    data = _shipped_data()
    data["channels"][name]["enabled"] = False
    loaded = parse_routing(yaml.safe_dump(data).encode(), "routing.yaml", ENV)
    assert not loaded.config.channels[name].enabled
    assert f"channels.{name}: disabled (skipped by every route)" in loaded.warnings


def test_disabling_every_channel_of_the_shipped_file_at_once_is_valid() -> None:
    data = _shipped_data()
    for channel in data["channels"].values():
        channel["enabled"] = False
    loaded = parse_routing(yaml.safe_dump(data).encode(), "routing.yaml", ENV)
    passed_over = [w for w in loaded.warnings if ".route: no enabled channel" in w]
    assert len(passed_over) == len(data["rules"]) + 1  # every rule and the default
    for method in METHODS:
        decision = route(loaded, PaymentFacts(method, 1999, "CNY", "m1"), {}, {}, random.Random(0))
        assert decision.rule == "default" and decision.candidates == []
        assert not decision.all_circuits_open  # 422 no_route, not 503


@settings(max_examples=60, deadline=None, database=None)
@given(
    disabled=st.sets(st.sampled_from(sorted(_shipped_data()["channels"]))),
    method=st.sampled_from(METHODS),
    amount=st.integers(1, MAX_AMOUNT),
)
def test_any_set_of_disabled_channels_is_valid_and_never_chosen(
    disabled: set[str], method: str, amount: int
) -> None:
    data = _shipped_data()
    for name in disabled:
        data["channels"][name]["enabled"] = False
    loaded = parse_routing(yaml.safe_dump(data).encode(), "routing.yaml", ENV)
    decision = route(loaded, PaymentFacts(method, amount, "CNY", "m1"), {}, {}, random.Random(0))
    assert not {c.channel for c in decision.candidates} & disabled
    if decision.rule_index is not None:  # a rule that decides has an enabled channel
        assert loaded.config.enabled_channels(loaded.config.rules[decision.rule_index].route)


def test_disabling_bank_icbc_sends_large_cards_to_the_next_rule() -> None:
    data = _shipped_data()
    data["channels"]["bank_icbc"]["enabled"] = False
    loaded = parse_routing(yaml.safe_dump(data).encode(), "routing.yaml", ENV)
    assert (
        "rules[3].route: no enabled channel (disabled: bank_icbc): rule 'large_cards' is "
        "passed over, the rules below it decide"
    ) in loaded.warnings
    small = route(loaded, PaymentFacts("card", 1999, "CNY", "m1"), {}, {}, random.Random(0))
    assert small.rule == "cards" and [c.channel for c in small.candidates] == ["bank_cmb"]
    # above bank_cmb's limit: `cards` decides, and none of its enabled channels fits
    large = route(loaded, PaymentFacts("card", 6_000_000, "CNY", "m1"), {}, {}, random.Random(0))
    assert large.rule == "cards" and large.candidates == []


def test_adapter_must_serve_the_channel_methods(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["alipay_main"]["methods"] = ["alipay_qr", "card"]
    assert errors_of(data) == [
        "channels.alipay_main.methods[1]: adapter 'alipay' does not serve 'card' (it serves "
        "alipay_qr)"
    ]


def test_rule_names_unique_and_not_default(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    _rules(
        data,
        _rule("default", {"channels": ["bank_a"]}, {"method": "card", "amount": {"max": 5}}),
        _rule("x", {"channels": ["bank_a"]}, {"method": "card", "amount": {"max": 9}}),
        _rule("x", {"channels": ["bank_a"]}, {"method": "card", "amount": {"min": 100}}),
    )
    assert errors_of(data) == [
        "rules[0].name: 'default' is reserved for the default route",
        "rules[2].name: rule name 'x' is already used by rules[1]",
    ]


def test_channel_limits_in_order(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bank_b"]["min_amount"] = 5000
    data["channels"]["bank_b"]["max_amount"] = 100
    assert errors_of(data) == ["channels.bank_b.min_amount: 5000 is above max_amount 100"]


def test_channel_names(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bad name"] = data["channels"].pop("wechat_main")
    data["default"]["route"]["channels"] = ["bank_a"]
    assert errors_of(data) == [
        "channels.bad name: a channel name is 1 to 64 letters, digits, '_' or '-' "
        "(it appears in URLs)"
    ]


# ---- shapes and scalars ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["channels"]["bank_a"].update(adapter="paypal"),
            "channels.bank_a.adapter: unknown adapter 'paypal' (known: bank, wechat, alipay, "
            "unionpay)",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(methods=["cash"]),
            "channels.bank_a.methods[0]: unknown method 'cash' (known: card, wechat_qr, "
            "alipay_qr, unionpay_qr)",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(methods=[]),
            "channels.bank_a.methods: must not be empty",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(methods=["card", "card"]),
            "channels.bank_a.methods: lists 'card' twice",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(currencies=["cny"]),
            "channels.bank_a.currencies[0]: must be an ISO 4217 currency code such as CNY, "
            "got 'cny'",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(min_amount=1.5),
            "channels.bank_a.min_amount: must be an integer amount in minor units (fen), got 1.5",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(max_amount=100.0),
            "channels.bank_a.max_amount: must be an integer amount in minor units (fen), got 100.0",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(max_amount="500"),
            "channels.bank_a.max_amount: must be an integer amount in minor units (fen), got '500'",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(min_amount=True),
            "channels.bank_a.min_amount: must be an integer amount in minor units (fen), got True",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(max_amount=MAX_AMOUNT + 1),
            "channels.bank_a.max_amount: must be between 1 and 100000000000 (minor units), "
            "got 100000000001",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(min_amount=0),
            "channels.bank_a.min_amount: must be between 1 and 100000000000 (minor units), got 0",
        ),
        (
            lambda d: d["channels"]["bank_a"]["fee"].update(percent="0.12345"),
            "channels.bank_a.fee.percent: must have at most 4 decimal places, got '0.12345'",
        ),
        (
            lambda d: d["channels"]["bank_a"]["fee"].update(percent=0.00001),
            "channels.bank_a.fee.percent: must have at most 4 decimal places, got 1e-05",
        ),
        (
            lambda d: d["channels"]["bank_a"]["fee"].update(percent="abc"),
            "channels.bank_a.fee.percent: must be a decimal percentage such as \"0.6\", got 'abc'",
        ),
        (
            lambda d: d["channels"]["bank_a"]["fee"].update(percent=-1),
            "channels.bank_a.fee.percent: must be between 0 and 100, got -1",
        ),
        (
            lambda d: d["channels"]["bank_a"]["fee"].update(fixed=0.5),
            "channels.bank_a.fee.fixed: must be an integer fee in minor units (fen), got 0.5",
        ),
        (
            lambda d: d["channels"]["bank_a"]["fee"].update(fixed=-1),
            "channels.bank_a.fee.fixed: must not be negative, got -1",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(enabled="yes"),
            "channels.bank_a.enabled: must be true or false",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(timeout_ms=10),
            "channels.bank_a.timeout_ms: input should be greater than or equal to 100",
        ),
        (
            lambda d: d["channels"]["bank_a"].update(fees={"percent": "1"}),
            "channels.bank_a.fees: unknown key",
        ),
        (lambda d: d.update(chanels={}), "chanels: unknown key"),
        (lambda d: d.pop("default"), "default: required"),
        (lambda d: d["default"].update(when={"method": "card"}), "default.when: unknown key"),
        (
            lambda d: d["default"]["route"].update(channel=["bank_a"]),
            "default.route.channel: unknown key",
        ),
        (
            lambda d: d.update(settings={"breaker": {"open_seconds": 3}}),
            "settings.breaker.open_seconds: unknown key",
        ),
        (
            lambda d: d.update(settings={"max_attempts": 0}),
            "settings.max_attempts: input should be greater than or equal to 1",
        ),
        (
            lambda d: d.update(settings={"max_attempts": 2.5}),
            "settings.max_attempts: must be an integer",
        ),
        (
            lambda d: d.update(settings={"success_rate": {"exploration": 2}}),
            "settings.success_rate.exploration: input should be less than or equal to 1",
        ),
        (lambda d: d.update(channels=[]), "channels: must be a mapping"),
        (lambda d: d.update(channels={}), "channels: must name at least one channel"),
    ],
)
def test_field_errors(data, errors_of, edit, expected) -> None:  # type: ignore[no-untyped-def]
    edit(data)
    assert expected in errors_of(data)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"methd": "card"}, "rules[0].when.methd: unknown key"),
        ({"method": []}, "rules[0].when.method: must not be empty"),
        (
            {"amount": {"min": 1.5}},
            "rules[0].when.amount.min: must be an integer amount in minor units (fen), got 1.5",
        ),
        ({"amount": {"least": 5}}, "rules[0].when.amount.least: unknown key"),
        ({"any": []}, "rules[0].when.any: must not be empty"),
        ({"all": [{"nope": 1}]}, "rules[0].when.all[0].nope: unknown key"),
        (
            {"not": {"method": "cheque"}},
            "rules[0].when.not.method[0]: unknown method 'cheque' (known: card, wechat_qr, alipay_qr, unionpay_qr)",
        ),
        ({"metadata": {"tier": 1.5}}, "rules[0].when.metadata.tier[0]: must be a string, got 1.5"),
        ({"metadata": {}}, "rules[0].when.metadata: must not be empty"),
        (
            {"time": {"window": "25:00-01:00"}},
            "rules[0].when.time.window[0]: must be a time window \"HH:MM-HH:MM\", got '25:00-01:00'",
        ),
        (
            {"time": {"window": "9-17"}},
            "rules[0].when.time.window[0]: must be a time window \"HH:MM-HH:MM\", got '9-17'",
        ),
        (
            {"time": {"window": "10:00-10:00"}},
            "rules[0].when.time.window[0]: '10:00-10:00': start and end are the same time; leave `time` out to match all day",
        ),
        (
            {"time": {"window": "24:00-01:00"}},
            "rules[0].when.time.window[0]: '24:00-01:00': a window cannot start at 24:00",
        ),
        (
            {"time": {"window": "09:00-17:00", "timezone": "Mars/Olympus"}},
            "rules[0].when.time.timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"time": {"window": "09:00-17:00", "days": ["funday"]}},
            "rules[0].when.time.days[0]: unknown day 'funday' (use mon, tue, wed, thu, fri, sat, sun)",
        ),
        ({"time": {"from": "09:00"}}, "rules[0].when.time.window: required"),
    ],
)
def test_condition_errors(data, errors_of, when, expected) -> None:  # type: ignore[no-untyped-def]
    _rules(data, _rule("r", {"channels": ["bank_a"]}, when))
    assert expected in errors_of(data)


def test_several_errors_are_reported_together_and_joined(data) -> None:  # type: ignore[no-untyped-def]
    import yaml

    data["channels"]["bank_a"]["min_amount"] = 0.5
    data["channels"]["bank_b"]["adapter"] = "visa"
    with pytest.raises(RoutingError) as info:
        parse_routing(yaml.safe_dump(data).encode(), "x.yaml", {})
    assert len(info.value.errors) == 2
    assert str(info.value) == "; ".join(info.value.errors)


def test_good_values_are_normalised(data, load) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bank_a"]["fee"] = {"percent": 0.6, "fixed": 3}
    data["channels"]["bank_b"]["fee"] = {"percent": "0.38%"}
    data["channels"]["wechat_main"]["fee"] = {"percent": 1}
    data["channels"]["wechat_main"]["config"] = {"anything": {"goes": [1, 2.5, None]}, "x": 1}
    _rules(
        data,
        _rule(
            "r",
            {"channels": ["bank_a"]},
            {
                "method": "card",
                "currency": "CNY",
                "merchant": "m1",
                "metadata": {"tier": "gold", "n": 7},
                "time": {"window": ["22:00-24:00", "00:00-06:00"], "days": ["Monday"]},
            },
        ),
    )
    config = load(data).config
    assert config.channels["bank_a"].fee.percent == Decimal("0.6")
    assert config.channels["bank_b"].fee.percent == Decimal("0.38")
    assert config.channels["wechat_main"].fee.percent == Decimal(1)
    assert config.channels["wechat_main"].config == {"anything": {"goes": [1, 2.5, None]}, "x": 1}
    assert config.channels["alipay_backup"].methods == ["alipay_qr"]
    assert config.channels["wechat_main"].currencies == ["CNY"]
    when = config.rules[0].when
    assert when is not None and when.time is not None and when.metadata is not None
    assert when.method == ["card"] and when.merchant == ["m1"]
    assert when.metadata == {"tier": ["gold"], "n": ["7"]}
    assert when.time.window == [Window(22 * 60, 24 * 60), Window(0, 6 * 60)]
    assert when.time.timezone == "Asia/Shanghai"
    assert when.time.days == ["mon"]
    assert config.settings.max_attempts == 3


# ---- the file itself ------------------------------------------------------------------------


def test_yaml_syntax_error(errors_of) -> None:  # type: ignore[no-untyped-def]
    [error] = errors_of(b"channels:\n  a: [1, 2\n")
    assert error.startswith("(yaml): line ")


def test_duplicate_yaml_keys_are_refused(errors_of) -> None:  # type: ignore[no-untyped-def]
    raw = (
        b"channels:\n  a: {adapter: bank, methods: [card]}\n  a: {adapter: bank, methods: [card]}\n"
    )
    assert errors_of(raw) == ["(yaml): line 3, column 3: duplicate key 'a' (first at line 2)"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "(top): the file is empty"),
        (b"- 1\n- 2\n", "(top): must be a mapping with channels, rules, default, settings"),
        (b"\xff\xfe", "(file): not UTF-8 text (invalid start byte at byte 0)"),
    ],
)
def test_not_a_routing_file(errors_of, raw, expected) -> None:  # type: ignore[no-untyped-def]
    assert errors_of(raw) == [expected]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RoutingError) as info:
        load_routing(tmp_path / "nope.yaml", {})
    assert info.value.errors[0].startswith("(file): cannot read ")


def test_errors_know_their_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "channels:\n"
        "  bank_a:\n"
        "    adapter: bank\n"
        "    methods: [card]\n"
        "rules:\n"
        "  - name: r\n"
        "    route:\n"
        "      channels: [bank_a, bank_x]\n"
        "default:\n"
        "  route: {channels: [bank_a]}\n"
    )
    with pytest.raises(RoutingError) as info:
        load_routing(path, {})
    [error] = info.value.errors
    assert error == "rules[0].route.channels: unknown channel 'bank_x'"
    assert info.value.line_of(error) == 8


def test_all_methods_are_known() -> None:
    assert set(METHODS) == {m for ms in ADAPTER_METHODS.values() for m in ms}
