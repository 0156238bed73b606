"""Redis servers of a test's own (a real `redis-server` on a free port, its files in a folder of
the test's), for what cannot be done to the shared one: restart it from a snapshot, make it a
replica and promote it, give it an eviction policy, stop it. And an in-process gateway on any
Redis URL."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from tests.fixtures import Gateway, make_settings
from tests.support import free_port


@dataclass
class RedisServer:
    folder: Path
    port: int = 0
    options: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again: from the snapshot in its folder, if there is one)."""
        self.port = self.port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "yes",
                "--dir", str(self.folder), "--dbfilename", "dump.rdb",
                "--save", "", "--appendonly", "no",
                "--logfile", str(self.folder / "redis.log"),
                *self.options,
            ],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it without saving (what it had since its last SAVE is lost)."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
            check=False,
            capture_output=True,
        )
        deadline = time.monotonic() + 10
        while self._answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on {self.port} did not stop")
            time.sleep(0.05)

    def client(self) -> aioredis.Redis:
        return aioredis.from_url(self.url)

    def _answers(self) -> bool:
        ping = subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
        )
        return ping.stdout.strip() == "PONG"


@contextlib.contextmanager
def redis_server(folder: Path, *options: str) -> Any:
    server = RedisServer(folder, options=options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def gateway_on(
    database_url: str, redis_prefix: str, redis_url: str, **overrides: Any
) -> AsyncIterator[Gateway]:
    """An in-process gateway (background workers off unless asked) on `redis_url`."""
    from gateway.app import Endpoints, create_app

    port = free_port()
    settings = make_settings(port, redis_prefix, **{"background": False, **overrides})
    app = create_app(settings, Endpoints(database_url=database_url, redis_url=redis_url))
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    http = aiohttp.ClientSession()
    try:
        yield Gateway(f"http://127.0.0.1:{port}", app, server, settings, http, database_url)
    finally:
        await http.close()
        await server.close()
