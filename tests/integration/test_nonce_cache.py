"""The nonce cache against what a real Redis does to it (each test runs a Redis of its own): a
restart from an older snapshot and a failover to a replica that lagged lose nonces without
leaving Redis empty, and are caught by the cache's generation (Redis's run_id and replication
id); a Redis whose eviction policy may drop nonces is refused at start-up."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import asyncpg
import orjson
import pytest

from gateway.auth.admission import UnsafeRedisConfig
from tests.fixtures import MASTER_KEY, ROOT
from tests.redis_servers import RedisServer, gateway_on, redis_server
from tests.support import Creds, MerchantClient, free_port


def order(merchant_order_id: str) -> bytes:
    return orjson.dumps(
        {"merchant_order_id": merchant_order_id, "amount": 100, "currency": "CNY",
         "method": "card", "description": "x"}
    )  # fmt: skip


def timestamp_of(header: str) -> int:
    return int(header.split('timestamp="')[1].split('"')[0])


async def generations(db: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM nonce_cache_generations ORDER BY opened_at"))


async def run_id(server: RedisServer) -> str:
    client = server.client()
    try:
        info = await client.info("server")
        return str(info["run_id"])
    finally:
        await client.aclose()


async def assert_refused_as_signed_before_the_loss(
    client: MerchantClient, raw: bytes, auth: str
) -> None:
    replay = await client.request("POST", "/v1/payments", raw=raw, auth=auth)
    assert (replay.status, replay.json["code"]) == (503, "service_unavailable"), replay.body
    assert "sign the request again" in replay.json["detail"]


async def test_a_redis_restarted_from_an_older_snapshot_is_a_lost_cache(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool, tmp_path: Path
) -> None:
    with redis_server(tmp_path / "redis") as server:
        async with gateway_on(database_url, redis_prefix, server.url) as gw:
            client = gw.client(merchant)
            assert (await client.create_payment()).status == 201
            snapshot = server.client()
            await snapshot.save()  # the generation, marked as holding nonces, is in the snapshot
            await snapshot.aclose()
            raw = order("S1")
            captured = client.auth_header("POST", "/v1/payments", raw)
            first = await client.request("POST", "/v1/payments", raw=raw, auth=captured)
            assert first.status == 201
            before = await run_id(server)
            server.stop()
            server.start()  # from the snapshot: the generation is back, the captured nonce is not
            assert await run_id(server) != before
            await assert_refused_as_signed_before_the_loss(client, raw, captured)
            [_, reopened] = await generations(db)
            assert reopened["redis_run_id"] == await run_id(server)
            assert reopened["refuse_before"] > timestamp_of(captured)
            await asyncio.sleep(max(0.0, reopened["refuse_before"] - time.time()))
            retried = await client.request("POST", "/v1/payments", raw=raw)
            assert retried.status == 200 and retried.json["id"] == first.json["id"]


async def test_a_failover_to_a_replica_that_lagged_is_a_lost_cache(
    database_url: str, redis_prefix: str, merchant: Creds, db: asyncpg.Pool, tmp_path: Path
) -> None:
    with redis_server(tmp_path / "primary", "--repl-diskless-sync-delay", "0") as primary:
        with redis_server(
            tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port)
        ) as replica:
            replica_client = replica.client()
            async with gateway_on(database_url, redis_prefix, primary.url) as old:
                assert (await old.client(merchant).create_payment()).status == 201

                primary_client = primary.client()
                # every write so far (the first nonce among them) reached the replica
                assert await primary_client.execute_command("WAIT", 1, 10_000) == 1
                await primary_client.aclose()
                # the replica is promoted; the primary records one more nonce the replica
                # never gets (it lagged)
                await replica_client.execute_command("REPLICAOF", "NO", "ONE")
                raw = order("F1")
                captured = old.client(merchant).auth_header("POST", "/v1/payments", raw)
                first = await old.client(merchant).request(
                    "POST", "/v1/payments", raw=raw, auth=captured
                )
                assert first.status == 201
            await replica_client.aclose()
            # the gateways now use the promoted replica, which holds the old generation's hash
            async with gateway_on(database_url, redis_prefix, replica.url) as new:
                await assert_refused_as_signed_before_the_loss(new.client(merchant), raw, captured)
            [_, promoted] = await generations(db)
            assert promoted["redis_run_id"] == await run_id(replica)
            assert promoted["refuse_before"] > timestamp_of(captured)


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl"])
async def test_a_redis_that_may_evict_nonces_is_refused_at_start(
    database_url: str, redis_prefix: str, tmp_path: Path, policy: str
) -> None:
    with redis_server(tmp_path / "redis", "--maxmemory-policy", policy) as server:
        with pytest.raises(UnsafeRedisConfig, match=f"maxmemory-policy is {policy}"):
            async with gateway_on(database_url, redis_prefix, server.url):
                pass


async def test_gateway_serve_exits_naming_the_eviction_policy_to_change(
    database_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    with redis_server(tmp_path / "redis", "--maxmemory-policy", "allkeys-lru") as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            GATEWAY_DATABASE_URL=database_url,
            GATEWAY_REDIS_URL=server.url,
            GATEWAY_REDIS_PREFIX=redis_prefix,
            GATEWAY_MASTER_KEY=MASTER_KEY,
            GATEWAY_PORT=str(free_port()),
            GATEWAY_CONFIG_DIR=str(ROOT / "config"),
            GATEWAY_ROUTING_FILE=str(ROOT / "config" / "routing.yaml"),
            GATEWAY_RISK_FILE=str(ROOT / "config" / "risk.yaml"),
            GATEWAY_ALLOW_DEV_KEYS="true",  # the shipped routing file trusts development keys
            GATEWAY_VAR_DIR=str(tmp_path / "var"),
        )
        result = await asyncio.to_thread(
            subprocess.run,
            [str(ROOT / ".venv" / "bin" / "gateway"), "serve"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "gateway: Redis's maxmemory-policy is allkeys-lru" in result.stderr
    assert "Set maxmemory-policy noeviction" in result.stderr


async def test_a_redis_whose_policy_cannot_be_read_is_logged_and_used(
    database_url: str,
    redis_prefix: str,
    merchant: Creds,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Managed Redis services often disable CONFIG: the gateway cannot check, says so loudly,
    and runs."""
    with redis_server(tmp_path / "redis", "--rename-command", "CONFIG", '""') as server:
        async with gateway_on(database_url, redis_prefix, server.url) as gw:
            assert (await gw.client(merchant).create_payment()).status == 201
    assert "redis_eviction_policy_unknown" in capsys.readouterr().out
