"""The adapter kernel over real HTTP (adapters.kernel.transport + calls), against a tiny aiohttp
server: each way an attempt can fail on the wire is classified, retried or not, and gives the
outcome THE rule says, within the call's budget."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.base import ChannelResult, Decision, Outcome
from adapters.kernel import transport
from adapters.kernel.calls import Answer, Busy, Call, ChannelRules, Kernel, RetryPolicy
from adapters.kernel.transport import AttemptFailed, Failure

CODES = {failure: failure.value.upper() for failure in Failure}
MAX_BYTES = 1024


@dataclass
class Channel:
    """A toy channel: answers carry `X-Signed: yes` (its "signature"); the server runs the
    behaviours queued in `plan`, one per request, the last one for ever after."""

    plan: list[str] = field(default_factory=lambda: ["ok"])
    hits: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        behaviour = self.plan[min(self.hits, len(self.plan)) - 1]
        await request.read()
        if behaviour == "hang":
            await asyncio.sleep(5)
        if behaviour == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if behaviour == "stall":  # the headers, then a body that never ends
            response = web.StreamResponse(headers={"X-Signed": "yes"})
            await response.prepare(request)
            await response.write(b"o")
            await asyncio.sleep(5)
            return response
        if behaviour == "large":
            return web.Response(body=b"x" * (MAX_BYTES + 1), headers={"X-Signed": "yes"})
        if behaviour.isdigit():  # a proxy's answer, without the channel's signature
            return web.Response(status=int(behaviour), text="from a proxy")
        return web.Response(text=behaviour, headers={"X-Signed": "yes"})


@dataclass
class Env:
    url: str
    http: aiohttp.ClientSession
    channel: Channel


@pytest.fixture
async def env(aiohttp_server: Any) -> AsyncIterator[Env]:
    channel = Channel()
    app = web.Application()
    app.router.add_post("/api", channel.handle)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        yield Env(str(server.make_url("/api")), http, channel)


async def call(
    env: Env,
    call: Call,
    *,
    url: str | None = None,
    repeatable: bool = True,
    before_processing: bool = False,
    budget_s: float = 2.0,
    max_attempts: int = 2,
    attempt_timeout_s: float | None = None,
) -> ChannelResult:
    rules = ChannelRules(
        repeatable=frozenset(Call) if repeatable else frozenset(),
        failure_codes=CODES,
        errors_before_processing=before_processing,
    )
    kernel = Kernel("toy", rules, RetryPolicy(budget_s, max_attempts, 0.0, attempt_timeout_s))

    async def attempt(timeout_s: float) -> Answer[str] | Busy[str]:
        reply = await transport.send(
            env.http, "POST", url or env.url, data=b"{}", timeout_s=timeout_s, max_bytes=MAX_BYTES
        )
        if transport.header(reply.headers, "x-signed") != "yes":
            raise AttemptFailed(kernel.status_failure(reply.status), f"HTTP {reply.status}")
        text = reply.body.decode()
        return Busy(text) if text == "busy" else Answer(text)

    def read(text: str) -> ChannelResult:
        if text == "ok":
            return ChannelResult(Outcome.WAITING, Decision.FINAL, "OK")
        return ChannelResult(Outcome.SYSTEM_ERROR, Decision.FAILOVER, "SYSTEM_ERROR")

    return await kernel.call(call, attempt, read)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused_is_not_sent_and_fails_over(env: Env) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    result = await call(env, Call.CREATE, url=url, max_attempts=3)
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "NOT_SENT",
    )
    refund = await call(env, Call.REFUND, url=url)
    assert (refund.outcome, refund.decision) == (Outcome.SYSTEM_ERROR, Decision.RETRY)
    query = await call(env, Call.QUERY, url=url)
    assert (query.outcome, query.decision) == (Outcome.UNKNOWN, Decision.RETRY)


async def test_a_timeout_may_have_acted_and_ends_at_the_deadline(env: Env) -> None:
    env.channel.plan = ["hang"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await call(env, Call.CREATE, budget_s=0.3)
    assert loop.time() - started < 0.45
    assert env.channel.hits == 1
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "TIMEOUT",
    )


async def test_a_body_that_stalls_is_a_timeout(env: Env) -> None:
    env.channel.plan = ["stall"]
    result = await call(env, Call.QUERY, budget_s=0.3)
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "TIMEOUT")


async def test_timed_out_then_system_error_is_unknown(env: Env) -> None:
    env.channel.plan = ["hang", "busy"]
    result = await call(env, Call.CREATE, attempt_timeout_s=0.2)
    assert env.channel.hits == 2
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "SYSTEM_ERROR",
    )


async def test_timed_out_then_answered_is_the_answer(env: Env) -> None:
    env.channel.plan = ["hang", "ok"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await call(env, Call.CREATE, attempt_timeout_s=0.2)
    assert loop.time() - started < 0.5
    assert (env.channel.hits, result.outcome) == (2, Outcome.WAITING)


async def test_a_call_that_may_not_be_repeated_is_not_cut_short(env: Env) -> None:
    env.channel.plan = ["hang", "ok"]
    result = await call(env, Call.CREATE, repeatable=False, budget_s=0.5, attempt_timeout_s=0.1)
    assert env.channel.hits == 1
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "TIMEOUT")


@pytest.mark.parametrize(("repeatable", "hits"), [(True, 2), (False, 1)])
async def test_a_dropped_connection_may_have_acted(env: Env, repeatable: bool, hits: int) -> None:
    env.channel.plan = ["drop", "busy"]
    result = await call(env, Call.CREATE, repeatable=repeatable)
    assert env.channel.hits == hits
    assert (result.outcome, result.decision) == (Outcome.UNKNOWN, Decision.RETRY)
    assert result.channel_code == ("SYSTEM_ERROR" if repeatable else "DROPPED")


async def test_an_unsigned_5xx_may_have_acted(env: Env) -> None:
    env.channel.plan = ["502"]
    result = await call(env, Call.CREATE)
    assert env.channel.hits == 2  # a create the channel keeps one order per id for: again
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "HTTP_ERROR")


async def test_an_unsigned_5xx_before_processing_fails_over(env: Env) -> None:
    env.channel.plan = ["503"]
    result = await call(env, Call.CREATE, before_processing=True, repeatable=False)
    assert env.channel.hits == 2  # nothing was done: safe to try again anywhere
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "HTTP_UNAVAILABLE",
    )


@pytest.mark.parametrize("status", ["404", "302"])
async def test_an_unsigned_refusal_is_not_asked_again(env: Env, status: str) -> None:
    env.channel.plan = [status]
    result = await call(env, Call.CREATE)
    assert env.channel.hits == 1
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "HTTP_REFUSED",
    )


async def test_an_answer_too_large_is_not_trusted(env: Env) -> None:
    env.channel.plan = ["large"]
    result = await call(env, Call.CREATE)
    assert env.channel.hits == 1
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "BAD_ANSWER")


async def test_an_unsigned_success_is_not_trusted(env: Env) -> None:
    env.channel.plan = ["200"]
    result = await call(env, Call.CREATE)
    assert (env.channel.hits, result.outcome, result.channel_code) == (
        1,
        Outcome.UNKNOWN,
        "BAD_SIGNATURE",
    )
