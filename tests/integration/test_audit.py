"""The audit log in PostgreSQL: append-only (a trigger refuses UPDATE, DELETE and TRUNCATE to
anyone; the gateway's role `gateway_app` lacks the rights too, yet runs the whole gateway), one
hash chain however many processes write, and `gateway audit verify` exits 0 on a whole chain
and non-zero naming the first entry a superuser altered."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.services import audit
from gateway.store.db import Pool, create_pool
from tests.e2e.test_gateway_processes import ADMIN_TOKEN as PROCESS_TOKEN
from tests.e2e.test_gateway_processes import Start, http, ready, start  # noqa: F401 - fixtures
from tests.fixtures import PG_ADMIN, REDIS_URL, ROOT, Gateway, new_merchant, start_gateway
from tests.support import wait_until

pytestmark = pytest.mark.integration

ACTOR = audit.Actor("cli:tests", None)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = await create_pool(database_url, 1, 4)
    yield p
    await p.close()


def verify_cli(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_no_one_updates_deletes_or_truncates_an_entry(pool: Pool) -> None:
    entry = await audit.record_alone(pool, ACTOR, "test.append_only", "t:1", after={"n": 1})
    async with pool.acquire() as conn:
        for statement in (
            "UPDATE audit_log SET actor = 'mallory' WHERE id = $1",
            "DELETE FROM audit_log WHERE id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement, entry.id)  # as the owner (a superuser here)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("TRUNCATE audit_log")
    assert (await audit.verify(pool)).whole


async def test_the_gateway_role_may_insert_and_read_but_not_change(pool: Pool) -> None:
    await audit.record_alone(pool, ACTOR, "test.role", "t:1")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL ROLE gateway_app")
        entry = await audit.record(conn, ACTOR, "test.role", "t:2")  # INSERT and SELECT
        for statement in (
            "UPDATE audit_log SET reason = 'x' WHERE id = 1",
            "DELETE FROM audit_log WHERE id = 1",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                async with conn.transaction():  # a savepoint: the refusal leaves the rest
                    await conn.execute(statement)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    assert entry.id == 2 and (await audit.verify(pool)).entries == 2


async def test_verify_fails_naming_the_entry_a_superuser_altered(
    pool: Pool, database_url: str
) -> None:
    for n in range(5):
        await audit.record_alone(pool, ACTOR, "test.tamper", f"t:{n}", after={"amount": 100 * n})
    whole = verify_cli(database_url)
    assert whole.returncode == 0, whole.stderr
    assert "5 entries" in whole.stdout
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute("UPDATE audit_log SET after = '{\"amount\": 1}' WHERE id = 3")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    broken = verify_cli(database_url)
    assert broken.returncode == 1
    assert "broken at entry 3" in broken.stderr and "altered" in broken.stderr


async def test_verify_finds_a_removed_entry(pool: Pool) -> None:
    for n in range(4):
        await audit.record_alone(pool, ACTOR, "test.remove", f"t:{n}")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # triggers off
        await conn.execute("DELETE FROM audit_log WHERE id = 2")
    report = await audit.verify(pool)
    assert report.broken is not None and report.broken.entry_id == 3


_WRITER = """
import asyncio, sys
from gateway.services import audit
from gateway.store.db import create_pool

async def main(url, count, name):
    pool = await create_pool(url, 4, 4)
    actor = audit.Actor(name, None)
    await asyncio.gather(*(
        audit.record_alone(pool, actor, "test.concurrent", f"n:{i}", after={"i": i})
        for i in range(count)
    ))
    await pool.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


async def test_two_processes_writing_at_once_keep_one_chain(pool: Pool, database_url: str) -> None:
    count = 60
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, database_url, str(count), f"cli:writer{n}", cwd=ROOT
        )
        for n in (1, 2)
    ]
    assert [await w.wait() for w in writers] == [0, 0]
    report = await audit.verify(pool)
    assert report.whole and report.entries == 2 * count, report
    result = verify_cli(database_url)
    assert result.returncode == 0, result.stderr


