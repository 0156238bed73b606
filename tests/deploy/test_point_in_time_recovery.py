"""Point-in-time recovery as docs/operations.md describes it, on a throwaway PostgreSQL
cluster (its own data directory, port and socket; the machine's shared cluster is not
touched): the settings of deploy/backup/postgresql-archiving.conf (the archive directory
moved into the test's), a base backup by deploy/backup/base-backup.sh, commits before and
after a target time, then the data directory replaced by the base backup, `restore_command`,
`recovery_target_time`, `recovery.signal`, and a start: what was committed before the target
is back, what was committed after it is not.

Needs the PostgreSQL server binaries (Debian's `postgresql` package, under
/usr/lib/postgresql/<version>/bin); as root, the cluster runs as the `postgres` user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
BACKUP = ROOT / "deploy" / "backup"
DOCUMENTED_ARCHIVE = "/var/lib/postgresql/wal-archive"
BINDIRS = sorted(
    (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
)

pytestmark = pytest.mark.skipif(
    not BINDIRS, reason="PostgreSQL server binaries not installed (Debian package `postgresql`)"
)


class Cluster:
    """A PostgreSQL cluster in `base`, run as the postgres user when we are root."""

    def __init__(self, base: Path, bindir: Path) -> None:
        self.base = base
        self.bindir = bindir
        self.data = base / "data"
        self.archive = base / "archive"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
        self.env.pop("PGPASSWORD", None)

    def run(self, *argv: str) -> str:
        done = subprocess.run(
            [*self.as_user, *argv],
            env=self.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
        return done.stdout

    @property
    def conninfo(self) -> str:
        return f"host={self.base} port={self.port} user=postgres dbname=postgres"

    def sql(self, query: str) -> str:
        return self.run(
            str(self.bindir / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", self.conninfo,
            "-c", query,
        ).strip()  # fmt: skip

    def pg_ctl(self, *args: str) -> None:
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), *args)

    def start(self) -> None:
        self.pg_ctl("-l", str(self.base / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.pg_ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    base = Path(tempfile.mkdtemp(prefix="gw-pitr-"))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(base, postgres.pw_uid, postgres.pw_gid)
    instance = Cluster(base, BINDIRS[-1])
    try:
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _own(path: Path) -> None:
    """Give a tree to the postgres user (we are root) or leave it ours."""
    if os.geteuid() != 0:
        return
    postgres = pwd.getpwnam("postgres")
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, postgres.pw_uid, postgres.pw_gid)


def test_recovery_to_a_point_in_time_keeps_what_came_before_it(cluster: Cluster) -> None:
    cluster.run(
        str(cluster.bindir / "initdb"), "-D", str(cluster.data), "-U", "postgres",
        "--auth=trust", "--no-sync",
    )  # fmt: skip
    cluster.run("mkdir", str(cluster.archive))
    documented = (BACKUP / "postgresql-archiving.conf").read_text()
    assert DOCUMENTED_ARCHIVE in documented
    settings = documented.replace(DOCUMENTED_ARCHIVE, str(cluster.archive))
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write(settings)
        conf.write(
            f"\nport = {cluster.port}\nlisten_addresses = ''\n"
            f"unix_socket_directories = '{cluster.base}'\nfsync = off\n"
        )
    cluster.start()
    assert cluster.sql("SHOW archive_mode") == "on"
    cluster.sql("CREATE TABLE ledger (id serial PRIMARY KEY, phase text NOT NULL)")
    cluster.sql("INSERT INTO ledger (phase) SELECT 'before backup' FROM generate_series(1, 10)")

    backups = cluster.base / "base-backups"
    cluster.run("mkdir", str(backups))
    base_backup = Path(
        cluster.run("sh", str(BACKUP / "base-backup.sh"), str(backups), cluster.conninfo).strip()
    )
    assert base_backup.parent == backups and (base_backup / "backup_manifest").is_file()

    cluster.sql("INSERT INTO ledger (phase) SELECT 'before target' FROM generate_series(1, 10)")
    target = cluster.sql("SELECT clock_timestamp()")
    time.sleep(1.1)
    cluster.sql("INSERT INTO ledger (phase) SELECT 'after target' FROM generate_series(1, 10)")
    segment = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 30
    while cluster.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
        assert time.monotonic() < deadline, "the WAL segment was not archived"
        time.sleep(0.2)
    cluster.stop()

    # the disaster: the data directory is gone; the base backup and the archive remain
    shutil.rmtree(cluster.data)
    shutil.copytree(base_backup, cluster.data)
    _own(cluster.data)
    os.chmod(cluster.data, 0o700)
    with (cluster.data / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"restore_command = 'cp {cluster.archive}/%f %p'\n"
            f"recovery_target_time = '{target}'\n"
            "recovery_target_action = 'promote'\n"
        )
    (cluster.data / "recovery.signal").touch()
    _own(cluster.data)
    cluster.start()
    deadline = time.monotonic() + 60
    while cluster.sql("SELECT pg_is_in_recovery()") != "f":
        assert time.monotonic() < deadline, "the recovery did not end"
        time.sleep(0.2)

    counts = cluster.sql("SELECT string_agg(phase || '=' || n, ',' ORDER BY phase) FROM"
                         " (SELECT phase, count(*) n FROM ledger GROUP BY phase) c")  # fmt: skip
    assert counts == "before backup=10,before target=10"
    log = (cluster.base / "server.log").read_text()
    assert "recovery stopping before commit" in log
