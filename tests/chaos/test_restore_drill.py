"""The restore drill (docs/operations.md, "Backups and restore"): the procedure of
deploy/backup/ run against a real gateway, not a description of one.

Merchants' journeys run against a `gateway serve` process (payments paid, cancelled, closed or
left pending; refunds racing each other) while the merchant's callback receiver is down, so
every event is still undelivered. Then `deploy/backup/backup.sh` dumps the database with the
gateway running, the database is dropped (the gateway stopped: the disaster), created empty,
restored by `deploy/backup/restore.sh`, `gateway migrate` runs, and the gateway starts again.
Checked: every payment, refund, event and open delivery is back exactly as it was dumped, the
gateway answers each payment as before (merchant keys decrypt under the same master key), and
once the receiver comes up every event is delivered to every destination with a valid
signature.

Short form in `make test` (40 journeys, well under a minute); the full form (marker `chaos`)
runs 300. Figures: var/chaos/restore-drill-<profile>.json."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from yarl import URL

from gateway.domain.states import EVENT_TYPES
from tests.chaos import harness
from tests.chaos.load import Receiver
from tests.chaos.scenario import Profile, scenario
from tests.support import MerchantClient

BACKUP_DIR = harness.ROOT / "deploy" / "backup"
SHORT = Profile("short", journeys=40, concurrency=8, settle="close")
FULL = Profile("full", journeys=300, concurrency=16, settle="close")
PROFILES = [pytest.param(SHORT, id="short"), pytest.param(FULL, id="full", marks=pytest.mark.chaos)]

# Many short retries: deliveries keep failing (receiver down) without running out of their
# schedule before the receiver comes up, and are retried within 2 s once it has.
RETRY_SCHEDULE = ",".join(["0.5", "1"] + ["2"] * 150)
EXPIRES_IN = 900  # pending payments stay pending through the drill

SNAPSHOT_QUERIES = {
    "payments": "SELECT id, merchant_order_id, status, amount, refunded_amount, refund_reserved,"
    " notify_url FROM payments ORDER BY id",
    "refunds": "SELECT id, payment_id, merchant_refund_id, status, amount FROM refunds ORDER BY id",
    "attempts": "SELECT id, payment_id, channel, channel_order_id, status FROM payment_attempts"
    " ORDER BY id",
    "events": "SELECT id, type, payment_id, refund_id FROM events ORDER BY id",
    # pending or delivering (an attempt under way): open either way; status is not compared
    "open_deliveries": "SELECT id, event_id FROM callback_deliveries"
    " WHERE status IN ('pending', 'delivering') ORDER BY id",
    "closed_deliveries": "SELECT id, status FROM callback_deliveries"
    " WHERE status NOT IN ('pending', 'delivering') ORDER BY id",
    "merchants": "SELECT id, name FROM merchants ORDER BY id",
}


async def snapshot(database_url: str) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(database_url)
    try:
        return {
            name: [dict(r) for r in await conn.fetch(sql)] for name, sql in SNAPSHOT_QUERIES.items()
        }
    finally:
        await conn.close()


async def quiet(database_url: str, within: float) -> None:
    """Wait until no refund is pending and no attempt is being created: what is left is
    payments waiting for their payer and deliveries waiting for the receiver."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + within
        while True:
            busy = await conn.fetchval(
                "SELECT (SELECT count(*) FROM refunds WHERE status = 'pending')"
                " + (SELECT count(*) FROM payment_attempts WHERE status IN ('creating', 'unknown'))"
            )
            if busy == 0:
                return
            assert time.monotonic() < deadline, f"{busy} refunds or attempts still moving"
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def still(database_url: str, within: float, still_for: float = 3.0) -> dict[str, Any]:
    """The snapshot once it has not changed for `still_for` seconds: a payer's pay or cancel
    whose notification (or the sync's query) has not landed yet still moves a payment after
    `quiet`, and a busy machine can hold it back for seconds."""
    deadline = time.monotonic() + within
    current = await snapshot(database_url)
    while True:
        await asyncio.sleep(still_for)
        again = await snapshot(database_url)
        if again == current:
            return current
        assert time.monotonic() < deadline, "the business did not settle within the minute"
        current = again


async def open_deliveries(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM callback_deliveries WHERE status <> 'succeeded'"
        )
        return count
    finally:
        await conn.close()


async def command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a command to its end; its standard output."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=harness.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, f"{argv}: {stdout.decode()}\n{stderr.decode()}"
    return stdout.decode()


