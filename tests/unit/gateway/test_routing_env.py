"""`${NAME}` in the routing file reads no setting of the gateway's own (its master key, admin
token, database and Redis URLs), whose values would be sent to a channel's base_url; refused
names are named in the error, their values never; GATEWAY_ROUTING_ENV_ALLOW narrows the names
further; GATEWAY_PUBLIC_URL stays readable (routing/loader.py `RoutingEnv`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.services.channels import routing_env
from gateway.settings import Settings
from routing.loader import RoutingEnv, RoutingError, expand_env, parse_routing

ROOT = Path(__file__).resolve().parents[3]
SECRETS = {
    "GATEWAY_MASTER_KEY": "master-key-value",
    "GATEWAY_ADMIN_TOKEN": "admin-token-value",
    "GATEWAY_DATABASE_URL": "postgresql://gw:db-password@db/gw",
    "GATEWAY_REDIS_URL": "redis://:redis-password@redis:6379/0",
    "PGPASSWORD": "pg-password",
}


def _with_base_url(value: str) -> bytes:
    """A routing file whose one channel's base_url is `value`."""
    data = {
        "channels": {
            "bank_a": {"adapter": "bank", "methods": ["card"], "config": {"base_url": value}}
        },
        "default": {"route": {"channels": ["bank_a"]}},
    }
    return yaml.safe_dump(data).encode()


def _refused(raw: bytes, env: RoutingEnv | dict[str, str]) -> list[str]:
    with pytest.raises(RoutingError) as info:
        parse_routing(raw, "r.yaml", env)
    return info.value.errors


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_the_gateways_own_secrets_are_refused_by_name_without_their_value(name: str) -> None:
    env = {**SECRETS, "GATEWAY_PUBLIC_URL": "http://gw"}
    errors = _refused(_with_base_url(f"https://evil.example/?leak=${{{name}}}"), env)
    assert errors == [
        f"channels.bank_a.config.base_url: environment variable {name} is the gateway's own"
        " setting; a routing file may not read it"
    ]
    assert SECRETS[name] not in " ".join(errors)


def test_a_refused_name_is_refused_with_a_fallback_and_when_unset() -> None:
    for reference in ("${GATEWAY_MASTER_KEY:-x}", "${GATEWAY_SOMETHING_NEW}"):
        expanded, errors = expand_env({"v": reference}, {})
        assert errors and "is the gateway's own setting" in errors[0]
        assert expanded == {"v": reference}


def test_other_names_and_gateway_public_url_expand() -> None:
    env = {"GATEWAY_PUBLIC_URL": "http://gw:8080", "WECHAT_MAIN_APIV3_KEY": "k" * 32}
    expanded, errors = expand_env(
        {"a": "${GATEWAY_PUBLIC_URL}/sim/bank", "b": "${WECHAT_MAIN_APIV3_KEY}"}, env
    )
    assert errors == []
    assert expanded == {"a": "http://gw:8080/sim/bank", "b": "k" * 32}


def test_an_allowlist_replaces_the_default_rule_but_never_opens_the_gateways_settings() -> None:
    env = RoutingEnv(
        {"BANK_ID": "M1", "OTHER": "x", "GATEWAY_PUBLIC_URL": "http://gw", **SECRETS},
        allow={"BANK_ID", "GATEWAY_ADMIN_TOKEN"},
    )
    expanded, errors = expand_env({"a": "${BANK_ID}", "b": "${GATEWAY_PUBLIC_URL}"}, env)
    assert (expanded, errors) == ({"a": "M1", "b": "http://gw"}, [])
    _, errors = expand_env({"a": "${OTHER}", "b": "${GATEWAY_ADMIN_TOKEN}"}, env)
    assert errors == [
        "a: environment variable OTHER is not among the names GATEWAY_ROUTING_ENV_ALLOW allows",
        "b: environment variable GATEWAY_ADMIN_TOKEN is the gateway's own setting; a routing"
        " file may not read it",
    ]


def test_the_gateway_reads_the_allowlist_from_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_ROUTING_ENV_ALLOW", "BANK_ID, ALIPAY_APP_ID")
    monkeypatch.setenv("BANK_ID", "M1")
    monkeypatch.setenv("UNLISTED", "x")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.routing_env_allow == frozenset({"BANK_ID", "ALIPAY_APP_ID"})
    env = routing_env(settings)
    assert env.refusal("BANK_ID") is None
    assert env.refusal("UNLISTED") is not None
    assert env["GATEWAY_PUBLIC_URL"] == settings.effective_public_url
    assert env.refusal("GATEWAY_PUBLIC_URL") is None


def test_the_shipped_routing_file_still_loads_through_the_gateways_env() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    loaded = parse_routing(
        (ROOT / "config" / "routing.yaml").read_bytes(), "routing.yaml", routing_env(settings)
    )
    bank = loaded.config.channels["bank_icbc"].config
    assert bank["base_url"] == f"{settings.effective_public_url}/sim/bank"
