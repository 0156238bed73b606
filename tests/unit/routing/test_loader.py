"""`${NAME}` expansion, versions, and the holder's hot reload."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from routing.loader import RoutingHolder, expand_env, load_routing, parse_routing


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


# ---- environment variables ------------------------------------------------------------------


def test_env_expansion_in_strings_anywhere(data, load) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bank_a"]["config"] = {
        "base_url": "${PUBLIC}/sim/bank",
        "nested": {"list": ["${A}-${B}", 5, "plain $ sign", "$${PUBLIC} stays"]},
    }
    data["rules"] = [
        {"name": "vip", "when": {"merchant": "${VIP_MERCHANT}"}, "route": {"channels": ["bank_a"]}}
    ]
    loaded = load(data, {"PUBLIC": "http://h:1", "A": "a", "B": "b", "VIP_MERCHANT": "mch_1"})
    config = loaded.config.channels["bank_a"].config
    assert config["base_url"] == "http://h:1/sim/bank"
    assert config["nested"]["list"] == ["a-b", 5, "plain $ sign", "${PUBLIC} stays"]
    when = loaded.config.rules[0].when
    assert when is not None and when.merchant == ["mch_1"]


def test_unset_variable_is_an_error_naming_the_path(data, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["alipay_main"]["config"] = {"base_url": "${GATEWAY_PUBLIC_URL}/sim/alipay"}
    data["channels"]["bank_b"]["config"] = {"keys": ["${KEY_DIR}/a.pem"]}
    assert errors_of(data, {}) == [
        "channels.bank_b.config.keys[0]: environment variable KEY_DIR is not set",
        "channels.alipay_main.config.base_url: environment variable GATEWAY_PUBLIC_URL is not set",
    ]


def test_fallback_and_malformed_references(data, load, errors_of) -> None:  # type: ignore[no-untyped-def]
    data["channels"]["bank_a"]["config"] = {"url": "${NOPE:-http://localhost:9}/x", "e": "${:-}"}
    assert errors_of(data, {}) == [
        "channels.bank_a.config.e: malformed variable reference in '${:-}' (use ${NAME})"
    ]
    del data["channels"]["bank_a"]["config"]["e"]
    assert load(data, {}).config.channels["bank_a"].config["url"] == "http://localhost:9/x"
    assert load(data, {"NOPE": "https://x"}).config.channels["bank_a"].config["url"] == (
        "https://x/x"
    )


def test_env_defaults_to_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: dict[str, Any]
) -> None:
    data["channels"]["bank_a"]["config"] = {"base_url": "${ROUTING_TEST_URL}/sim/bank"}
    path = tmp_path / "routing.yaml"
    path.write_text(_dump(data))
    monkeypatch.setenv("ROUTING_TEST_URL", "http://example.test")
    loaded = load_routing(path)
    assert loaded.config.channels["bank_a"].config["base_url"] == "http://example.test/sim/bank"
    assert "ROUTING_TEST_URL" in os.environ


def test_expand_env_leaves_non_strings_alone() -> None:
    assert expand_env({"a": [1, True, None, 2.5]}, {}) == ({"a": [1, True, None, 2.5]}, [])


def test_version_is_the_short_sha256_of_the_bytes(data) -> None:  # type: ignore[no-untyped-def]
    raw = _dump(data).encode()
    loaded = parse_routing(raw, "x.yaml", {})
    assert loaded.digest == hashlib.sha256(raw).hexdigest()
    assert loaded.version == loaded.digest[:12]
    assert parse_routing(raw + b"# comment\n", "x.yaml", {}).version != loaded.version


# ---- RoutingHolder --------------------------------------------------------------------------


@pytest.fixture
def routing_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(_dump(data))
    return path


def test_holder_loads_at_start_and_refuses_an_invalid_start(tmp_path: Path) -> None:
    from routing.loader import RoutingError

    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: {}\n")
    with pytest.raises(RoutingError):
        RoutingHolder(bad, {})


def test_unchanged_file_is_a_no_op(routing_file: Path) -> None:
    holder = RoutingHolder(routing_file, {})
    first = holder.current
    assert holder.reload() is False
    assert holder.reload() is False
    assert holder.current is first
    assert holder.reload_failures == 0 and holder.last_error is None and not holder.stale


def test_valid_edit_swaps(routing_file: Path, data: dict[str, Any]) -> None:
    holder = RoutingHolder(routing_file, {})
    old = holder.current
    data["rules"] = [
        {"name": "cards", "when": {"method": "card"}, "route": {"channels": ["bank_b", "bank_a"]}}
    ]
    routing_file.write_text(_dump(data))
    assert holder.reload() is True
    assert holder.current is not old
    assert holder.current.version != old.version
    assert [r.name for r in holder.current.config.rules] == ["cards"]
    assert holder.reloads == 1
    assert holder.reload() is False


def test_invalid_edit_keeps_the_old_rules_and_records_the_error(
    routing_file: Path, data: dict[str, Any]
) -> None:
    holder = RoutingHolder(routing_file, {})
    old = holder.current
    data["default"]["route"]["channels"] = ["bank_a", "alipay_bak"]
    routing_file.write_text(_dump(data))
    assert holder.reload() is False
    assert holder.current is old
    assert holder.last_error == "default.route.channels: unknown channel 'alipay_bak'"
    assert holder.last_error_at is not None
    assert holder.reload_failures == 1
    assert holder.stale
    # the same bad content is not counted again on every poll
    assert holder.reload() is False
    assert holder.reload_failures == 1
    # another bad edit is
    routing_file.write_text("channels: [\n")
    assert holder.reload() is False
    assert holder.reload_failures == 2
    assert holder.last_error is not None and holder.last_error.startswith("(yaml): line")
    # fixing it swaps, and the file is in sync again; the history stays
    data["default"]["route"]["channels"] = ["bank_a", "alipay_backup"]
    routing_file.write_text(_dump(data))
    assert holder.reload() is True
    assert not holder.stale
    assert holder.current.config.default.route.channels == ["bank_a", "alipay_backup"]
    assert holder.reload_failures == 2 and holder.last_error is not None


def test_reverting_to_the_rules_in_force_clears_staleness(
    routing_file: Path, data: dict[str, Any]
) -> None:
    holder = RoutingHolder(routing_file, {})
    good = routing_file.read_bytes()
    routing_file.write_text("nonsense: true\n")
    assert holder.reload() is False and holder.stale
    routing_file.write_bytes(good)
    assert holder.reload() is False
    assert not holder.stale


def test_a_vanished_file_keeps_the_rules(routing_file: Path) -> None:
    holder = RoutingHolder(routing_file, {})
    old = holder.current
    routing_file.unlink()
    assert holder.reload() is False
    assert holder.reload() is False
    assert holder.current is old
    assert holder.reload_failures == 1
    assert holder.last_error is not None and "cannot read" in holder.last_error


def test_readers_always_see_a_whole_version(routing_file: Path, data: dict[str, Any]) -> None:
    holder = RoutingHolder(routing_file, {})
    versions = []
    for n in range(5):
        data["default"]["description"] = f"edit {n}"
        routing_file.write_text(_dump(data))
        assert holder.reload() is True
        versions.append(holder.current.version)
    assert len(set(versions)) == 5

    seen: list[str] = []

    def reader() -> None:
        for _ in range(200):
            current = holder.current
            assert current.config.default.description is not None
            seen.append(current.version)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(5, 10):
        data["default"]["description"] = f"edit {n}"
        routing_file.write_text(_dump(data))
        holder.reload()
    for t in threads:
        t.join()
    assert seen


# ---- the injected channel check, and what runs before a swap ------------------------------


def _refuse_bad_urls(name: str, channel: Any) -> list[str]:
    """A stand-in for the gateway's adapter check: refuses a base_url that is not http(s)."""
    url = channel.config.get("base_url", "http://")
    return [] if url.startswith("http") else [f"config.base_url: not an http(s) URL: {url!r}"]


