"""Operators' accounts and tokens from the command line, console sessions and sign-in: what
each does, that a disabled account or a revoked token loses access at once, that sign-ins are
slowed and then locked per account and per address, that sessions end (idle, absolute, sign
out), that a session's changes need its CSRF token, and that each of these is audited."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from gateway.domain.errors import SignInRefused
from gateway.domain.permissions import Role
from gateway.services.operators import SESSION_COOKIE, OperatorService, ThrottlePolicy
from gateway.store.db import Pool, create_pool
from tests.admin_support import ADMIN_TOKEN, TEST_ACTOR, admin_call
from tests.fixtures import REDIS_URL, ROOT, Gateway, start_gateway

pytestmark = pytest.mark.integration

PASSWORD = "a long enough password"


def gateway_cli(
    database_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
        "USER": "ops-tester",
        "LOGNAME": "ops-tester",
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, input=stdin or "",
    )  # fmt: skip


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    p = await create_pool(database_url, 1, 4)
    yield p
    await p.close()


@pytest.fixture
async def gateway(
    database_url: str, redis_prefix: str, redis_client: Any
) -> AsyncIterator[Gateway]:
    gw, server = await start_gateway(database_url, redis_prefix, admin_token=ADMIN_TOKEN)
    yield gw
    await gw.http.close()
    await server.close()


async def entries(database_url: str, action: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT * FROM audit_log WHERE action = $1 ORDER BY id", action)
    finally:
        await conn.close()


async def test_operator_create_reads_the_password_from_stdin_and_audits_the_os_user(
    database_url: str, pool: Pool
) -> None:
    made = gateway_cli(
        database_url, "operator", "create", "--email", "Ops@Example.com", "--role", "support",
        "--json", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert (record["email"], record["role"]) == ("ops@example.com", "support")
    assert "password" not in record  # it was given, not generated
    stored = await pool.fetchval(
        "SELECT password_hash FROM operators WHERE email = $1", "ops@example.com"
    )
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    (entry,) = await entries(database_url, "operator.create")
    assert (entry["actor"], entry["target"]) == (
        "cli:ops-tester",
        f"operator:{record['operator_id']}",
    )
    assert json.loads(entry["after"]) == {"email": "ops@example.com", "role": "support"}
    again = gateway_cli(
        database_url, "operator", "create", "--email", "ops@example.com", "--role", "admin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert again.returncode == 2 and "already" in again.stderr
    short = gateway_cli(
        database_url, "operator", "create", "--email", "b@example.com", "--role", "admin",
        stdin="short\n",
    )  # fmt: skip
    assert short.returncode == 2 and "12 to 1024" in short.stderr


async def test_a_token_from_the_command_line_works_until_revoked(
    database_url: str, gateway: Gateway
) -> None:
    made = gateway_cli(
        database_url, "operator", "token", "create", "--name", "ci", "--role", "viewer", "--json"
    )
    assert made.returncode == 0, made.stderr
    issued = json.loads(made.stdout)
    assert set(issued) == {"token_id", "name", "role", "token"}
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT token_hash FROM operator_tokens WHERE id = $1", issued["token_id"]
        )
    finally:
        await conn.close()
    assert bytes(stored) == hashlib.sha256(issued["token"].encode()).digest()  # only the hash
    assert (
        await admin_call(gateway, "GET", "/admin/merchants", token=issued["token"])
    ).status == 200
    revoked = gateway_cli(
        database_url,
        "operator",
        "token",
        "revoke",
        "--id",
        issued["token_id"],
        "--reason",
        "leaked",
    )
    assert revoked.returncode == 0, revoked.stderr
    reply = await admin_call(gateway, "GET", "/admin/merchants", token=issued["token"])
    assert (reply.status, reply.json["code"]) == (401, "unauthenticated")
    (entry,) = await entries(database_url, "operator_token.revoke")
    assert (entry["actor"], entry["reason"]) == ("cli:ops-tester", "leaked")
    again = gateway_cli(database_url, "operator", "token", "revoke", "--id", issued["token_id"])
    assert again.returncode == 2


async def test_a_console_session_reads_and_changes_with_its_csrf_token(
    gateway: Gateway, pool: Pool, database_url: str
) -> None:
    operators = OperatorService(pool)
    await operators.create_operator("support@example.com", Role.SUPPORT, PASSWORD, TEST_ACTOR)
    session = await operators.sign_in("support@example.com", PASSWORD, "198.51.100.7", "req_test")
    assert (await operators.session_identity(session.cookie_value)) == session.identity
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.cookie_value}"}
    reply = await admin_call(gateway, "GET", "/admin/deliveries", token=None, headers=cookie)
    assert reply.status == 200
    retry = "/admin/deliveries/dlv_none/retry"
    reply = await admin_call(gateway, "POST", retry, token=None, payload={}, headers=cookie)
    assert (reply.status, reply.json["code"]) == (403, "forbidden")  # no CSRF token
    with_csrf = {**cookie, "X-CSRF-Token": session.csrf_token}
    reply = await admin_call(gateway, "POST", retry, token=None, payload={}, headers=with_csrf)
    assert reply.status == 404  # past the guard: there is no such delivery
    reply = await admin_call(gateway, "GET", "/admin/audit", token=None, headers=cookie)
    assert (reply.status, reply.json["code"]) == (403, "forbidden")  # support < admin
    (entry,) = await entries(database_url, "operator.sign_in")
    assert (entry["actor"], entry["role"], entry["source_ip"], entry["request_id"]) == (
        "support@example.com", "support", "198.51.100.7", "req_test",
    )  # fmt: skip

    await operators.sign_out(session.session_id, TEST_ACTOR)
    reply = await admin_call(gateway, "GET", "/admin/deliveries", token=None, headers=cookie)
    assert (reply.status, reply.json["code"]) == (401, "unauthenticated")


async def test_disabling_an_operator_ends_its_sessions_at_once(
    gateway: Gateway, pool: Pool, database_url: str
) -> None:
    operators = OperatorService(pool)
    await operators.create_operator("gone@example.com", Role.ADMIN, PASSWORD, TEST_ACTOR)
    session = await operators.sign_in("gone@example.com", PASSWORD, None, None)
    cookie = {"Cookie": f"{SESSION_COOKIE}={session.cookie_value}"}
    assert (
        await admin_call(gateway, "GET", "/admin/audit", token=None, headers=cookie)
    ).status == 200
    disabled = gateway_cli(
        database_url, "operator", "disable", "--email", "gone@example.com", "--reason", "left"
    )
    assert disabled.returncode == 0, disabled.stderr
    reply = await admin_call(gateway, "GET", "/admin/audit", token=None, headers=cookie)
    assert (reply.status, reply.json["code"]) == (401, "unauthenticated")
    with pytest.raises(SignInRefused):
        await operators.sign_in("gone@example.com", PASSWORD, None, None)
    (failed,) = await entries(database_url, "operator.sign_in_failed")
    assert json.loads(failed["after"]) == {"why": "disabled"}


async def test_sessions_end_when_idle_and_at_their_absolute_end(pool: Pool) -> None:
    setup = OperatorService(pool)
    operator = await setup.create_operator("idle@example.com", Role.VIEWER, PASSWORD, TEST_ACTOR)
    idle = OperatorService(pool, session_idle_s=3600, session_max_s=3600)
    session = await idle.create_session(operator, TEST_ACTOR)
    assert await idle.session_identity(session.cookie_value) is not None
    await pool.execute(
        "UPDATE operator_sessions SET last_seen_at = now() - interval '2 hours' WHERE id = $1",
        session.session_id,
    )
    assert await idle.session_identity(session.cookie_value) is None  # idle past an hour
    short = OperatorService(pool, session_idle_s=3600, session_max_s=0.5)
    brief = await short.create_session(operator, TEST_ACTOR)
    assert await short.session_identity(brief.cookie_value) is not None
    await pool.execute(
        "UPDATE operator_sessions SET expires_at = now() - interval '1 second' WHERE id = $1",
        brief.session_id,
    )
    assert await short.session_identity(brief.cookie_value) is None  # used, but past its end
    assert await short.session_identity("not-a-session") is None


async def test_failed_sign_ins_are_slowed_then_locked_per_account(
    pool: Pool, database_url: str
) -> None:
    operators = OperatorService(
        pool, throttle=ThrottlePolicy(account_max_failures=3, lockout_s=900)
    )
    await operators.create_operator("target@example.com", Role.ADMIN, PASSWORD, TEST_ACTOR)
    refusals = []
    for _ in range(2):
        with pytest.raises(SignInRefused) as refused:
            await operators.sign_in("target@example.com", "wrong password!", "203.0.113.5", None)
        refusals.append(refused.value.retry_after_s)
    assert refusals == [None, None]
    with pytest.raises(SignInRefused) as slowed:  # the right password, too soon
        await operators.sign_in("target@example.com", PASSWORD, "203.0.113.6", None)
    assert slowed.value.retry_after_s == 1
    await pool.execute("UPDATE sign_in_failures SET last_at = last_at - interval '5 seconds'")
    with pytest.raises(SignInRefused) as third:
        await operators.sign_in("target@example.com", "wrong again!!", "203.0.113.7", None)
    assert third.value.retry_after_s is None  # checked, failed: the third failure locks
    with pytest.raises(SignInRefused) as locked:
        await operators.sign_in("target@example.com", PASSWORD, "203.0.113.8", None)
    assert locked.value.retry_after_s is not None and locked.value.retry_after_s > 800
    whys = [
        json.loads(e["after"])["why"]
        for e in await entries(database_url, "operator.sign_in_failed")
    ]
    assert whys == ["wrong_password"] * 3  # refusals unchecked are not audited
    await pool.execute("UPDATE sign_in_failures SET locked_until = now() - interval '1 second'")
    await pool.execute("UPDATE sign_in_failures SET last_at = last_at - interval '60 seconds'")
    session = await operators.sign_in("target@example.com", PASSWORD, "203.0.113.9", None)
    assert session.identity.role is Role.ADMIN
    assert (
        await pool.fetchval("SELECT count(*) FROM sign_in_failures WHERE key LIKE 'account:%'") == 0
    )


async def test_failed_sign_ins_are_locked_per_address_across_accounts(pool: Pool) -> None:
    operators = OperatorService(
        pool, throttle=ThrottlePolicy(address_max_failures=2, lockout_s=900)
    )
    await operators.create_operator("real@example.com", Role.VIEWER, PASSWORD, TEST_ACTOR)
    for email in ("nobody1@example.com", "nobody2@example.com"):
        with pytest.raises(SignInRefused) as unknown:
            await operators.sign_in(email, PASSWORD, "192.0.2.1", None)
        assert "Wrong email or password" in unknown.value.detail  # the same as a wrong password
    with pytest.raises(SignInRefused) as locked:
        await operators.sign_in("real@example.com", PASSWORD, "192.0.2.1", None)
    assert locked.value.retry_after_s is not None
    session = await operators.sign_in("real@example.com", PASSWORD, "192.0.2.2", None)
    assert session.identity.actor == "real@example.com"  # another address is not locked
