"""`gateway serve` processes and production safety (API.md §4, gateway/production.py): with the
shipped config/ and no GATEWAY_ALLOW_DEV_KEYS it exits non-zero naming what to change, before
it reaches any database; with GATEWAY_ALLOW_DEV_KEYS=true it starts; each of the three checks
(development keys, a channel pointed at the gateway's own /sim/, simulators on a non-loopback
host) refuses alone; a routing file with the channel's own keys and host starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.fixtures import MASTER_KEY, REDIS_URL, ROOT
from tests.integration.processes import serving
from tests.support import free_port
from tests.unit.gateway.production_files import bank_routing, real_bank_keys

UNREACHABLE_DB = "postgresql://postgres@127.0.0.1:1/none"  # refused before it is reached
DEV_BANK_KEYS = (
    str(ROOT / "config" / "keys" / "bank" / "merchant_private.pem"),
    str(ROOT / "config" / "keys" / "bank" / "bank_public.pem"),
)


def env_of(port: int, database_url: str = UNREACHABLE_DB, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_ROUTING_FILE": str(ROOT / "config" / "routing.yaml"),
        "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
        **extra,
    }


def serve_refused(env: dict[str, str]) -> list[str]:
    """The problems `gateway serve` exits with (it must exit 1 within the timeout)."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("gateway: refusing to start, "), done.stderr
    assert lines[-1] == (
        "Fix them, or set GATEWAY_ALLOW_DEV_KEYS=true only for development and tests"
        " (`gateway demo` does)."
    )
    return [line.strip() for line in lines[1:-1]]


def serves(env: dict[str, str], tmp_path: Path) -> None:
    """`gateway serve` starts: /readyz answers 200 (then it is stopped)."""
    with serving([sys.executable, "-m", "gateway.cli", "serve"], env, tmp_path / "serve.log"):
        pass


@pytest.fixture
def real_keys(tmp_path: Path) -> tuple[str, str]:
    return real_bank_keys(tmp_path)


def test_serve_with_the_shipped_config_refuses_to_start_naming_what_to_change() -> None:
    problems = serve_refused(env_of(free_port(), GATEWAY_SIMULATORS="true"))
    routing = ROOT / "config" / "routing.yaml"
    assert (
        f"{routing}: channels.bank_icbc.config.bank_public_key: holds a development key shipped"
        " under config/keys/ (bank/bank_private.pem, bank/bank_public.pem); use the channel's"
        " real key"
    ) in problems
    assert any(p.startswith(f"{routing}: channels.wechat_main.config.base_url: http://127.0.0.1:")
               and "is this gateway's own simulator" in p for p in problems)  # fmt: skip


def test_serve_with_the_shipped_config_and_allow_dev_keys_starts(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    env = env_of(
        free_port(),
        database_url,
        GATEWAY_ALLOW_DEV_KEYS="true",
        GATEWAY_SIMULATORS="true",
        GATEWAY_REDIS_PREFIX=redis_prefix,
        GATEWAY_VAR_DIR=str(tmp_path / "var"),
    )
    serves(env, tmp_path)


def test_development_keys_alone_refuse(tmp_path: Path) -> None:
    routing = bank_routing(tmp_path / "routing.yaml", *DEV_BANK_KEYS)
    problems = serve_refused(env_of(free_port(), GATEWAY_ROUTING_FILE=str(routing)))
    assert [p.split(": ", 2)[1] for p in problems] == [
        "channels.bank_main.config.merchant_private_key",
        "channels.bank_main.config.bank_public_key",
    ]


def test_a_channel_pointed_at_the_gateways_own_sim_alone_refuses(
    tmp_path: Path, real_keys: tuple[str, str]
) -> None:
    port = free_port()
    base_url = f"http://localhost:{port}/sim/bank"
    routing = bank_routing(tmp_path / "routing.yaml", *real_keys, base_url=base_url)
    problems = serve_refused(env_of(port, GATEWAY_ROUTING_FILE=str(routing)))
    assert problems == [
        f"{routing}: channels.bank_main.config.base_url: {base_url} is this gateway's own"
        " simulator; point the channel at its real API root"
    ]


def test_simulators_on_a_non_loopback_host_alone_refuse(
    tmp_path: Path, real_keys: tuple[str, str]
) -> None:
    routing = bank_routing(tmp_path / "routing.yaml", *real_keys)
    env = env_of(
        free_port(), GATEWAY_ROUTING_FILE=str(routing), GATEWAY_SIMULATORS="true",
        GATEWAY_HOST="0.0.0.0",
    )  # fmt: skip
    [problem] = serve_refused(env)
    assert problem.startswith("GATEWAY_SIMULATORS: the channel simulators would be mounted on")


def test_a_routing_file_with_the_channels_own_keys_and_host_starts(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    real_keys: tuple[str, str],
) -> None:
    routing = bank_routing(tmp_path / "routing.yaml", *real_keys)
    env = env_of(
        free_port(),
        database_url,
        GATEWAY_ROUTING_FILE=str(routing),
        GATEWAY_REDIS_PREFIX=redis_prefix,
        GATEWAY_VAR_DIR=str(tmp_path / "var"),
    )
    serves(env, tmp_path)
