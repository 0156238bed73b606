"""`gateway routes check` through the gateway's configuration pipeline: a channel's `config:`
is validated by its adapter, key files included, and one bad value refuses the whole file
(API.md §4). No servers: the adapters are only built, never called."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser
from gateway.services.channels import adapter_config, channel_problems
from routing.schema import ChannelConfig

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "config" / "routing.yaml"


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG_DIR", str(ROOT / "config"))
    monkeypatch.setenv("GATEWAY_PUBLIC_URL", "http://127.0.0.1:8080")


def write_shipped(tmp_path: Path, edit: dict[str, dict[str, object]]) -> tuple[Path, list[str]]:
    """The shipped routing file with `edit` merged into channels' `config:`; (path, lines)."""
    data = yaml.safe_load(SHIPPED.read_text())
    for name, changes in edit.items():
        data["channels"][name]["config"].update(changes)
    path = tmp_path / "routing.yaml"
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return path, text.splitlines()


def run(*argv: str) -> int:
    """The command as `gateway` runs it, without `main`'s log set-up (which would keep
    pytest's captured stderr for the tests after this one)."""
    args = build_parser().parse_args(argv)
    code: int = args.fn(args)
    return code


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run("routes", "check", str(path))
    return code, capsys.readouterr().out


def test_the_shipped_file_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(SHIPPED, capsys)
    assert code == 0, out
    assert "valid, version" in out


def test_a_missing_key_file_refuses_the_file_and_names_the_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, lines = write_shipped(
        tmp_path, {"bank_cmb": {"merchant_private_key": "keys/bank/no_such_key.pem"}}
    )
    code, out = check(path, capsys)
    assert code == 1
    assert "INVALID, 1 error" in out
    [error] = [line for line in out.splitlines() if "channels." in line]
    assert "channels.bank_cmb.config.merchant_private_key" in error and "no_such_key.pem" in error
    line = int(error.split("line ", 1)[1].split(":", 1)[0])
    assert (
        lines[line - 1].strip() == "merchant_private_key: keys/bank/no_such_key.pem"
    )  # the field's own line


def test_every_bad_channel_is_named_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, lines = write_shipped(
        tmp_path,
        {
            "wechat_sp": {"base_url": "not a url"},
            "alipay_backup": {"base_url": "ftp://alipay.example"},
        },
    )
    code, out = check(path, capsys)
    assert code == 1
    assert "INVALID, 2 errors" in out
    errors = [line.strip() for line in out.splitlines() if "channels." in line]
    assert [e.split(": ", 1)[1].split(":", 1)[0] for e in errors] == [
        "channels.wechat_sp.config.base_url",
        "channels.alipay_backup.config.base_url",
    ]
    for error in errors:
        line = int(error.removeprefix("line ").split(":", 1)[0])
        assert lines[line - 1].strip().startswith("base_url:")


def test_explain_refuses_the_file_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = write_shipped(tmp_path, {"bank_icbc": {"base_url": "nowhere"}})
    code = run(
        "routes", "explain", "--method", "card", "--amount", "1999", "--currency", "CNY",
        "--file", str(path),
    )  # fmt: skip
    assert code == 1
    assert "channels.bank_icbc.config.base_url" in capsys.readouterr().err


def test_the_adapter_gets_the_channel_timeout_unless_its_config_sets_one() -> None:
    channel = ChannelConfig.model_validate(
        {"adapter": "bank", "methods": ["card"], "timeout_ms": 8000, "config": {"a": 1}}
    )
    assert adapter_config(channel) == {"timeout_ms": 8000, "a": 1}
    own = channel.model_copy(update={"config": {"timeout_ms": 500}})
    assert adapter_config(own) == {"timeout_ms": 500}


def test_adapter_errors_become_paths_of_the_channel() -> None:
    channel = ChannelConfig.model_validate(
        {"adapter": "bank", "methods": ["card"], "config": {"base_url": "x"}}
    )
    errors = ["base_url: bad", "timeout_ms: too long", "(config): cannot read key", "odd"]
    assert channel_problems(channel, errors) == [
        "config.base_url: bad",
        "timeout_ms: too long",  # the channel's own timeout_ms, merged into the config
        "config: cannot read key",
        "config: odd",
    ]
    own = channel.model_copy(update={"config": {"timeout_ms": 90}})
    assert channel_problems(own, ["timeout_ms: too short"]) == ["config.timeout_ms: too short"]
