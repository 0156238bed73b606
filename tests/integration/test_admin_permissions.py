"""Every `/admin/…` endpoint against every identity, from the one permission table: 401
`unauthenticated` without an identity (or with an unknown or revoked token), 403 `forbidden`
below the endpoint's role, neither at or above it. The application's routes are enumerated:
an `/admin` route missing from the table fails here."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.api.admin import ROUTES
from gateway.domain.permissions import RESERVED, Permission, Role, least_role
from tests.admin_support import (
    ADMIN_TOKEN,
    TEST_ACTOR,
    admin_call,
    operator_service,
    tokens_by_role,
)
from tests.fixtures import Gateway, start_gateway

pytestmark = pytest.mark.integration

# a value per path parameter: the resources need not exist (404 is neither 401 nor 403)
PARAMS = {"id": "x_1", "key_id": "key_1", "channel": "no_such_channel"}
# a body each change accepts, so that the answer past the guard is the handler's own
BODIES: dict[str, Any] = {
    "/admin/merchants/{id}/keys": {"key_type": "hmac-sha256"},
    "/admin/merchants/{id}/keys/{key_id}/revoke": {"reason": "table test"},
}
QUERIES = {"/admin/settlement": "?date=2025-03-01"}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PARAMS[m.group(1)], path) + QUERIES.get(path, "")


@pytest.fixture
async def gateway(
    database_url: str, redis_prefix: str, redis_client: Any
) -> AsyncIterator[Gateway]:
    gw, server = await start_gateway(database_url, redis_prefix, admin_token=ADMIN_TOKEN)
    yield gw
    await gw.http.close()
    await server.close()


def test_the_table_and_the_application_serve_the_same_admin_routes(gateway: Gateway) -> None:
    served = {
        (route.method, route.resource.canonical)
        for route in gateway.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/admin")
        and route.method != "HEAD"
    }
    assert served == {(r.method, r.path) for r in ROUTES}
    used = {r.permission for r in ROUTES}
    assert used | RESERVED == set(Permission)  # every permission has an endpoint or waits
    assert not used & RESERVED  # a reserved permission that got an endpoint leaves RESERVED


async def test_every_endpoint_against_every_role(gateway: Gateway, database_url: str) -> None:
    by_role = await tokens_by_role(database_url)
    checked = 0
    for route in ROUTES:
        path = concrete(route.path)
        body = BODIES.get(route.path, {} if route.method == "POST" else None)
        needed = least_role(route.permission)
        reply = await admin_call(gateway, route.method, path, token=None, payload=body)
        assert (reply.status, reply.json["code"]) == (401, "unauthenticated"), route
        assert reply.headers["WWW-Authenticate"] == "Bearer"
        for role, token in by_role.items():
            reply = await admin_call(gateway, route.method, path, token=token, payload=body)
            if role.includes(needed):
                assert reply.status not in (401, 403), (route.path, role, reply.json)
            else:
                assert (reply.status, reply.json["code"]) == (403, "forbidden"), (route, role)
                assert needed.value in reply.json["detail"]
            checked += 1
        reply = await admin_call(gateway, route.method, path, token=ADMIN_TOKEN, payload=body)
        assert reply.status not in (401, 403), (route.path, "admin-token", reply.json)
    assert checked == len(ROUTES) * len(Role)


async def test_unknown_malformed_and_revoked_tokens_are_unauthenticated(
    gateway: Gateway, database_url: str
) -> None:
    async for service in operator_service(database_url):
        issued = await service.create_token("revoked soon", Role.ADMIN, TEST_ACTOR)
        assert (await admin_call(gateway, "GET", "/admin/audit", token=issued.token)).status == 200
        await service.revoke_token(issued.token_id, TEST_ACTOR, "rotated")
        reply = await admin_call(gateway, "GET", "/admin/audit", token=issued.token)
        assert (reply.status, reply.json["code"]) == (401, "unauthenticated")
    for header in ("Bearer gwop_" + "x" * 43, "Bearer " + ADMIN_TOKEN[:-1], "Basic abc", "Bearer"):
        reply = await admin_call(
            gateway, "GET", "/admin/routing", token=None, headers={"Authorization": header}
        )
        assert (reply.status, reply.json["code"]) == (401, "unauthenticated"), header
