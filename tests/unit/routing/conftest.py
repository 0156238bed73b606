"""Builders shared by the routing tests: a small valid routing file, as data, that each test
tweaks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from routing.loader import LoadedRouting, RoutingError, parse_routing

BASE: dict[str, Any] = {
    "channels": {
        "bank_a": {"adapter": "bank", "methods": ["card"], "fee": {"percent": "0.6"}},
        "bank_b": {
            "adapter": "bank",
            "methods": ["card"],
            "min_amount": 100,
            "max_amount": 1_000_000,
            "fee": {"percent": "0.5", "fixed": 20},
        },
        "alipay_main": {"adapter": "alipay", "methods": ["alipay_qr"], "fee": {"percent": "0.6"}},
        "alipay_backup": {
            "adapter": "alipay",
            "methods": "alipay_qr",
            "fee": {"percent": "0.55"},
        },
        "wechat_main": {"adapter": "wechat", "methods": ["wechat_qr"]},
        "unionpay_main": {
            "adapter": "unionpay",
            "methods": ["unionpay_qr"],
            "currencies": ["CNY", "HKD"],
        },
    },
    "rules": [],
    "default": {"route": {"channels": ["bank_a", "alipay_main", "wechat_main", "unionpay_main"]}},
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def dump(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


def build(data: dict[str, Any], env: dict[str, str] | None = None) -> LoadedRouting:
    return parse_routing(dump(data), "test.yaml", {} if env is None else env)


def errors(data: Any, env: dict[str, str] | None = None) -> list[str]:
    raw = data if isinstance(data, bytes) else dump(data)
    with pytest.raises(RoutingError) as info:
        parse_routing(raw, "test.yaml", {} if env is None else env)
    return info.value.errors


@pytest.fixture
def data() -> dict[str, Any]:
    """A fresh copy of the small valid routing file, as data."""
    return base()


@pytest.fixture
def load() -> Callable[..., LoadedRouting]:
    """load(data, env=None) -> LoadedRouting (raises RoutingError)."""
    return build


@pytest.fixture
def errors_of() -> Callable[..., list[str]]:
    """errors_of(data or bytes, env=None) -> the RoutingError's messages."""
    return errors
