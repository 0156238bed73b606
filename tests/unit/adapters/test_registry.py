"""adapters.registry.check_config: every adapter's config model and key files, validated without
building an adapter; errors as ``field: problem``, never key material. Reads the development
keys under config/; no network."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from adapters.registry import ADAPTERS, AdapterConfigError, check_config

CONFIG_DIR = str(Path(__file__).resolve().parents[3] / "config")

GOOD: dict[str, dict[str, Any]] = {
    "bank": {
        "base_url": "http://127.0.0.1:1/sim/bank",
        "merchant_id": "M100200300",
        "merchant_private_key": "keys/bank/merchant_private.pem",
        "bank_public_key": "keys/bank/bank_public.pem",
    },
    "wechat": {
        "base_url": "http://127.0.0.1:1/sim/wechat",
        "mchid": 1900000109,  # YAML reads digits as a number
        "appid": "wxd678efh567hg6787",
        "merchant_private_key_path": "keys/wechat/apiclient_key.pem",
        "merchant_cert_path": "keys/wechat/apiclient_cert.pem",
        "platform_cert_path": "keys/wechat/platform_cert.pem",
        "apiv3_key_path": "keys/wechat/apiv3_key.txt",
    },
    "alipay": {
        "base_url": "http://127.0.0.1:1/sim/alipay",
        "app_id": 2021000000000001,
        "app_private_key_path": "keys/alipay/app_private_key.pem",
        "alipay_public_key_path": "keys/alipay/alipay_public_key.pem",
    },
    "unionpay": {"base_url": "http://127.0.0.1:1/sim/unionpay", "mer_id": "777290058110048"},
}
KEY_FIELD = {
    "bank": "merchant_private_key",
    "wechat": "merchant_private_key_path",
    "alipay": "app_private_key_path",
    "unionpay": "sign_key_path",
}


def errors(adapter: str, config: dict[str, Any]) -> list[str]:
    with pytest.raises(AdapterConfigError) as info:
        check_config(adapter, config, CONFIG_DIR)
    return info.value.errors


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_good_config_passes_without_building_anything(
    adapter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module(f"adapters.{adapter}.adapter")

    def no_build(*args: object) -> None:
        raise AssertionError("check_config built an adapter")

    monkeypatch.setattr(module, "build", no_build)
    check_config(adapter, GOOD[adapter], CONFIG_DIR)
    # the gateway puts the routing file's timeout_ms in: every adapter takes the routing
    # schema's whole range (up to 300 s)
    check_config(adapter, {"timeout_ms": 90_000, **GOOD[adapter]}, CONFIG_DIR)
    check_config(adapter, {**GOOD[adapter], "timeout_ms": 300_000, "max_attempts": 5}, CONFIG_DIR)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_shared_settings_are_refused_the_same_way(adapter: str) -> None:
    assert errors(adapter, {**GOOD[adapter], "timeout_ms": 300_001}) == [
        "timeout_ms: Input should be less than or equal to 300000"
    ]
    assert errors(adapter, {**GOOD[adapter], "max_attempts": 0}) == [
        "max_attempts: Input should be greater than or equal to 1"
    ]
    assert errors(adapter, {**GOOD[adapter], "base_url": "ftp://x"}) == [
        "base_url: base_url must be an absolute http(s) URL"
    ]
    assert errors(adapter, {**GOOD[adapter], "surprise": 1}) == [
        "surprise: Extra inputs are not permitted"
    ]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_key_files_must_exist_and_load(adapter: str, tmp_path: Path) -> None:
    field = KEY_FIELD[adapter]
    assert errors(adapter, {**GOOD[adapter], field: "keys/nope.pem"}) == [
        f"{field}: no such file 'keys/nope.pem'"
    ]
    not_a_key = tmp_path / "cert.pem"
    not_a_key.write_bytes((Path(CONFIG_DIR) / "keys/wechat/platform_cert.pem").read_bytes())
    [problem] = errors(adapter, {**GOOD[adapter], field: str(not_a_key)})
    assert problem.startswith(f"{field}: not a readable private key")
    assert "BEGIN" not in problem


def test_channel_specific_checks_name_their_field() -> None:
    assert errors("wechat", {**GOOD["wechat"], "merchant_cert_serial_no": "ABCDEF"}) == [
        "merchant_cert_serial_no: does not match merchant_cert_path"
    ]
    secret = "S3cretS3cretS3cretS3cretS3cret!!"
    [both] = errors("wechat", {**GOOD["wechat"], "apiv3_key": secret})
    assert "exactly one" in both and secret not in both
    assert errors(
        "unionpay", {**GOOD["unionpay"], "sign_cert_path": "keys/unionpay/unionpay_sign_cert.pem"}
    ) == ["sign_cert_path: does not match sign_key_path"]
    assert errors(
        "unionpay", {**GOOD["unionpay"], "root_cert_path": "keys/unionpay/middle_ca.pem"}
    ) == ["root_cert_path: not a root (self-issued) certificate"]
    [middle] = errors(
        "unionpay", {**GOOD["unionpay"], "middle_cert_path": "keys/unionpay/unionpay_sign_cert.pem"}
    )
    assert middle.startswith("middle_cert_path: ")


def test_an_adapters_wrapped_validation_error_is_reported_without_its_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An adapter that raises ValueError from pydantic's ValidationError: the wrapper's text
    quotes the offending inputs, so the registry reports the ValidationError it wraps."""
    module = importlib.import_module("adapters.unionpay.adapter")

    class Password(BaseModel):
        password: int

    def wrapping_load_keys(config: object, config_dir: str) -> None:
        try:
            Password.model_validate({"password": "S3cret-pw"})
        except ValidationError as exc:
            raise ValueError(f"bad key settings: {exc}") from exc

    monkeypatch.setattr(module, "load_keys", wrapping_load_keys)
    assert errors("unionpay", GOOD["unionpay"]) == [
        "password: Input should be a valid integer, unable to parse string as an integer"
    ]


def test_an_unknown_adapter_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown adapter"):
        check_config("paypal", {}, CONFIG_DIR)
