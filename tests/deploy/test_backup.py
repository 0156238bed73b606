"""deploy/backup/backup.sh and restore.sh on the local PostgreSQL, without the gateway: a round
trip, the retention of --keep, and what restore.sh refuses (a database that is not empty, an
archive that does not match its checksum). The whole procedure against a real gateway is the
restore drill, tests/chaos/test_restore_drill.py."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.fixtures import PG_ADMIN

BACKUP = Path(__file__).resolve().parents[2] / "deploy" / "backup"


def _url(name: str) -> str:
    return f"{PG_ADMIN.rpartition('/')[0]}/{name}"


@pytest.fixture
async def two_databases() -> AsyncIterator[tuple[str, str]]:
    names = [f"gw_backup_{secrets.token_hex(4)}_{n}" for n in ("source", "target")]
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        yield _url(names[0]), _url(names[1])
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def sh(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "sh", *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def execute(url: str, *statements: str) -> Any:
    """Run the statements on a connection of their own; the last one's first value."""
    conn = await asyncpg.connect(url)
    try:
        for sql in statements:
            value = await conn.fetchval(sql)
        return value
    finally:
        await conn.close()


async def fill(url: str) -> None:
    await execute(
        url,
        "CREATE TABLE ledger (id bigint PRIMARY KEY, amount bigint NOT NULL CHECK (amount > 0))",
        "INSERT INTO ledger SELECT g, g * 100 FROM generate_series(1, 500) g",
        "CREATE INDEX ledger_amount ON ledger (amount)",
    )


async def backup_of(url: str, folder: Path) -> Path:
    code, out, err = await sh(str(BACKUP / "backup.sh"), "--dir", str(folder), url)
    assert code == 0, err
    return Path(out.strip())


async def test_backup_and_restore_round_trip(
    two_databases: tuple[str, str], tmp_path: Path
) -> None:
    source, target = two_databases
    await fill(source)
    dump = await backup_of(source, tmp_path)
    assert dump.parent == tmp_path and dump.name.startswith("gateway-")
    assert (tmp_path / f"{dump.name}.sha256").read_text().split() == [
        (await asyncio.to_thread(_sha256, dump)),
        dump.name,
    ]
    code, out, err = await sh(str(BACKUP / "restore.sh"), str(dump), target)
    assert code == 0, err
    assert out.strip() == f"restored {dump}: 1 tables"
    assert await execute(target, "SELECT sum(amount) FROM ledger") == 100 * 500 * 501 // 2
    indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = 'ledger'"
    assert await execute(target, indexes) == 2
    with pytest.raises(asyncpg.CheckViolationError):  # constraints came back too
        await execute(target, "INSERT INTO ledger VALUES (0, -1)")


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_restore_refuses_a_database_that_is_not_empty(
    two_databases: tuple[str, str], tmp_path: Path
) -> None:
    source, target = two_databases
    await fill(source)
    await fill(target)
    dump = await backup_of(source, tmp_path)
    code, _, err = await sh(str(BACKUP / "restore.sh"), str(dump), target)
    assert code == 1
    assert "holds 1 tables: restore into an empty one" in err


async def test_restore_refuses_an_archive_that_does_not_match_its_checksum(
    two_databases: tuple[str, str], tmp_path: Path
) -> None:
    source, target = two_databases
    await fill(source)
    dump = await backup_of(source, tmp_path)
    _append(dump, b"\0")
    code, _, err = await sh(str(BACKUP / "restore.sh"), str(dump), target)
    assert code == 1
    assert "does not match its .sha256" in err
    assert await execute(target, "SELECT count(*) FROM pg_tables WHERE tablename = 'ledger'") == 0


async def test_keep_leaves_the_newest_archives(
    two_databases: tuple[str, str], tmp_path: Path
) -> None:
    source, _ = two_databases
    old = ["gateway-20250101T000000Z.dump", "gateway-20250102T000000Z.dump"]
    for name in old:  # two earlier backups
        (tmp_path / name).write_bytes(b"old")
        (tmp_path / f"{name}.sha256").write_text(f"x  {name}\n")
    code, out, err = await sh(
        str(BACKUP / "backup.sh"), "--dir", str(tmp_path), "--keep", "2", source
    )
    assert code == 0, err
    newest = Path(out.strip()).name
    assert _listing(tmp_path) == sorted([old[1], f"{old[1]}.sha256", newest, f"{newest}.sha256"])


async def test_backup_of_a_database_that_does_not_exist_leaves_nothing(tmp_path: Path) -> None:
    code, _, err = await sh(
        str(BACKUP / "backup.sh"), "--dir", str(tmp_path), _url("gw_backup_no_such_db")
    )
    assert code != 0
    assert "gw_backup_no_such_db" in err
    assert _listing(tmp_path) == []
