"""Risk rules, pure: the schema and its error paths, each rule kind at its boundaries, CIDR
matching (IPv4, IPv6, IPv4-mapped), the counters a payment needs and the decision from their
values, and the holder's hot reload."""

from __future__ import annotations

import copy
import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.risk.loader import RiskError, RiskHolder, load_risk, parse_risk
from gateway.risk.rules import (
    CounterCheck,
    Facts,
    Rejection,
    RiskRules,
    RuleKind,
    counter_checks,
    counter_rejection,
    evaluate,
    local_day,
    static_rejection,
)
from gateway.risk.schema import RiskConfig

ROOT = Path(__file__).resolve().parents[3]
NOON_SHANGHAI = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai

BASE: dict[str, Any] = {
    "blocklists": [
        {
            "name": "bad_payers",
            "merchants": ["mch_a"],
            "payer_ids": ["u-bad", "u-worse"],
        },
        {
            "name": "bad_networks",
            "ips": ["192.0.2.66", "2001:db8::66"],
            "cidrs": ["198.51.100.0/24", "10.0.0.0/8", "2001:db8:dead::/48"],
        },
    ],
    "amount_limits": [
        {"name": "card_bounds", "methods": ["card"], "min": 100, "max": 5_000_000},
        {"name": "a_qr_max", "merchants": ["mch_a"], "methods": "alipay_qr", "max": 20_000},
    ],
    "daily_caps": [
        {"name": "a_daily", "merchants": ["mch_a"], "max_amount": 100_000, "max_count": 3},
        {"name": "every_daily_count", "max_count": 1000},
    ],
    "velocity": [
        {"name": "payer_burst", "per": "payer_id", "max": 2, "window_s": 60},
        {"name": "ip_burst", "per": "payer_ip", "max": 5, "window_s": 10, "methods": ["card"]},
    ],
}


def dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


def rules_of(data: dict[str, Any]) -> RiskRules:
    return parse_risk(dump(data), "risk.yaml").rules


def errors_of(data: Any) -> list[str]:
    raw = data if isinstance(data, bytes) else dump(data)
    with pytest.raises(RiskError) as info:
        parse_risk(raw, "risk.yaml")
    return info.value.errors


@pytest.fixture
def data() -> dict[str, Any]:
    return copy.deepcopy(BASE)


@pytest.fixture
def rules(data: dict[str, Any]) -> RiskRules:
    return rules_of(data)


def facts(**overrides: Any) -> Facts:
    values: dict[str, Any] = {
        "merchant_id": "mch_a",
        "method": "card",
        "currency": "CNY",
        "amount": 1999,
        "payer_id": None,
        "payer_ip": None,
        "now": NOON_SHANGHAI,
    }
    values.update(overrides)
    return Facts.of(**values)


def rejected_by(rules: RiskRules, **overrides: Any) -> str | None:
    rejection = static_rejection(rules, facts(**overrides))
    return rejection.rule if rejection else None


# ---- the file -------------------------------------------------------------------------------


def test_shipped_file_is_valid_and_passes_ordinary_payments() -> None:
    loaded = load_risk(ROOT / "config" / "risk.yaml")
    ordinary = facts(merchant_id="mch_01HZY", amount=10**11, payer_ip="203.0.113.9", payer_id="u")
    assert static_rejection(loaded.rules, ordinary) is None
    assert counter_checks(loaded.rules, ordinary) == []  # its counter rules are scoped
    assert rejected_by(loaded.rules, payer_ip="198.51.100.7") == "blocked_networks"


def test_empty_mapping_means_no_rules() -> None:
    rules = parse_risk(b"{}\n").rules
    assert rules.config == RiskConfig()
    assert static_rejection(rules, facts(payer_ip="10.1.1.1")) is None
    assert counter_checks(rules, facts(payer_id="u")) == []


