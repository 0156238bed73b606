"""One fault-injection scenario from start to verdict: start the cluster, subscribe the
receiver, drive the load while a fault is injected, let everything settle, check the
invariants, save the figures under var/chaos/."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from gateway.domain.states import EVENT_TYPES
from tests.chaos import invariants
from tests.chaos.harness import RESULTS_DIR, Cluster, save_result
from tests.chaos.load import LoadDriver, Mix, Receiver
from tests.support import MerchantClient


@dataclass(frozen=True)
class Profile:
    name: str
    journeys: int
    concurrency: int
    settle: str
    """"close": the merchant closes what is left pending (short form); "expire": the status
    sync closes it at its expiry (full form)."""
    kills: int = 1


SHORT = Profile("short", journeys=100, concurrency=12, settle="close")
FULL = Profile("full", journeys=600, concurrency=24, settle="expire", kills=3)

EXPIRES_IN = 60
LEASE_S = 60  # the dispatcher's and the sync's lease (gateway/services/callbacks.py, sync.py)


@dataclass
class Run:
    name: str
    profile: Profile
    cluster: Cluster
    http: aiohttp.ClientSession
    receiver: Receiver
    driver: LoadDriver
    figures: dict[str, Any] = field(default_factory=dict)

    async def at_fraction(self, fraction: float) -> None:
        """Wait until this share of the journeys has finished."""
        goal = int(self.profile.journeys * fraction)
        while self.driver.finished < goal:
            self.driver.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.driver.progress.wait(), 1)

    async def set_faults(self, adapter: str, faults: dict[str, Any]) -> None:
        for base in self.cluster.sim_bases():
            async with self.http.put(f"{base}/sim/{adapter}/control/faults", json=faults) as r:
                assert r.status == 200, await r.text()

    async def load_with(self, fault: Callable[[Run], Awaitable[None]]) -> None:
        """Run the whole load, with `fault` running alongside it."""
        load = asyncio.create_task(self.driver.run(self.profile.journeys, self.profile.concurrency))
        try:
            await fault(self)
        finally:
            self.figures["load_s"] = round(await load, 2)

    async def retry_failed_deliveries(self) -> int:
        """What a merchant does once its endpoint is healthy again: list the deliveries that
        ran out of retries (`GET /v1/webhook-deliveries?status=failed`) and retry each."""
        assert self.cluster.creds is not None
        client = MerchantClient(self.cluster.gateways[0].url, self.cluster.creds, self.http)
        failed: list[str] = []
        path = "/v1/webhook-deliveries?status=failed&limit=100"
        while True:
            page = await client.request("GET", path)
            assert page.status == 200, page.body
            failed += [d["id"] for d in page.json["data"]]
            if not page.json["has_more"]:
                break
            path = f"/v1/webhook-deliveries?status=failed&limit=100&starting_after={failed[-1]}"
        for delivery_id in failed:
            reply = await client.request("POST", f"/v1/webhook-deliveries/{delivery_id}/retry")
            assert reply.status == 202, reply.body
        return len(failed)

    async def settle_and_check(
        self,
        quiet_within: float | None = None,
        after_settle: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        db = await asyncpg.create_pool(self.cluster.database_url, min_size=1, max_size=4)
        assert db is not None
        try:
            settled = time.monotonic()
            if self.profile.settle == "close":
                # a moment for notifications and the sync, then the merchant closes the rest
                await invariants.wait_quiet(db, within=3)
                pending = [
                    r["id"]
                    for r in await db.fetch("SELECT id FROM payments WHERE status = 'pending'")
                ]
                self.figures["closed_by_merchant_at_end"] = len(pending)
                await self.driver.close_pending(pending)
                within = quiet_within or LEASE_S + 20
            else:
                within = quiet_within or EXPIRES_IN + LEASE_S + 30
            _, left = await invariants.wait_quiet(db, within=within)
            if after_settle is not None:
                await after_settle()
                _, left = await invariants.wait_quiet(db, within=within)
            self.figures["settle_s"] = round(time.monotonic() - settled, 2)
            self.figures["backlog_left"] = left
            result = await invariants.check(
                db, self.http, self.cluster.sim_bases(), self.driver, self.receiver
            )
        finally:
            await db.close()
        result.update(self.figures)
        result["scenario"] = self.name
        result["profile"] = self.profile.name
        result["gateway_processes"] = len(self.cluster.gateways)
        result["gateway_starts"] = sum(gw.starts for gw in self.cluster.gateways)
        result["log_errors"] = sum(gw.log_count('"level": "error"') for gw in self.cluster.gateways)
        save_result(f"{self.name}-{self.profile.name}", result)
        return result


@asynccontextmanager
async def scenario(
    name: str,
    profile: Profile,
    *,
    gateways: int = 1,
    external_simulators: bool = False,
    env: dict[str, str] | None = None,
    receiver: Receiver | None = None,
    mix: Mix | None = None,
) -> AsyncIterator[Run]:
    workdir = RESULTS_DIR / "logs" / f"{name}-{profile.name}"
    shutil.rmtree(workdir, ignore_errors=True)
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=300), timeout=aiohttp.ClientTimeout(total=30)
    )
    cluster = Cluster(workdir, external_simulators=external_simulators, env_overrides=env or {})
    rec = receiver or Receiver(secret="")
    try:
        await cluster.start(gateways, http)
        assert cluster.creds is not None and cluster.creds.webhook_secret is not None
        rec.secret = cluster.creds.webhook_secret
        await rec.start()
        client = MerchantClient(cluster.gateways[0].url, cluster.creds, http)
        reply = await client.request(
            "POST",
            "/v1/webhook-endpoints",
            {"url": f"{rec.url}/endpoint", "events": sorted(EVENT_TYPES)},
        )
        assert reply.status == 201, reply.body
        driver = LoadDriver(
            http,
            cluster.creds,
            cluster.targets,
            f"{rec.url}/notify",
            tag=f"{name}-{cluster.redis_prefix.split(':')[2]}",
            expires_in=EXPIRES_IN,
            mix=mix,
        )
        yield Run(name, profile, cluster, http, rec, driver)
    finally:
        await rec.stop()
        await http.close()
        await cluster.close()


def verdict(result: dict[str, Any], cluster: Cluster) -> str:
    """The assertion message: the violations, then the ends of the processes' logs."""
    logs = "\n".join(f"--- {gw.name}\n{gw.log_tail(15)}" for gw in cluster.gateways)
    return f"{result['violations'][:20]}\n{logs}"
