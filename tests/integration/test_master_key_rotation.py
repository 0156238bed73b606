"""`gateway master-key rotate --new-key-file F` (gateway/cli/master_key.py): every secret sealed
under the master key is re-sealed under the new one in one transaction; afterwards a gateway
on the new key verifies the merchant's HMAC signatures and signs callbacks with its webhook
secrets (current and previous), and the old key opens nothing; a secret the old key does not
open refuses the whole rotation, changing nothing; counts are printed, secrets never. Also the
list of sealed columns against the schema, and GATEWAY_MASTER_KEY_PREVIOUS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from standardwebhooks import Webhook

from gateway.auth.secretbox import SecretBox, generate_master_key
from gateway.services.webhook_secrets import rotate_webhook_secret
from gateway.store.sealed import SEALED_COLUMNS
from tests.fixtures import MASTER_KEY, REDIS_URL, ROOT, start_gateway
from tests.support import Creds, Receiver

SEALED = [(c.table, c.column) for c in SEALED_COLUMNS]


def rotate(
    database_url: str, key_file: Path | str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_MASTER_KEY": MASTER_KEY,
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "master-key", "rotate",
         "--new-key-file", str(key_file)],
        env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def sealed_values(db: asyncpg.Pool) -> dict[tuple[str, str, str], bytes]:
    """(table, column, row id) -> sealed bytes, for every sealed value in the database."""
    found = {}
    for table, column in SEALED:
        for row in await db.fetch(
            f"SELECT id, {column} AS v FROM {table} WHERE {column} IS NOT NULL"
        ):
            found[(table, column, row["id"])] = bytes(row["v"])
    return found


def opens(box: SecretBox, values: dict[tuple[str, str, str], bytes]) -> list[bool]:
    results = []
    for (_, _, row_id), sealed in values.items():
        try:
            box.open(sealed, row_id)
        except ValueError:
            results.append(False)
        else:
            results.append(True)
    return results


async def test_every_sealed_column_of_the_schema_is_rotated(db: asyncpg.Pool) -> None:
    rows = await db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type = 'bytea' AND column_name LIKE '%\\_enc'"
    )
    assert sorted((r["table_name"], r["column_name"]) for r in rows) == sorted(SEALED)


async def test_after_a_rotation_the_new_key_serves_and_the_old_one_opens_nothing(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    db: asyncpg.Pool,
    merchant: Creds,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    old_webhook_secret = merchant.webhook_secret
    assert merchant.secret is not None and old_webhook_secret is not None
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:  # a rotation under way: a previous webhook secret is sealed too
        rotated = await rotate_webhook_secret(pool, SecretBox(MASTER_KEY), merchant.merchant_id, 1)
    finally:
        await pool.close()
    before = await sealed_values(db)
    assert {(t, c) for t, c, _ in before} == set(SEALED)

    new_key = generate_master_key()
    key_file = tmp_path / "new.key"
    key_file.write_text(new_key + "\n")
    done = rotate(database_url, key_file)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "merchants.webhook_secret_enc: 1",
        "merchants.webhook_secret_prev_enc: 1",
        "merchant_keys.secret_enc: 1",
        "total: 3",
    ]
    output = done.stdout + done.stderr
    for secret in (
        merchant.secret,
        old_webhook_secret,
        rotated.webhook_secret,
        MASTER_KEY,
        new_key,
    ):
        assert secret not in output

    after = await sealed_values(db)
    assert after.keys() == before.keys()
    assert not any(opens(SecretBox(MASTER_KEY), after))
    assert all(opens(SecretBox(new_key), after))

    gw, server = await start_gateway(database_url, redis_prefix, master_key=new_key)
    try:
        client = gw.client(merchant)  # signs with the HMAC secret the merchant always had
        created = await client.create_payment(notify_url=receiver.url)
        assert created.status == 201, created.body
        async with gw.http.post(created.json["next_action"]["url"], json={"action": "pay"}) as paid:
            assert paid.status == 200
        await receiver.wait_for(1)
    finally:
        await gw.http.close()
        await server.close()
    hit = receiver.received[0]
    for secret in (rotated.webhook_secret, old_webhook_secret):  # current and previous
        assert (
            Webhook(secret).verify(hit["body"], hit["headers"])["data"]["object"]["id"]
            == (created.json["id"])
        )


async def test_a_secret_the_old_key_does_not_open_refuses_the_rotation_whole(
    database_url: str, db: asyncpg.Pool, merchant: Creds, tmp_path: Path
) -> None:
    stranger = SecretBox(generate_master_key())
    await db.execute(
        "UPDATE merchants SET webhook_secret_enc = $2 WHERE id = $1",
        merchant.merchant_id,
        stranger.seal("whsec_c2VjcmV0", merchant.merchant_id),
    )
    before = await sealed_values(db)
    done = rotate(database_url, "-", stdin=generate_master_key() + "\n")
    assert done.returncode == 1
    assert done.stdout == ""
    assert (
        "gateway: nothing rotated: 1 secret(s) do not open with the old master key:"
        f" merchants.webhook_secret_enc of {merchant.merchant_id}"
    ) in done.stderr
    assert await sealed_values(db) == before


def test_an_unusable_new_key_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    key_file = tmp_path / "short.key"
    key_file.write_text("c2hvcnQ\n")
    done = rotate("postgresql://postgres@127.0.0.1:1/none", key_file)
    assert done.returncode == 1
    assert "gateway: the new key is unusable: GATEWAY_MASTER_KEY must decode to exactly 32" in (
        done.stderr
    )


async def test_the_previous_key_still_opens_while_every_process_moves_to_the_new_one(
    database_url: str,
    redis_prefix: str,
    redis_client: aioredis.Redis,
    merchant: Creds,
) -> None:
    """A gateway on the new key with GATEWAY_MASTER_KEY_PREVIOUS set opens what a process
    still on the old key sealed (here: every secret, none rotated yet)."""
    new_key = generate_master_key()
    gw, server = await start_gateway(
        database_url, redis_prefix, master_key=new_key, master_key_previous=MASTER_KEY
    )
    try:
        reply = await gw.client(merchant).create_payment()
        assert reply.status == 201, reply.body
    finally:
        await gw.http.close()
        await server.close()
    without, server = await start_gateway(database_url, redis_prefix, master_key=new_key)
    try:
        refused = await without.client(merchant).create_payment()
        assert refused.status == 500  # the secret does not open: a misconfigured key
    finally:
        await without.http.close()
        await server.close()


def test_a_box_seals_under_its_current_key_and_opens_under_either() -> None:
    old, new = generate_master_key(), generate_master_key()
    sealed_old = SecretBox(old).seal("s", "ctx")
    both = SecretBox(new, old)
    assert both.open(sealed_old, "ctx") == "s"
    assert SecretBox(new).open(both.seal("t", "ctx"), "ctx") == "t"
    with pytest.raises(ValueError, match="does not open"):
        SecretBox(old).open(both.seal("t", "ctx"), "ctx")
    with pytest.raises(ValueError, match="GATEWAY_MASTER_KEY_PREVIOUS must decode"):
        SecretBox(new, "c2hvcnQ")