def test_version_is_the_short_sha256(data: dict[str, Any]) -> None:
    a = parse_risk(dump(data))
    assert a.version == a.digest[:12] and len(a.digest) == 64
    assert parse_risk(dump(data) + b"# comment\n").version != a.version


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(blocklist=[]), ["blocklist: unknown key"]),
        (
            lambda d: d["amount_limits"][0].update(min=6_000_000),
            ["amount_limits[0]: min 6000000 is above max 5000000"],
        ),
        (
            lambda d: d["amount_limits"][1].update(max=19.99),
            ["amount_limits[1].max: must be an integer amount in minor units (fen), got 19.99"],
        ),
        (
            lambda d: d["amount_limits"][1].pop("max"),
            ["amount_limits[1]: give min, max or both"],
        ),
        (
            lambda d: d["amount_limits"][0].update(methods=["bitcoin"]),
            [
                "amount_limits[0].methods[0]: unknown method 'bitcoin' "
                "(known: card, wechat_qr, alipay_qr, unionpay_qr)"
            ],
        ),
        (
            lambda d: d["blocklists"][1].update(cidrs=["198.51.100.7/24"]),
            [
                "blocklists[1].cidrs[0]: '198.51.100.7/24' has host bits set (the network is "
                "198.51.100.0/24)"
            ],
        ),
        (
            lambda d: d["blocklists"][1].update(cidrs=["2001:db8::/129"]),
            [
                "blocklists[1].cidrs[0]: not an IPv4 or IPv6 network such as 203.0.113.0/24: "
                "'2001:db8::/129'"
            ],
        ),
        (
            lambda d: d["blocklists"][1].update(ips=["10.0.0.0/8", "300.1.1.1"]),
            [
                "blocklists[1].ips[0]: not an IPv4 or IPv6 address: '10.0.0.0/8' "
                "(networks go under `cidrs`)",
                "blocklists[1].ips[1]: not an IPv4 or IPv6 address: '300.1.1.1'",
            ],
        ),
        (
            lambda d: d["blocklists"][0].update(payer_ids=[]),
            ["blocklists[0].payer_ids: must not be empty"],
        ),
        (
            lambda d: d["blocklists"][0].pop("payer_ids"),
            ["blocklists[0]: give payer_ids, ips or cidrs"],
        ),
        (
            lambda d: d["daily_caps"][0].update(max_amount=10**16),
            [
                "daily_caps[0].max_amount: must be between 1 and 1000000000000000, "
                "got 10000000000000000"
            ],
        ),
        (
            lambda d: [d["daily_caps"][1].pop("max_count")],
            ["daily_caps[1]: give max_amount, max_count or both"],
        ),
        (
            lambda d: d["velocity"][0].update(per="card", window_s=0),
            [
                "velocity[0].per: input should be 'payer_id' or 'payer_ip'",
                "velocity[0].window_s: must be between 1 and 604800, got 0",
            ],
        ),
        (
            lambda d: d["velocity"][1].update(name="bad_payers"),
            ["velocity[1].name: 'bad_payers' is already the name of blocklists[0]"],
        ),
        (
            lambda d: d["velocity"][1].update(name="ip burst"),
            ["velocity[1].name: must be 1 to 64 letters, digits, '_' or '-', got 'ip burst'"],
        ),
        (
            lambda d: d.update(timezone="Mars/Olympus"),
            ["timezone: unknown time zone 'Mars/Olympus'"],
        ),
    ],
)
def test_schema_errors_name_their_path(
    data: dict[str, Any], mutate: Any, expected: list[str]
) -> None:
    mutate(data)
    assert errors_of(data) == expected


def test_errors_carry_file_lines(data: dict[str, Any]) -> None:
    data["velocity"][1]["window_s"] = -1
    raw = dump(data)
    with pytest.raises(RiskError) as info:
        parse_risk(raw)
    error = info.value.errors[0]
    assert error.startswith("velocity[1].window_s:")
    line = info.value.line_of(error)
    assert line is not None and raw.decode().splitlines()[line - 1].strip() == "window_s: -1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "(top): the file is empty (write `{}` for no rules)"),
        (b"- a\n- b\n", "(top): must be a mapping with"),
        (b"velocity: []\nvelocity: []\n", "(yaml): line 2, column 1:"),
        (b"\xff\xfe", "(file): not UTF-8 text"),
        (b"velocity: [\n", "(yaml): "),
    ],
)
def test_unreadable_files(raw: bytes, expected: str) -> None:
    [error] = errors_of(raw)
    assert error.startswith(expected), error


