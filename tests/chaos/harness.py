"""The fault-injection harness: real `gateway serve` processes on a fresh database of the local
PostgreSQL with their own Redis prefix, an optional standalone `gateway simulators` process,
and the controls of the machine's shared PostgreSQL and Redis services.

Processes are started in their own session and only ever signalled by their own pid."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml

from gateway.auth.secretbox import generate_master_key
from gateway.auth.signature import KeyType
from tests.fixtures import PG_ADMIN, REDIS_URL
from tests.support import Creds, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GATEWAY = str(BIN / "gateway")
RESULTS_DIR = ROOT / "var" / "chaos"
RUN_ID = secrets.token_hex(3)
ADAPTERS = ("bank", "wechat", "alipay", "unionpay")

_counter = iter(range(1, 1_000_000))


def _db_url(name: str) -> str:
    base, _, _ = PG_ADMIN.rpartition("/")
    return f"{base}/{name}"


# ---- the database of one scenario ---------------------------------------------------------
async def create_database() -> tuple[str, str]:
    """A fresh, empty database (the gateway migrates it). Returns (name, url)."""
    name = f"gw_chaos_{RUN_ID}_{next(_counter)}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, _db_url(name)


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def drop_redis_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


# ---- routing -------------------------------------------------------------------------------
def write_routing_file(
    path: Path, *, sim_url: str | None, timeout_ms: int = 2000, breaker_open_s: int = 5
) -> Path:
    """The shipped routing file with short channel timeouts and a short open circuit, its
    channels pointed at `sim_url` (a standalone simulator process) when given."""
    data = yaml.safe_load((ROOT / "config" / "routing.yaml").read_text())
    for channel in data["channels"].values():
        channel["timeout_ms"] = timeout_ms
        if sim_url is not None:
            channel["config"]["base_url"] = f"{sim_url}/sim/{channel['adapter']}"
    data["settings"]["breaker"]["open_s"] = breaker_open_s
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- processes -----------------------------------------------------------------------------
@dataclass
class Proc:
    """One child process (a gateway or the simulators), its log in a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    url: str
    ready_path: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    ready: bool = False
    """Answered its readiness URL since it last started (what a load balancer routes to)."""

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, f"{self.name} is running"
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts + 1} of {self.name} =====\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        self.ready = False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def wait_ready(self, http: aiohttp.ClientSession, within: float = 60.0) -> float:
        """Poll the readiness URL until it answers 200. Returns the seconds it took."""
        started = time.monotonic()
        while True:
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                async with http.get(
                    self.url + self.ready_path, timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        self.ready = True
                        return time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() - started > within:
                raise AssertionError(f"{self.name} not ready in {within} s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def kill9(self) -> None:
        assert self.popen is not None
        self.ready = False
        os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), SIGKILL after 10 s."""
        if not self.alive():
            return
        assert self.popen is not None
        self.ready = False
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_count(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0


@dataclass
class Cluster:
    """Everything one scenario runs: a database, a Redis prefix, gateway processes sharing
    them, optionally a standalone simulator process, and the merchant."""

    workdir: Path
    external_simulators: bool
    env_overrides: dict[str, str] = field(default_factory=dict)
    db_name: str = ""
    database_url: str = ""
    redis_prefix: str = field(default_factory=lambda: f"chaos:{RUN_ID}:{secrets.token_hex(3)}:")
    master_key: str = field(default_factory=generate_master_key)
    gateways: list[Proc] = field(default_factory=list)
    simulators: Proc | None = None
    creds: Creds | None = None

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            {
                "GATEWAY_DATABASE_URL": self.database_url,
                "GATEWAY_REDIS_URL": REDIS_URL,
                "GATEWAY_REDIS_PREFIX": self.redis_prefix,
                "GATEWAY_MASTER_KEY": self.master_key,
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
                "GATEWAY_VAR_DIR": str(self.workdir / "var"),
                "GATEWAY_SIM_NOTIFY_TIME_SCALE": "0.01",
                "GATEWAY_LOG_LEVEL": "info",
                "GATEWAY_LOG_JSON": "true",
                "GATEWAY_ALLOW_DEV_KEYS": "true",  # the development keys and simulators
            }
        )
        return env

    async def start(self, gateways: int, http: aiohttp.ClientSession) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_name, self.database_url = await create_database()
        sim_url = None
        if self.external_simulators:
            port = free_port()
            sim_url = f"http://127.0.0.1:{port}"
            self.simulators = Proc(
                name="simulators",
                argv=[GATEWAY, "simulators", "--host", "127.0.0.1", "--port", str(port)],
                env=self.base_env(),
                cwd=ROOT,
                url=sim_url,
                ready_path="/sim/bank/control/faults",
                log_path=self.workdir / "simulators.log",
            )
            self.simulators.start()
        routing = write_routing_file(self.workdir / "routing.yaml", sim_url=sim_url)
        # the merchant (this also migrates the database, before any gateway starts)
        cli = await asyncio.create_subprocess_exec(
            *[GATEWAY, "merchant", "create", "--name", "Chaos shop", "--json"],
            env=self.base_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, stderr.decode(errors="replace")[-2000:]
        issued = json.loads(stdout)
        self.creds = Creds(
            merchant_id=issued["merchant_id"],
            key_id=issued["key_id"],
            key_type=KeyType(issued["key_type"]),
            secret=issued["secret"],
            webhook_secret=issued["webhook_secret"],
        )
        for n in range(gateways):
            port = free_port()
            env = self.base_env()
            env.update(
                {
                    "GATEWAY_PORT": str(port),
                    "GATEWAY_ROUTING_FILE": str(routing),
                    "GATEWAY_SIMULATORS": "true",
                    "GATEWAY_CALLBACK_ALLOW_PRIVATE": "true",
                    "GATEWAY_WEBHOOK_RETRY_SCHEDULE": "0.5,1,2,4",
                    "GATEWAY_SYNC_SCHEDULE": "0.5,1,2",
                    "GATEWAY_DISPATCHER_POLL_S": "0.2",
                    "GATEWAY_SYNC_POLL_S": "0.2",
                    "GATEWAY_KEY_CACHE_TTL_S": "5",
                }
            )
            env.update(self.env_overrides)
            self.gateways.append(
                Proc(
                    name=f"gateway-{chr(ord('a') + n)}",
                    argv=[GATEWAY, "serve"],
                    env=env,
                    cwd=ROOT,
                    url=f"http://127.0.0.1:{port}",
                    ready_path="/readyz",
                    log_path=self.workdir / f"gateway-{chr(ord('a') + n)}.log",
                )
            )
        for gw in self.gateways:
            gw.start()
        if self.simulators is not None:
            await self.simulators.wait_ready(http)
        for gw in self.gateways:
            await gw.wait_ready(http)

    def targets(self) -> list[str]:
        """Where the merchant's requests go: like a load balancer, to the gateways that passed
        their readiness check since they last started; to all of them when none did."""
        ready = [gw.url for gw in self.gateways if gw.ready and gw.alive()]
        return ready or [gw.url for gw in self.gateways]

    def sim_bases(self) -> list[str]:
        """Every simulator instance channels are talking to (one per gateway when in-process)."""
        if self.simulators is not None:
            return [self.simulators.url]
        return [gw.url for gw in self.gateways]

    async def close(self) -> None:
        for gw in self.gateways:
            gw.stop()
        if self.simulators is not None:
            self.simulators.stop()
        ensure_services_up()
        if self.db_name:
            await drop_database(self.db_name)
        await drop_redis_prefix(self.redis_prefix)


# ---- the shared services (full `make chaos` only) -----------------------------------------
def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    return versions[-1]


def postgres_up() -> bool:
    return (
        subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False, timeout=10).returncode
        == 0
    )


def redis_up() -> bool:
    try:
        out = subprocess.run(["redis-cli", "ping"], capture_output=True, check=False, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return out.stdout.strip() == b"PONG"


def _wait(check: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())


def restart_postgres() -> float:
    """Restart the machine's PostgreSQL cluster. Returns the seconds until it accepts again."""
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "restart"],
        check=True,
        timeout=120,
        capture_output=True,
    )
    assert _wait(postgres_up, 60), "PostgreSQL did not come back"
    return time.monotonic() - started


REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
               "--port", "6379", "--save", "", "--appendonly", "no"]  # fmt: skip


def stop_redis() -> None:
    subprocess.run(
        ["redis-cli", "shutdown", "nosave"], check=False, timeout=10, capture_output=True
    )
    assert _wait(lambda: not redis_up(), 10), "Redis did not stop"


def start_redis() -> float:
    started = time.monotonic()
    subprocess.run(REDIS_START, check=True, timeout=30, capture_output=True)
    assert _wait(redis_up, 30), "Redis did not start"
    return time.monotonic() - started


def ensure_services_up() -> None:
    """Whatever happened, leave the machine's PostgreSQL and Redis running."""
    if not postgres_up():
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "start"],
            check=False,
            timeout=120,
            capture_output=True,
        )
        _wait(postgres_up, 60)
    if not redis_up():
        subprocess.run(REDIS_START, check=False, timeout=30, capture_output=True)
        _wait(redis_up, 30)


@contextmanager
def services_restored() -> Iterator[None]:
    try:
        yield
    finally:
        ensure_services_up()


# ---- results -------------------------------------------------------------------------------
def save_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    return path
