"""The error middleware: what a failure inside a handler becomes on the wire."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.middleware import request_context


def failing_app(error: Callable[[], BaseException]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        raise error()

    app = web.Application(middlewares=[request_context])
    app.router.add_get("/x", handler)
    return app


@pytest.mark.parametrize(
    "error",
    [
        lambda: asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        lambda: asyncpg.exceptions.AdminShutdownError("terminating connection"),
        lambda: asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        lambda: asyncpg.exceptions.InternalClientError("cannot switch to state 15"),
        lambda: asyncpg.exceptions.InterfaceError("connection is closed"),
        lambda: ConnectionResetError("Connection lost"),
    ],
)
async def test_the_database_going_away_is_a_503_to_retry(
    error: Callable[[], BaseException],
) -> None:
    async with TestClient(TestServer(failing_app(error))) as client:
        resp = await client.get("/x")
        body = await resp.json(content_type="application/problem+json")
    assert resp.status == 503
    assert body["code"] == "service_unavailable"
    assert resp.headers["Retry-After"] == "2"
    assert body["request_id"] == resp.headers["X-Request-Id"]


async def test_a_bug_is_a_500_that_says_nothing_of_it() -> None:
    async with TestClient(TestServer(failing_app(lambda: KeyError("secret_field")))) as client:
        resp = await client.get("/x")
        body = await resp.json(content_type="application/problem+json")
    assert resp.status == 500 and body["code"] == "internal_error"
    assert "secret_field" not in str(body)
