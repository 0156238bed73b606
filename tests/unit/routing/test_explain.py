"""`routes explain` and `routes check` texts."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from routing.engine import PaymentFacts, route
from routing.explain import check_text, explain_text
from routing.health import BreakerState, ChannelHealth

NOW = datetime(2024, 6, 5, 4, 0, tzinfo=UTC)
SHIPPED = Path(__file__).resolve().parents[3] / "config" / "routing.yaml"


def _rules(data: dict[str, Any]) -> dict[str, Any]:
    data["channels"]["bank_a"]["enabled"] = False
    data["rules"] = [
        {"name": "vip", "when": {"merchant": "m_vip"}, "route": {"channels": ["bank_a", "bank_b"]}},
        {
            "name": "cards",
            "when": {"method": "card"},
            "route": {"strategy": "lowest_fee", "channels": ["bank_b", "bank_a"]},
        },
    ]
    data["default"]["route"]["channels"] = ["alipay_main", "wechat_main", "unionpay_main"]
    return data


def test_explain_shows_the_rule_trace_candidates_fees_and_skips(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(_rules(data))
    facts = PaymentFacts("card", 20000, "CNY", "m1", {"cart": "c-77"}, NOW)
    text = explain_text(route(loaded, facts, {}, {}, random.Random(0)), loaded)
    assert f"Routing version {loaded.version}" in text
    assert "Payment: card 20000 CNY, merchant m1, metadata cart=c-77" in text
    assert "rules[0] vip: no: merchant m1 not in [m_vip]" in text
    assert "rules[1] cards: MATCH" in text
    assert "Matched rule: cards (rules[1]), strategy lowest_fee" in text
    assert "1. bank_b" in text and "fee 120" in text and "lowest fee 120" in text
    assert "bank_a" in text and "disabled" in text
    assert "Result: bank_b first (fee 120)" in text


def test_explain_no_route_and_all_open(data, load) -> None:  # type: ignore[no-untyped-def]
    loaded = load(_rules(data))
    none = route(loaded, PaymentFacts("card", 50, "CNY", "m1", {}, NOW), {}, {}, random.Random(0))
    text = explain_text(none, loaded)
    assert "(none)" in text and "amount below limit (min 100)" in text
    assert "422 no_route" in text
    opened = ChannelHealth(state=BreakerState.OPEN, opened_at=NOW.timestamp() - 10)
    shut = route(
        loaded,
        PaymentFacts("card", 500, "CNY", "m1", {}, NOW),
        {"bank_b": opened},
        {},
        random.Random(0),
    )
    text = explain_text(shut, loaded)
    assert "circuit open" in text and "503 channel_unavailable, retry after 20 s" in text
    dflt = route(
        loaded, PaymentFacts("wechat_qr", 5, "CNY", "m1", {}, NOW), {}, {}, random.Random(0)
    )
    text = explain_text(dflt, loaded)
    assert "default: MATCH (no rule matched)" in text
    assert "Matched rule: default (default), strategy priority" in text
    assert "does not serve wechat_qr" in text


def test_check_valid_file(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_rules(data), sort_keys=False))
    ok, text = check_text(path, {})
    assert ok
    assert "valid, version" in text
    assert "Channels: 6 (5 enabled)" in text
    assert "rules[1] cards: when method in [card]" in text
    assert "Warnings:" in text and "channels.bank_a: disabled" in text


def test_check_invalid_file_lists_errors_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "channels:\n"
        "  bank_a: {adapter: bank, methods: [card], min_amount: 1.5}\n"
        "default:\n"
        "  route:\n"
        "    channels: [bank_a]\n"
    )
    ok, text = check_text(path, {})
    assert not ok
    assert "INVALID, 1 error" in text
    assert (
        "line 2: channels.bank_a.min_amount: must be an integer amount in minor units (fen), "
        "got 1.5"
    ) in text


def test_check_the_shipped_file() -> None:
    ok, text = check_text(SHIPPED, {"GATEWAY_PUBLIC_URL": "http://127.0.0.1:8080"})
    assert ok, text
    ok, text = check_text(SHIPPED, {})
    assert not ok and "environment variable GATEWAY_PUBLIC_URL is not set" in text


def test_explain_names_a_rule_passed_over(data, load) -> None:  # type: ignore[no-untyped-def]
    data = _rules(data)
    data["channels"]["bank_b"]["enabled"] = False  # bank_a already is: `cards` has none left
    loaded = load(data)
    facts = PaymentFacts("card", 20000, "CNY", "m1", {}, NOW)
    text = explain_text(route(loaded, facts, {}, {}, random.Random(0)), loaded)
    assert "rules[1] cards: no: passed over, no enabled channel in its route" in text
    assert "default: MATCH (no rule matched)" in text
    assert "422 no_route" in text


def test_check_warns_about_rules_passed_over_and_stays_valid(tmp_path: Path) -> None:
    data = yaml.safe_load(SHIPPED.read_text())
    data["channels"]["bank_icbc"]["enabled"] = False
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    ok, text = check_text(path, {"GATEWAY_PUBLIC_URL": "http://127.0.0.1:8080"})
    assert ok, text
    assert "valid, version" in text and "DISABLED" in text
    assert (
        "  - rules[3].route: no enabled channel (disabled: bank_icbc): rule 'large_cards'" in text
    )
