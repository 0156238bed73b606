"""Request budgets without servers: each class's rate and burst from the defaults or a merchant's
overrides, the figures of the RateLimit-* headers, the settings that bound them, and the source
address a failed authentication is counted against."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from pydantic import ValidationError

from gateway.api.merchant import source_address
from gateway.auth.budgets import BudgetPolicy, RateLimit, RequestClass, failure_limit, retry_after_s
from gateway.domain.errors import Budget
from gateway.domain.records import RateLimitOverrides
from gateway.settings import Settings

POLICY = BudgetPolicy(payments_per_s=100, refunds_per_s=20, other_per_s=200, burst_s=2)


def test_each_class_takes_the_default_unless_the_merchant_has_its_own() -> None:
    none = RateLimitOverrides()
    assert POLICY.rate_limit(RequestClass.PAYMENTS, none) == RateLimit(100, burst=200)
    assert POLICY.rate_limit(RequestClass.REFUNDS, none) == RateLimit(20, burst=40)
    assert POLICY.rate_limit(RequestClass.OTHER, none) == RateLimit(200, burst=400)
    own = RateLimitOverrides(refunds_per_s=2.5)
    assert POLICY.rate_limit(RequestClass.REFUNDS, own) == RateLimit(2.5, burst=5)
    assert POLICY.rate_limit(RequestClass.PAYMENTS, own) == RateLimit(100, burst=200)
    # a slow budget still lets one request through at a time
    assert POLICY.rate_limit(RequestClass.OTHER, RateLimitOverrides(other_per_s=0.1)).burst == 1


def test_a_budget_in_the_scripts_terms_and_in_the_headers() -> None:
    limit = RateLimit(4, burst=8)
    assert limit.interval_us == 250_000
    assert RateLimit(3, burst=3).interval_us == 333_333
    assert limit.standing(remaining=5, reset_us=750_001) == Budget(limit=8, remaining=5, reset_s=1)
    assert limit.standing(remaining=-1, reset_us=0) == Budget(limit=8, remaining=0, reset_s=0)
    assert [retry_after_s(us) for us in (1, 999_999, 1_000_000, 1_000_001)] == [1, 1, 1, 2]
    assert retry_after_s(0) == 1  # never "now": the budget is spent


def test_the_failure_budget_is_so_many_failures_per_window() -> None:
    limit = failure_limit(30, 60)
    assert (limit.burst, limit.interval_us) == (30, 2_000_000)


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_the_key_cache_ttl_is_at_most_a_minute() -> None:
    assert settings(key_cache_ttl_s=60).key_cache_ttl_s == 60
    with pytest.raises(ValidationError, match="key_cache_ttl_s"):
        settings(key_cache_ttl_s=61)


def test_budget_settings_and_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings()
    assert defaults.rate_limits_enabled
    assert (
        defaults.rate_limit_payments_per_s,
        defaults.rate_limit_refunds_per_s,
        defaults.rate_limit_other_per_s,
        defaults.rate_limit_burst_s,
    ) == (100, 20, 200, 2)
    assert (defaults.auth_failure_limit, defaults.auth_failure_window_s) == (30, 60)
    monkeypatch.setenv("GATEWAY_RATE_LIMIT_PAYMENTS_PER_S", "12.5")
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8, 2001:db8::/32,192.0.2.7")
    read = settings()
    assert read.rate_limit_payments_per_s == 12.5
    assert read.trusted_proxies == (
        ip_network("10.0.0.0/8"),
        ip_network("2001:db8::/32"),
        ip_network("192.0.2.7/32"),
    )
    for wrong in (
        {"rate_limit_refunds_per_s": 0},
        {"rate_limit_burst_s": 0.5},
        {"auth_failure_limit": 0},
        {"trusted_proxies": "10.0.0.1/8"},  # host bits set: a typo for a network
        {"trusted_proxies": "proxy.internal"},
    ):
        with pytest.raises(ValidationError):
            settings(**wrong)


class _Peer:
    """The transport of a mocked request: only its peer address is read."""

    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.address, 40000) if name == "peername" else default


def source(peer: str, forwarded: str | None = None, trusted: str = "") -> str:
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    request = make_mocked_request("GET", "/v1/payments/x", headers=headers, transport=_Peer(peer))
    networks = tuple(ip_network(n) for n in trusted.split(",") if n)
    return source_address(request, networks)


def test_the_source_address_is_the_peers_unless_it_is_a_trusted_proxy() -> None:
    assert source("203.0.113.5") == "203.0.113.5"
    assert source("203.0.113.5", "198.51.100.1") == "203.0.113.5"  # nobody trusted: ignored
    proxies = "10.0.0.0/8"
    assert source("10.0.0.2", "198.51.100.1", proxies) == "198.51.100.1"
    # what the client wrote itself (on the left) is not believed: the last untrusted hop is
    assert source("10.0.0.2", "1.2.3.4, 198.51.100.1, 10.9.9.9", proxies) == "198.51.100.1"
    assert source("10.0.0.2", None, proxies) == "10.0.0.2"  # a proxy's own request
    assert source("203.0.113.5", "198.51.100.1", proxies) == "203.0.113.5"  # not from a proxy


def test_an_ipv6_source_counts_as_its_64() -> None:
    assert source("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source("::ffff:203.0.113.5") == "203.0.113.5"
