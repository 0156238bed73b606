"""`gateway demo` (gateway/cli/serve.py) as a process, under a umask that would leave files
world-readable: it starts with the shipped config/ (development keys and simulators allowed
without GATEWAY_ALLOW_DEV_KEYS), its var dir is 0700 and the demo merchant's credentials 0600,
and it prints how to make a first request."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import redis.asyncio as aioredis

from tests.fixtures import MASTER_KEY, REDIS_URL, ROOT
from tests.integration.processes import serving
from tests.support import free_port


def test_demo_starts_with_the_development_set_up_and_keeps_its_files_private(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    port, var = free_port(), tmp_path / "var"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_PORT": str(port),
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_VAR_DIR": str(var),
        "GATEWAY_ROUTING_FILE": str(ROOT / "config" / "routing.yaml"),
        "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
    }
    log = tmp_path / "demo.log"
    demo = ("import os, sys; os.umask(0); from gateway.cli import main;"
            " sys.exit(main(['demo']))")  # fmt: skip
    with serving([sys.executable, "-c", demo], env, log):
        merchant_file = var / "demo-merchant.json"
        assert stat.S_IMODE(var.stat().st_mode) == 0o700
        assert stat.S_IMODE(merchant_file.stat().st_mode) == 0o600
        assert json.loads(merchant_file.read_text())["key_type"] == "hmac-sha256"
        assert [p.name for p in var.iterdir()] == ["demo-merchant.json"]  # no temporary left
        assert f"--merchant-file {merchant_file}" in log.read_text()
