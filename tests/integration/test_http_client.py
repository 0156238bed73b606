"""Channel calls carry the X-Request-Id of the request they serve."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import logs
from gateway.http_client import channel_session
from tests.support import free_port


async def test_channel_calls_carry_the_request_id() -> None:
    seen: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Request-Id"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", echo)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    session = channel_session()
    try:
        logs.bind_request_id("req_abc123")
        async with session.get(server.make_url("/")) as resp:
            assert resp.status == 200
        logs.bind_request_id(None)
        async with session.get(server.make_url("/")) as resp:
            assert resp.status == 200
    finally:
        logs.bind_request_id(None)
        await session.close()
        await server.close()
    assert seen == ["req_abc123", None]