# ---- blocklists -----------------------------------------------------------------------------


def test_blocklist_payer_ids_are_scoped_to_their_merchants(rules: RiskRules) -> None:
    assert rejected_by(rules, payer_id="u-bad") == "bad_payers"
    assert rejected_by(rules, payer_id="u-worse", method="wechat_qr") == "bad_payers"
    assert rejected_by(rules, payer_id="u-bad", merchant_id="mch_b") is None
    assert rejected_by(rules, payer_id="U-BAD") is None  # ids are exact
    assert rejected_by(rules) is None  # no payer: nothing to match


@pytest.mark.parametrize(
    ("ip", "blocked"),
    [
        ("192.0.2.66", True),
        ("192.0.2.65", False),
        ("198.51.100.0", True),
        ("198.51.100.255", True),
        ("198.51.99.255", False),
        ("198.51.101.0", False),
        ("10.255.255.255", True),
        ("11.0.0.0", False),
        ("::ffff:198.51.100.9", True),  # IPv4-mapped IPv6 matches the IPv4 entries
        ("::ffff:198.51.101.9", False),
        ("2001:db8::66", True),
        ("2001:0db8:0000::0066", True),
        ("2001:db8::67", False),
        ("2001:db8:dead::", True),
        ("2001:db8:dead:ffff:ffff:ffff:ffff:ffff", True),
        ("2001:db8:deae::", False),
        ("2001:db8:deac:ffff:ffff:ffff:ffff:ffff", False),
        ("::c633:6409", False),  # 198.51.100.9 as an IPv4-compatible v6 address is not v4
    ],
)
def test_blocklist_ips_and_cidrs(rules: RiskRules, ip: str, blocked: bool) -> None:
    rejection = static_rejection(rules, facts(payer_ip=ip))
    assert (rejection is not None) is blocked
    if rejection is not None:
        assert rejection == Rejection(
            "bad_networks",
            RuleKind.BLOCKLIST,
            "The payment was refused by risk rule 'bad_networks'.",
            rejection.reason,
        )
        assert "bad_networks" in rejection.detail and ip not in rejection.detail
        assert rejection.reason.startswith("payer_ip ")


def test_a_zero_prefix_network_matches_its_whole_family() -> None:
    rules = rules_of({"blocklists": [{"name": "no_v6", "cidrs": ["::/0"]}]})
    assert rejected_by(rules, payer_ip="2001:db8::1") == "no_v6"
    assert rejected_by(rules, payer_ip="::ffff:10.0.0.1") is None
    assert rejected_by(rules, payer_ip="10.0.0.1") is None


@settings(max_examples=300, deadline=None)
@given(
    networks=st.lists(
        st.one_of(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
                lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False)
            ),
            st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
                lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False)
            ),
        ),
        min_size=1,
        max_size=6,
    ),
    ip=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
)
def test_cidr_matching_agrees_with_ipaddress(networks: list[Any], ip: Any) -> None:
    rules = rules_of({"blocklists": [{"name": "b", "cidrs": [str(n) for n in networks]}]})
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    expected = any(ip.version == n.version and ip in n for n in networks)
    assert (rejected_by(rules, payer_ip=str(ip)) == "b") is expected


# ---- amount limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"amount": 99}, "card_bounds"),
        ({"amount": 100}, None),
        ({"amount": 5_000_000}, None),
        ({"amount": 5_000_001}, "card_bounds"),
        ({"amount": 99, "currency": "USD"}, None),  # limits are in their currency (CNY)
        ({"amount": 99, "method": "wechat_qr"}, None),
        ({"amount": 20_000, "method": "alipay_qr"}, None),
        ({"amount": 20_001, "method": "alipay_qr"}, "a_qr_max"),
        ({"amount": 20_001, "method": "alipay_qr", "merchant_id": "mch_b"}, None),
    ],
)
def test_amount_limits_are_inclusive(
    rules: RiskRules, overrides: dict[str, Any], rule: str | None
) -> None:
    assert rejected_by(rules, **overrides) == rule


