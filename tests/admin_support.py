"""Helpers of the operators' tests: tokens of each role, and requests to `/admin/…`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from multidict import CIMultiDict

from gateway.domain.permissions import Role
from gateway.services.audit import Actor
from gateway.services.operators import OperatorService
from gateway.store.db import create_pool
from tests.fixtures import Gateway
from tests.support import Reply

ADMIN_TOKEN = "admin-token-for-tests-0123456789-abcdef"
TEST_ACTOR = Actor("cli:tests", None)


async def operator_service(database_url: str) -> AsyncIterator[OperatorService]:
    pool = await create_pool(database_url, 1, 2)  # the gateway's (its jsonb codec)
    try:
        yield OperatorService(pool)
    finally:
        await pool.close()


async def tokens_by_role(database_url: str) -> dict[Role, str]:
    """One fresh service token per role."""
    async for service in operator_service(database_url):
        return {
            role: (await service.create_token(f"{role.value} token", role, TEST_ACTOR)).token
            for role in Role
        }
    raise AssertionError("unreachable")


async def admin_call(
    gw: Gateway,
    method: str,
    path: str,
    token: str | None = ADMIN_TOKEN,
    payload: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    body = b"" if payload is None else orjson.dumps(payload)
    if body:
        hdrs["Content-Type"] = "application/json"
    async with gw.http.request(method, gw.url + path, data=body, headers=hdrs) as resp:
        return Reply(resp.status, CIMultiDict(resp.headers), await resp.read())