def test_the_channel_check_names_each_channel_and_its_line(data: dict[str, Any]) -> None:
    from routing.loader import RoutingError

    data["channels"]["bank_a"]["config"] = {"base_url": "ftp://bank"}
    data["channels"]["bank_b"]["config"] = {"base_url": "http://bank"}
    raw = _dump(data).encode()
    assert parse_routing(raw, "r.yaml", {}).config  # without the check: valid
    with pytest.raises(RoutingError) as info:
        parse_routing(raw, "r.yaml", {}, _refuse_bad_urls)
    [error] = info.value.errors
    assert error == "channels.bank_a.config.base_url: not an http(s) URL: 'ftp://bank'"
    line = raw.decode().splitlines()[(info.value.line_of(error) or 0) - 1]
    assert line.strip() == "base_url: ftp://bank"


def test_the_channel_check_is_reported_beside_the_file_errors(data: dict[str, Any]) -> None:
    from routing.loader import RoutingError

    data["channels"]["bank_a"]["config"] = {"base_url": "ftp://bank"}
    data["default"]["route"]["channels"].append("nope")
    with pytest.raises(RoutingError) as info:
        parse_routing(_dump(data).encode(), "r.yaml", {}, _refuse_bad_urls)
    assert info.value.errors == [
        "default.route.channels: unknown channel 'nope'",
        "channels.bank_a.config.base_url: not an http(s) URL: 'ftp://bank'",
    ]


def test_the_holder_checks_at_start_and_on_reload(routing_file: Path, data: dict[str, Any]) -> None:
    from routing.loader import RoutingError

    holder = RoutingHolder(routing_file, {}, check=_refuse_bad_urls)
    old = holder.current
    data["channels"]["bank_a"]["config"] = {"base_url": "ftp://bank"}
    routing_file.write_text(_dump(data))
    assert holder.reload() is False and holder.current is old
    assert holder.last_error == "channels.bank_a.config.base_url: not an http(s) URL: 'ftp://bank'"
    with pytest.raises(RoutingError):
        RoutingHolder(routing_file, {}, check=_refuse_bad_urls)


def test_prepare_runs_before_the_swap_and_may_refuse(
    routing_file: Path, data: dict[str, Any]
) -> None:
    from routing.loader import LoadedRouting, RoutingError

    holder = RoutingHolder(routing_file, {})
    old = holder.current
    seen: list[str] = []

    def refuse(new: LoadedRouting) -> None:
        assert holder.current is old  # not swapped yet
        seen.append(new.version)
        raise RoutingError(["channels.bank_a.config: the adapter refused it"])

    data["default"]["description"] = "an edit"
    routing_file.write_text(_dump(data))
    assert holder.reload(prepare=refuse) is False
    assert holder.current is old and holder.stale and holder.reload_failures == 1
    assert holder.last_error == "channels.bank_a.config: the adapter refused it"
    # the same content is not prepared again on every poll...
    assert holder.reload(prepare=refuse) is False and len(seen) == 1
    # ...but an operator's explicit reload tries it again (a key file may have been fixed)
    assert holder.reload(force=True, prepare=refuse) is False
    assert len(seen) == 2 and holder.reload_failures == 2
    assert holder.reload(force=True, prepare=lambda new: seen.append(new.version)) is True
    assert holder.current.version == seen[-1] and not holder.stale