def test_amount_limit_detail_names_the_bound(rules: RiskRules) -> None:
    rejection = static_rejection(rules, facts(amount=99))
    assert rejection is not None and rejection.kind is RuleKind.AMOUNT_LIMIT
    assert rejection.detail == (
        "Amount 99 CNY is below the minimum of 100 set by risk rule 'card_bounds'."
    )


def test_blocklists_are_checked_before_amount_limits(rules: RiskRules) -> None:
    assert rejected_by(rules, amount=1, payer_ip="10.0.0.1") == "bad_networks"


# ---- daily caps and velocity: the counters a payment needs ----------------------------------


def test_counter_checks_for_a_payment(rules: RiskRules) -> None:
    checks = counter_checks(
        rules, facts(amount=3000, payer_id="u-1", payer_ip="::ffff:203.0.113.9")
    )
    ttl_ms = (12 * 3600 + 3600) * 1000  # to Shanghai midnight, plus an hour
    assert checks == [
        CounterCheck("a_daily", "day", "risk:day:a_daily:mch_a:20240501", "amount", 3000,
                     100_000, ttl_ms, "CNY amount on 2024-05-01"),
        CounterCheck("a_daily", "day", "risk:day:a_daily:mch_a:20240501", "count", 1, 3,
                     ttl_ms, "number of payments on 2024-05-01"),
        CounterCheck("every_daily_count", "day", "risk:day:every_daily_count:mch_a:20240501",
                     "count", 1, 1000, ttl_ms, "number of payments on 2024-05-01"),
        CounterCheck("payer_burst", "window", "risk:vel:payer_burst:id:mch_a:u-1", "", 1, 2,
                     60_000, "payments per payer id in 60 s"),
        CounterCheck("ip_burst", "window", "risk:vel:ip_burst:ip:203.0.113.9", "", 1, 5,
                     10_000, "payments per payer ip in 10 s"),
    ]  # fmt: skip


def test_counter_checks_follow_scopes_and_payer_fields(rules: RiskRules) -> None:
    other = counter_checks(rules, facts(merchant_id="mch_b", method="wechat_qr"))
    assert [c.rule for c in other] == ["every_daily_count"]
    usd = counter_checks(rules, facts(currency="USD", payer_ip="2001:DB8:0::1"))
    assert [(c.rule, c.key) for c in usd] == [("ip_burst", "risk:vel:ip_burst:ip:2001:db8::1")]


@pytest.mark.parametrize(
    ("now", "day", "ttl_s"),
    [
        (datetime(2024, 5, 1, 15, 59, 59, tzinfo=UTC), "20240501", 1 + 3600),
        (datetime(2024, 5, 1, 16, 0, 0, tzinfo=UTC), "20240502", 86_400 + 3600),
        (datetime(2024, 12, 31, 16, 30, tzinfo=UTC), "20250101", 86_400 - 1800 + 3600),
    ],
)
def test_daily_caps_count_china_dates(
    rules: RiskRules, now: datetime, day: str, ttl_s: int
) -> None:
    assert local_day(rules, now) == (day, ttl_s * 1000)
    [check, *_] = counter_checks(rules, facts(now=now))
    assert check.key.endswith(f":{day}")


def test_daily_caps_in_another_zone_across_a_dst_change() -> None:
    rules = rules_of({"timezone": "Europe/Berlin", "daily_caps": [{"name": "d", "max_count": 1}]})
    # 2024-03-31 01:00 local (CET): the day lasts 23 hours, 22 of them left
    day, ttl_ms = local_day(rules, datetime(2024, 3, 31, 0, 0, tzinfo=UTC))
    assert (day, ttl_ms) == ("20240331", (22 * 3600 + 3600) * 1000)


