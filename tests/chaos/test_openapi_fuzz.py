"""Schemathesis against a real gateway process's `/openapi.json`: every generated request
(valid and invalid bodies, parameters and headers) is signed per API.md §1.1 by a `requests`
auth hook, so the requests get past authentication and reach the handlers. No answer may be a
5xx, and every error answer must be RFC 9457 problem+json with the required members.

The short form runs in `make test`; the full form (`make chaos`) generates many more cases."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gateway.api.openapi import openapi_document
from tests.chaos.harness import RESULTS_DIR, Cluster, save_result
from tests.support import Creds, MerchantClient

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "request_id"}
SEEN: Counter[str] = Counter()


class SignedRequests(requests.auth.AuthBase):
    """Signs each prepared request exactly as it goes on the wire: METHOD, the path and query
    as sent, a fresh timestamp and nonce, the exact body bytes."""

    def __init__(self, creds: Creds) -> None:
        self.signer = MerchantClient("", creds, None)  # type: ignore[arg-type]

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert r.method is not None
        r.headers["Authorization"] = self.signer.auth_header(r.method, r.path_url, body)
        return r


@pytest.fixture(scope="module")
def live_gateway() -> Iterator[Cluster]:
    cluster = Cluster(RESULTS_DIR / "logs" / "openapi-fuzz", external_simulators=False)

    async def start() -> None:
        async with aiohttp.ClientSession() as http:
            await cluster.start(1, http)

    try:
        asyncio.run(start())
        yield cluster
    finally:
        asyncio.run(cluster.close())
        save_result("openapi-fuzz", {"answers": dict(SEEN), "total": sum(SEEN.values())})


@pytest.fixture(scope="module")
def gateway_schema(live_gateway: Cluster) -> Any:
    return schemathesis.openapi.from_url(f"{live_gateway.gateways[0].url}/openapi.json")


@pytest.fixture(scope="module")
def signed_session(live_gateway: Cluster) -> Iterator[requests.Session]:
    assert live_gateway.creds is not None
    with requests.Session() as session:
        session.auth = SignedRequests(live_gateway.creds)
        yield session


OPERATIONS = [
    (path, method.upper())
    for path, item in openapi_document("http://gateway")["paths"].items()
    for method in item
]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def check_answer(case: Any, session: requests.Session) -> None:
    response = case.call(session=session, timeout=15)
    SEEN[f"{case.method} {case.path} {response.status_code}"] += 1
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith("application/problem+json"), (
            response.status_code,
            content_type,
            response.content[:300],
        )
        problem = orjson.loads(response.content)
        assert set(problem) >= PROBLEM_MEMBERS, problem
        assert problem["status"] == response.status_code


def fuzz(schema: Any, session: requests.Session, path: str, method: str,
         mode: GenerationMode, examples: int) -> None:  # fmt: skip
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    def run(case: Any) -> None:
        check_answer(case, session)

    run()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_openapi_signed_fuzz(
    gateway_schema: Any, signed_session: requests.Session, path: str, method: str,
    mode: GenerationMode,
) -> None:  # fmt: skip
    fuzz(gateway_schema, signed_session, path, method, mode, examples=25)


@pytest.mark.chaos
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_openapi_signed_fuzz_full(
    gateway_schema: Any, signed_session: requests.Session, path: str, method: str,
    mode: GenerationMode,
) -> None:  # fmt: skip
    fuzz(gateway_schema, signed_session, path, method, mode, examples=300)
