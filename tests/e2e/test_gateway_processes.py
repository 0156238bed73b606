"""Real `gateway serve` processes: SIGHUP reloads the routing file at once (through the same
pipeline as every reload: an invalid file is refused whole), and in Prometheus multiprocess
mode one scrape of any process sums every process on the host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.fixtures import MASTER_KEY, REDIS_URL, ROOT
from tests.support import free_port, wait_until

pytestmark = pytest.mark.e2e

ADMIN_TOKEN = "test-admin-token-processes-0123456"


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


Start = Callable[..., "Process"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def start(
    database_url: str, redis_prefix: str, redis_client: aioredis.Redis, tmp_path: Path
) -> Iterator[Callable[..., Process]]:
    """start(name, **env) -> a `gateway serve` process on the test's database (stopped after
    the test); `env` adds GATEWAY_* (or other) variables."""
    started: list[Process] = []

    def run(name: str, **env: str) -> Process:
        port = free_port()
        variables = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_REDIS_URL": REDIS_URL,
            "GATEWAY_REDIS_PREFIX": redis_prefix,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_MASTER_KEY": MASTER_KEY,
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEWAY_SIMULATORS": "true",
            "GATEWAY_ROUTING_FILE": str(ROOT / "config" / "routing.yaml"),
            "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
            "GATEWAY_VAR_DIR": str(tmp_path / "var"),
            "GATEWAY_ALLOW_DEV_KEYS": "true",  # the shipped routing file's development keys
            **env,
        }
        log = tmp_path / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"],
                env=variables, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        process = Process(proc, f"http://127.0.0.1:{port}", log)
        started.append(process)
        return process

    yield run
    for process in reversed(started):
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.stop()
        if process.proc.poll() is None:
            process.stop(signal.SIGKILL)


async def ready(process: Process, http: aiohttp.ClientSession) -> None:
    async def answers() -> bool:
        if process.proc.poll() is not None:
            raise AssertionError(f"gateway exited: {process.tail()}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(process.url + "/readyz") as resp:
                return resp.status == 200
        return False

    await wait_until(answers, within=30, interval=0.1)


async def admin_routing(process: Process, http: aiohttp.ClientSession) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.get(process.url + "/admin/routing", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


# ---- SIGHUP ---------------------------------------------------------------------------------


async def test_sighup_reloads_the_routing_file_at_once(
    start: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "routing.yaml"
    shipped = (ROOT / "config" / "routing.yaml").read_text()
    path.write_text(shipped)
    # no file poll in practice: only the signal can make the process read the edits
    gw = start("gw", GATEWAY_ROUTING_FILE=str(path), GATEWAY_ROUTING_POLL_S="3600")
    await ready(gw, http)
    first = await admin_routing(gw, http)
    assert first["reload_failures"] == 0

    path.write_text(shipped + "\n# an edit\n")
    gw.proc.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return bool((await admin_routing(gw, http))["version"] != first["version"])

    await wait_until(reloaded, within=10)

    # an edit whose channel names a key file that does not exist: refused whole, shown
    broken = shipped.replace("keys/bank/merchant_private.pem", "keys/bank/no_such_key.pem", 1)
    path.write_text(broken)
    gw.proc.send_signal(signal.SIGHUP)

    async def refused() -> bool:
        return bool((await admin_routing(gw, http))["reload_failures"] == 1)

    await wait_until(refused, within=10)
    view = await admin_routing(gw, http)
    assert view["stale"] is True and view["version"] != first["version"]
    assert view["last_reload_error"].startswith("channels.bank_icbc.config.merchant_private_key: ")
    assert gw.proc.poll() is None  # still serving the rules in force
    assert "routing_reload_refused" in gw.tail()


# ---- Prometheus multiprocess ----------------------------------------------------------------


async def scrape(process: Process, http: aiohttp.ClientSession) -> list[str]:
    async with http.get(process.url + "/metrics") as resp:
        assert resp.status == 200
        return (await resp.text()).splitlines()


def healthz_count(lines: list[str]) -> float:
    sample = 'gateway_http_requests_total{method="GET",route="/healthz",status="200"}'
    values = [float(line.split()[-1]) for line in lines if line.startswith(sample + " ")]
    return values[0] if values else 0.0


def routing_pids(lines: list[str]) -> set[str]:
    return {
        line.split('pid="', 1)[1].split('"', 1)[0]
        for line in lines
        if line.startswith("gateway_routing_info{") and line.endswith(" 1.0")
    }


async def hit(process: Process, http: aiohttp.ClientSession, times: int) -> None:
    for _ in range(times):
        async with http.get(process.url + "/healthz") as resp:
            assert resp.status == 200


async def test_one_scrape_sums_every_gateway_process_of_the_host(
    start: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    shared = str(tmp_path / "metrics")
    a = start("a", PROMETHEUS_MULTIPROC_DIR=shared)
    await ready(a, http)
    await hit(a, http, 3)
    b = start("b", PROMETHEUS_MULTIPROC_DIR=shared)  # beside a live process: a's counts stay
    await ready(b, http)
    await hit(b, http, 5)

    for process in (a, b):  # either process answers for both
        lines = await scrape(process, http)
        assert healthz_count(lines) == 8
        assert routing_pids(lines) == {str(a.proc.pid), str(b.proc.pid)}

    b.stop(signal.SIGKILL)  # no clean exit: the next scrape finds it dead
    lines = await scrape(a, http)
    assert routing_pids(lines) == {str(a.proc.pid)}
    assert healthz_count(lines) == 8  # a dead process's counts stay: the sum never goes back

    a.stop()  # the last one: the next start begins the service's counts afresh
    again = start("again", PROMETHEUS_MULTIPROC_DIR=shared)
    await ready(again, http)
    lines = await scrape(again, http)
    assert healthz_count(lines) == 0
    assert routing_pids(lines) == {str(again.proc.pid)}


async def test_without_the_directory_a_scrape_is_of_one_process(
    start: Start, http: aiohttp.ClientSession
) -> None:
    a, b = start("a"), start("b")
    await ready(a, http)
    await ready(b, http)
    await hit(a, http, 2)
    await hit(b, http, 4)
    assert healthz_count(await scrape(a, http)) == 2
    lines = await scrape(b, http)
    assert healthz_count(lines) == 4
    assert any(line.startswith("gateway_routing_info{version=") for line in lines)