async def test_two_gateway_processes_auditing_at_once_keep_one_chain(
    start: Start,  # noqa: F811 - the e2e fixture imported above
    http: aiohttp.ClientSession,  # noqa: F811
    database_url: str,
) -> None:
    """Two `gateway serve` processes: each audits the files it starts with, then both take
    operators' changes at the same moment."""
    first, second = start("first"), start("second")
    await ready(first, http)
    await ready(second, http)
    headers = {"Authorization": f"Bearer {PROCESS_TOKEN}"}

    async def reset(url: str) -> int:
        async with http.post(url + "/admin/channels/bank_icbc/reset", headers=headers) as resp:
            return resp.status

    statuses = await asyncio.gather(
        *(reset(process.url) for _ in range(25) for process in (first, second))
    )
    assert set(statuses) == {200}
    result = verify_cli(database_url)
    assert result.returncode == 0, result.stderr
    admin = await asyncpg.connect(database_url)
    try:
        actors = await admin.fetch(
            "SELECT action, count(DISTINCT actor) AS actors, count(*) AS n FROM audit_log"
            " GROUP BY action"
        )
    finally:
        await admin.close()
    by_action = {r["action"]: (r["actors"], r["n"]) for r in actors}
    assert by_action["channel.reset"] == (1, 50)  # admin-token, through both processes
    assert by_action["routing.file_loaded"] == (2, 2)  # one entry per process
    assert by_action["risk.file_loaded"] == (2, 2)


@pytest.fixture
async def app_role_url(database_url: str) -> AsyncIterator[str]:
    """A login role that is a member of gateway_app and nothing more, on the test's database."""
    name = f"gw_login_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE ROLE "{name}" LOGIN IN ROLE gateway_app')
    finally:
        await admin.close()
    yield database_url.replace("postgresql://postgres@", f"postgresql://{name}@")
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await admin.close()


async def test_the_gateway_runs_as_gateway_app(
    app_role_url: str, database_url: str, redis_prefix: str, redis_client: Any
) -> None:
    """Payments, callbacks, refunds and operators' changes, all through a role that may not
    alter the audit log."""
    from tests.admin_support import ADMIN_TOKEN, admin_call

    gw: Gateway
    gw, server = await start_gateway(app_role_url, redis_prefix, admin_token=ADMIN_TOKEN)
    try:
        creds = await new_merchant(database_url)
        client = gw.client(creds)
        payment = (await client.create_payment(amount=5000)).json
        async with gw.http.post(payment["next_action"]["url"], json={"action": "pay"}) as r:
            assert r.status == 200

        async def paid() -> bool:
            reply = await client.request("GET", f"/v1/payments/{payment['id']}")
            return bool(reply.json["status"] == "succeeded")

        await wait_until(paid)
        refund = await client.request(
            "POST", f"/v1/payments/{payment['id']}/refunds",
            {"merchant_refund_id": "r1", "amount": 1000},
        )  # fmt: skip
        assert refund.status == 201, refund.json
        assert (
            await admin_call(gw, "POST", "/admin/channels/bank_icbc/reset", payload={})
        ).status == 200
        assert (await admin_call(gw, "POST", "/admin/routing/reload", payload={})).status == 200
        detail = await admin_call(gw, "GET", f"/admin/payments/{payment['id']}")
        assert detail.status == 200 and detail.json["refunds"][0]["amount"] == 1000
    finally:
        await gw.http.close()
        await server.close()
    admin = await asyncpg.connect(database_url)
    try:
        actions = {r["action"] for r in await admin.fetch("SELECT action FROM audit_log")}
    finally:
        await admin.close()
    assert {"routing.file_loaded", "risk.file_loaded", "channel.reset", "routing.reload"} <= actions