async def recreate_empty(name: str) -> None:
    await harness.drop_database(name)
    admin = await asyncpg.connect(harness.PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def start_receiver(receiver: Receiver, port: int) -> web.AppRunner:
    """The merchant's receiver on the port its URLs were registered with."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.mark.parametrize("profile", PROFILES)
async def test_restore_drill(profile: Profile, tmp_path: Path) -> None:
    env = {"GATEWAY_WEBHOOK_RETRY_SCHEDULE": RETRY_SCHEDULE}
    # external simulators: the channels outlive the gateway, as real ones do
    async with scenario("restore-drill", profile, external_simulators=True, env=env) as drill:
        cluster, http, receiver = drill.cluster, drill.http, drill.receiver
        gw = cluster.gateways[0]
        assert cluster.creds is not None
        client = MerchantClient(gw.url, cluster.creds, http)
        # the merchant's receiver is down until after the restore: every callback fails
        await receiver.stop()
        receiver_port = URL(receiver.url).port
        assert receiver_port is not None
        runner: web.AppRunner | None = None
        try:
            # -- the day's business ------------------------------------------------------
            drill.driver.expires_in = EXPIRES_IN
            await drill.driver.run(profile.journeys, profile.concurrency)
            await quiet(cluster.database_url, within=60)
            before = await still(cluster.database_url, within=60)

            # -- backup while the gateway runs, then the disaster ------------------------
            started = time.monotonic()
            backup = ["sh", str(BACKUP_DIR / "backup.sh"), "--dir", str(tmp_path)]
            dump = Path((await command([*backup, cluster.database_url])).strip())
            drill.figures["dump_s"] = round(time.monotonic() - started, 2)
            drill.figures["dump_bytes"] = len(await asyncio.to_thread(dump.read_bytes))
            # the business was quiet across the dump (only delivery attempts moved), so the
            # snapshot is what the archive holds
            assert await snapshot(cluster.database_url) == before
            gw.stop()
            await recreate_empty(cluster.db_name)
            assert await snapshot_tables(cluster.database_url) == 0

            # -- restore, migrate, start -------------------------------------------------
            started = time.monotonic()
            restore = ["sh", str(BACKUP_DIR / "restore.sh"), str(dump), cluster.database_url]
            assert (await command(restore)).startswith("restored ")
            drill.figures["restore_s"] = round(time.monotonic() - started, 2)
            assert await snapshot(cluster.database_url) == before
            await command([harness.GATEWAY, "migrate"], env=gw.env)
            gw.start()
            await gw.wait_ready(http)

            # -- the gateway serves what was restored ------------------------------------
            for payment in before["payments"]:
                reply = await client.request("GET", f"/v1/payments/{payment['id']}")
                assert reply.status == 200, reply.body
                assert reply.json["status"] == payment["status"]
                assert reply.json["refunded_amount"] == payment["refunded_amount"]
            for refund in before["refunds"]:
                reply = await client.request("GET", f"/v1/refunds/{refund['id']}")
                assert reply.status == 200, reply.body
                assert reply.json["status"] == refund["status"]

            # -- the receiver comes up: every undelivered event arrives -------------------
            runner = await start_receiver(receiver, receiver_port)
            started = time.monotonic()
            while await open_deliveries(cluster.database_url):
                assert time.monotonic() < started + 60, "deliveries still open after a minute"
                await asyncio.sleep(0.25)
            drill.figures["deliver_after_restore_s"] = round(time.monotonic() - started, 2)
        finally:
            if runner is not None:
                await runner.cleanup()

    received = {(r.path, r.webhook_id) for r in receiver.receipts if r.valid_signature}
    payments = {p["id"]: p for p in before["payments"]}
    delivered = [e for e in before["events"] if e["type"] in EVENT_TYPES]  # not operators'
    expected = {("/endpoint", e["id"]) for e in delivered}
    expected |= {("/notify", e["id"]) for e in delivered
                 if payments[e["payment_id"]]["notify_url"]}  # fmt: skip
    assert sorted(expected - received) == []
    assert not [r for r in receiver.receipts if not r.valid_signature]
    drill.figures.update(
        journeys=profile.journeys,
        payments=len(before["payments"]),
        payments_by_status=dict(Counter(p["status"] for p in before["payments"])),
        refunds=len(before["refunds"]),
        events=len(before["events"]),
        deliveries_open_at_dump=len(before["open_deliveries"]),
        callbacks_received=len(receiver.receipts),
    )
    harness.save_result(f"restore-drill-{profile.name}", drill.figures)
    # the drill exercised what it claims to
    assert before["refunds"] and before["open_deliveries"]
    assert before["closed_deliveries"] == []  # none delivered or given up before the dump
    assert {"succeeded", "pending"} <= set(drill.figures["payments_by_status"])


async def snapshot_tables(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog',"
            " 'information_schema')"
        )
        return count
    finally:
        await conn.close()