@pytest.mark.parametrize(
    ("values", "rule"),
    [
        ([97_000, 2, 0, 0, 0], None),  # 97,000 + 3,000 = the cap exactly; the third payment
        ([97_001, 0, 0, 0, 0], "a_daily"),
        ([0, 3, 0, 0, 0], "a_daily"),
        ([0, 2, 999, 1, 4], None),
        ([0, 0, 1000, 0, 0], "every_daily_count"),
        ([0, 0, 0, 2, 0], "payer_burst"),
        ([0, 0, 0, 0, 5], "ip_burst"),
        ([0, 0, 0, 2, 5], "payer_burst"),  # the first exceeded, in order
    ],
)
def test_counter_decisions_at_the_boundaries(
    rules: RiskRules, values: list[int], rule: str | None
) -> None:
    f = facts(amount=3000, payer_id="u-1", payer_ip="203.0.113.9")
    rejection = evaluate(rules, f, values)
    assert (rejection.rule if rejection else None) == rule


def test_counter_rejection_details(rules: RiskRules) -> None:
    checks = counter_checks(rules, facts(amount=3000, payer_id="u-1", payer_ip="203.0.113.9"))
    daily = counter_rejection(checks, [99_000, 0, 0, 0, 0])
    assert daily == Rejection(
        "a_daily",
        RuleKind.DAILY_CAP,
        "The merchant's CNY amount on 2024-05-01 would reach 102000, over the cap of 100000 "
        "set by risk rule 'a_daily'.",
        "CNY amount on 2024-05-01: 99000 + 3000 > 100000",
    )
    burst = counter_rejection(checks, [0, 0, 0, 0, 5])
    assert burst is not None and burst.kind is RuleKind.VELOCITY
    assert (
        burst.detail == "Too many payments per payer ip in 10 s (at most 5, risk rule 'ip_burst')."
    )
    with pytest.raises(ValueError, match="5 counter checks but 1 values"):
        counter_rejection(checks, [0])


def test_static_rules_come_before_counters(rules: RiskRules) -> None:
    f = facts(amount=99, payer_id="u-1")
    rejection = evaluate(rules, f, [10**9] * len(counter_checks(rules, f)))
    assert rejection is not None and rejection.rule == "card_bounds"


# ---- the holder -----------------------------------------------------------------------------


def write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else dump(data))
    os.replace(tmp, path)


def test_holder_refuses_a_missing_or_invalid_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(RiskError, match="cannot read"):
        RiskHolder(tmp_path / "nope.yaml")
    write(tmp_path / "bad.yaml", {"velocity": [{"name": "v"}]})
    with pytest.raises(RiskError, match=r"velocity\[0\]\.per: required"):
        RiskHolder(tmp_path / "bad.yaml")


def test_holder_hot_reload(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "risk.yaml"
    write(path, data)
    holder = RiskHolder(path)
    first = holder.current
    assert holder.reload() is False and holder.current is first

    data["amount_limits"][0]["max"] = 1000
    write(path, data)
    assert holder.reload() is True
    assert holder.reloads == 1 and holder.current is not first
    assert rejected_by(holder.current.rules, amount=1001) == "card_bounds"
    good = holder.current

    write(path, b"amount_limits: [{name: x}]\n")  # invalid: kept out, old rules serve
    assert holder.reload() is False
    assert holder.current is good and holder.stale
    assert holder.reload_failures == 1
    assert holder.last_error == "amount_limits[0]: give min, max or both"
    assert holder.reload() is False and holder.reload_failures == 1  # refused once per content

    path.unlink()
    assert holder.reload() is False and holder.reload_failures == 2
    assert holder.last_error is not None and "cannot read" in holder.last_error

    write(path, data)  # back to the rules in force: no longer stale
    assert holder.reload() is False and not holder.stale and holder.current is good
    data["velocity"] = []
    write(path, data)
    assert holder.reload() is True and holder.current.config.velocity == []
    assert holder.current.loaded_at >= good.loaded_at - timedelta(seconds=1)
