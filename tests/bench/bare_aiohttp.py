"""The reference for `make bench`: the cheapest JSON endpoint aiohttp can serve on this machine
(parse the body, answer 201 with JSON), at the same path the load generator posts to."""

from __future__ import annotations

import sys

import orjson
from aiohttp import web


async def create(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(
        status=201,
        body=orjson.dumps({"id": "pay_ref", "merchant_order_id": body.get("merchant_order_id")}),
        content_type="application/json",
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = web.Application()
    app.router.add_post("/v1/payments", create)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
