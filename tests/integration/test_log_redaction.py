"""Log redaction (gateway/logs.py) on the real output of a process: the standard library's
loggers (aiohttp's, asyncpg's, any `logging` call) go through the same processors as
structlog's, and URL passwords (`postgresql://user:…@host`, `redis://:…@host`, `?password=`)
are redacted anywhere in a line — messages, fields, exception texts and tracebacks — in JSON
and in console form."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures import ROOT

PG_PASSWORD = "pg-secret-1"
REDIS_PASSWORD = "redis-secret-2"
QUERY_PASSWORD = "query-secret-3"

SCRIPT = f"""
import asyncio, logging, sys

import aiohttp
import structlog
from aiohttp import web

from gateway import logs

logs.configure("info", json=sys.argv[1] == "json")
DSN = "postgresql://gw:{PG_PASSWORD}@db:5432/gw"
REDIS = "redis://:{REDIS_PASSWORD}@cache:6379/0"


async def handler(request):
    raise RuntimeError(f"cannot reach {{DSN}} nor {{REDIS}}")


async def main():
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)  # aiohttp logs the handler's error itself (aiohttp.server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{{port}}/") as reply:
            assert reply.status == 500
    await runner.cleanup()


asyncio.run(main())
logging.getLogger("asyncpg.pool").warning("connection to %s lost", DSN)
logging.getLogger("app.other").error("dsn host=db password={QUERY_PASSWORD} is not a URL: kept")
logging.getLogger("app.other").error("see postgresql://db/gw?password={QUERY_PASSWORD}&x=1")
structlog.get_logger("app").error("redis_down", url=REDIS)
try:
    raise ConnectionError(f"connect {{REDIS}} failed")
except ConnectionError:
    structlog.get_logger("app").exception("failed")
    logging.getLogger("asyncpg").exception("failed too")
"""


def run(form: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, form],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("form", ["json", "console"])
def test_no_url_password_reaches_the_log_from_any_logger(form: str) -> None:
    output = run(form)
    assert PG_PASSWORD not in output
    assert REDIS_PASSWORD not in output
    assert "postgresql://gw:[redacted]@db:5432/gw" in output
    assert "redis://:[redacted]@cache:6379/0" in output
    assert "postgresql://db/gw?password=[redacted]&x=1" in output
    # only the password of a URL: a bare `password=` in prose is not a DSN here
    assert output.count(QUERY_PASSWORD) == 1


def test_standard_library_records_are_json_lines_like_structlogs() -> None:
    records = [json.loads(line) for line in run("json").splitlines() if line.strip()]
    by_logger: dict[str, list[dict[str, object]]] = {}
    for record in records:
        by_logger.setdefault(str(record.get("logger")), []).append(record)
    [server_error] = by_logger["aiohttp.server"]
    assert server_error["level"] == "error" and "timestamp" in server_error
    assert "RuntimeError: cannot reach postgresql://gw:[redacted]@db" in str(
        server_error["exception"]
    )
    [lost] = by_logger["asyncpg.pool"]
    assert lost["event"] == "connection to postgresql://gw:[redacted]@db:5432/gw lost"
    [failed_too] = by_logger["asyncpg"]
    assert "ConnectionError: connect redis://:[redacted]@cache" in str(failed_too["exception"])
    structlog_records = [r for r in records if r.get("event") in ("redis_down", "failed")]
    assert [r["event"] for r in structlog_records] == ["redis_down", "failed"]
    assert structlog_records[0]["url"] == "redis://:[redacted]@cache:6379/0"
