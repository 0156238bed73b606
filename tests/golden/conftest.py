"""Fixtures of the golden-vector tests: an HTTP session for the adapters and capturing servers
that are closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.golden.support import CapturingServer, Responder, StartServer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    servers: list[CapturingServer] = []

    async def start(responder: Responder) -> CapturingServer:
        server = CapturingServer(responder)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
