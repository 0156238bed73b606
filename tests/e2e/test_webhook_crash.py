"""At least once across a crash: the gateway runs as a real process (`gateway serve`), events
are produced by paying payments, their callbacks are pending and due or in flight (one receiver
hangs, the other is down), the gateway is killed with SIGKILL and started again, and every event
reaches every destination. Duplicates are allowed and counted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.store.webhooks import ABANDONED
from tests.fixtures import MASTER_KEY, REDIS_URL, ROOT
from tests.support import Creds, MerchantClient, free_port, wait_until

pytestmark = pytest.mark.e2e

PAYMENTS = 12
TIMEOUT_S = 1  # per attempt; the lease is 2 x timeout + 5 s = 7 s


@dataclass
class Merchant:
    """The merchant's two receivers: `hang` holds requests open until released."""

    hang: bool = True
    hits: list[tuple[str, str]] = field(default_factory=list)
    acked: set[tuple[str, str]] = field(default_factory=set)
    in_flight: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        key = (request.path, request.headers["webhook-id"])
        self.hits.append(key)
        if self.hang and request.path == "/slow":
            self.in_flight += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), 30)
            finally:
                self.in_flight -= 1
            return web.Response(status=503, text="was hanging")
        self.acked.add(key)
        return web.Response(text="ok")


async def serve(merchant: Merchant, port: int) -> TestServer:
    app = web.Application()
    app.router.add_post("/{tail:.*}", merchant.handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


@dataclass
class GatewayProcess:
    env: dict[str, str]
    log: Path
    url: str
    proc: asyncio.subprocess.Process | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(ROOT / ".venv" / "bin" / "gateway"), "serve",
                env=self.env, cwd=ROOT, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip

        async def healthy() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"gateway exited: {self.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.url + "/healthz") as r:
                    return r.status == 200
            return False

        await wait_until(healthy, within=30, interval=0.1)

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_sigkill_with_callbacks_due_loses_no_event(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
    db: asyncpg.Pool,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    port, down_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_PUBLIC_URL": url,
        "GATEWAY_MASTER_KEY": MASTER_KEY,
        "GATEWAY_SIMULATORS": "true",
        "GATEWAY_SIM_NOTIFY_TIME_SCALE": "0.001",
        "GATEWAY_CALLBACK_ALLOW_PRIVATE": "true",
        "GATEWAY_CALLBACK_TIMEOUT_S": str(TIMEOUT_S),
        "GATEWAY_WEBHOOK_RETRY_SCHEDULE": ",".join(["1"] * 10),
        "GATEWAY_SYNC_SCHEDULE": "0.5,1,2",
        "GATEWAY_DISPATCHER_POLL_S": "0.2",
        "GATEWAY_ROUTING_FILE": str(ROOT / "config" / "routing.yaml"),
        "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
        "GATEWAY_ALLOW_DEV_KEYS": "true",  # the shipped routing file's development keys
        "GATEWAY_LOG_LEVEL": "info",
    }
    gateway = GatewayProcess(env, tmp_path / "gateway.log", url)
    receivers = Merchant()
    slow = await serve(receivers, free_port())
    down: TestServer | None = None
    try:
        await gateway.start(http)
        client = MerchantClient(url, merchant, http)
        endpoint = await client.request(
            "POST",
            "/v1/webhook-endpoints",
            {"url": str(slow.make_url("/slow")), "events": ["payment.succeeded"]},
        )
        assert endpoint.status == 201, endpoint.body
        for _ in range(PAYMENTS):
            created = await client.create_payment(notify_url=f"http://127.0.0.1:{down_port}/down")
            assert created.status == 201, created.body
            async with http.post(created.json["next_action"]["url"], json={"action": "pay"}) as r:
                assert r.status == 200

        async def all_due_or_in_flight() -> bool:
            events = await db.fetchval("SELECT count(*) FROM events")
            tried = await db.fetchval(
                "SELECT count(*) FROM callback_deliveries WHERE attempts > 0 AND url LIKE '%/down'"
            )
            return events == PAYMENTS and tried > 0 and receivers.in_flight >= 4

        await wait_until(all_due_or_in_flight, within=20, interval=0.02)
        await gateway.kill()
        at_kill = dict(
            await db.fetch("SELECT status, count(*) FROM callback_deliveries GROUP BY status")
        )
        assert at_kill.get("succeeded", 0) == 0 and at_kill.get("failed", 0) == 0
        assert at_kill.get("delivering", 0) >= 4, at_kill  # leases of a dead process

        # the merchant comes back; so does the gateway
        receivers.hang = False
        receivers.release.set()
        down = await serve(receivers, down_port)
        await gateway.start(http)

        async def all_delivered() -> bool:
            done = await db.fetchval(
                "SELECT count(*) FROM callback_deliveries WHERE status = 'succeeded'"
            )
            return bool(done == 2 * PAYMENTS)

        await wait_until(all_delivered, within=30, interval=0.1)
    except BaseException:
        print(gateway.tail())
        raise
    finally:
        await gateway.kill(signal.SIGTERM)
        await slow.close()
        if down is not None:
            await down.close()

    event_ids = {r["id"] for r in await db.fetch("SELECT id FROM events")}
    for path in ("/slow", "/down"):
        assert {e for p, e in receivers.acked if p == path} == event_ids, path
    hits = Counter(receivers.hits)
    duplicates = sum(n - 1 for n in hits.values())
    abandoned = await db.fetchval(
        "SELECT count(*) FROM callback_attempts WHERE error = $1", ABANDONED
    )
    # the attempts in flight at the kill were recorded as abandoned and made again after their
    # lease; duplicates come from them and from the hung requests that timed out before the kill
    assert abandoned == at_kill["delivering"]
    assert duplicates >= 1
    print(
        f"\ncrash test: {len(event_ids)} events x 2 destinations, {len(receivers.hits)} requests"
        f" received, {duplicates} duplicates; at the kill: {at_kill};"
        f" abandoned attempts re-made after their lease: {abandoned}"
    )
