"""Hostile inputs at the merchant API: forged, replayed and stale signatures, oversized and
deeply nested bodies, wrong types, huge numbers, unicode and control characters, header
injection. Every answer is a 4xx RFC 9457 problem (never a 5xx), and nothing is created."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson
import yarl
from multidict import CIMultiDict

from gateway.auth.signature import KeyType
from tests.fixtures import Gateway, new_merchant
from tests.support import Creds, MerchantClient, Reply, payment_payload

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["Content-Type"].startswith("application/problem+json"), reply.headers
    problem: dict[str, Any] = reply.json
    assert set(problem) >= PROBLEM_MEMBERS, problem
    assert problem["status"] == status
    assert problem["request_id"] == reply.headers["X-Request-Id"]
    if code is not None:
        assert problem["code"] == code, problem
    return problem


async def nothing_created(db: asyncpg.Pool) -> None:
    assert await db.fetchval("SELECT count(*) FROM payments") == 0
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0


# ---- forged ---------------------------------------------------------------------------------
async def test_forged_signatures(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    raw = orjson.dumps(payment_payload())
    creds = client.creds
    wrong_secret = Creds(creds.merchant_id, creds.key_id, KeyType.HMAC_SHA256, secret="x" * 43)
    forgeries = {
        "wrong secret": gateway.client(wrong_secret).auth_header("POST", "/v1/payments", raw),
        "other body": client.auth_header("POST", "/v1/payments", raw + b" "),
        "other path": client.auth_header("POST", "/v1/payments/pay_x/close", raw),
        "other method": client.auth_header("PUT", "/v1/payments", raw),
        "bit flipped": _flip_signature(client.auth_header("POST", "/v1/payments", raw)),
        "empty signature": _replace(
            client.auth_header("POST", "/v1/payments", raw), "signature", ""
        ),
    }
    for name, header in forgeries.items():
        reply = await client.request("POST", "/v1/payments", raw=raw, auth=header)
        assert reply.status == 401, name
        problem = assert_problem(reply, 401)
        expected = ("invalid_signature", "malformed_authorization")
        assert problem["code"] == "invalid_signature" or (
            name == "empty signature" and problem["code"] in expected
        ), (name, problem)
    await nothing_created(db)


async def test_another_merchants_key_signs_nothing_for_this_one(
    gateway: Gateway, client: MerchantClient, database_url: str, db: asyncpg.Pool
) -> None:
    other = await new_merchant(database_url, name="Other shop")
    # a valid signature by the other merchant's secret, presented under this merchant's key id
    header = gateway.client(other).auth_header("POST", "/v1/payments", b"{}")
    header = _replace(header, "key_id", client.creds.key_id)
    reply = await client.request("POST", "/v1/payments", raw=b"{}", auth=header)
    assert_problem(reply, 401, "invalid_signature")
    await nothing_created(db)


MALFORMED_AUTHORIZATION = [
    "Bearer abc",
    "GW1-HMAC-SHA256",
    'GW1-HMAC-SHA256 key_id="k"',
    'GW1-MD5 key_id="k",timestamp="1",nonce="nonce-nonce-nonce",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="k",timestamp="1",nonce="bad nonce!",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="k",timestamp="1",nonce="short",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="k",timestamp="-1",nonce="nonce-nonce-nonce",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="k",timestamp="1e9",nonce="nonce-nonce-nonce",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="k",timestamp="'
    + "9" * 400
    + '",nonce="nonce-nonce-nonce",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="k",key_id="k2",timestamp="1",nonce="nonce-nonce-nonce",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="'
    + "k" * 6000
    + '",timestamp="1",nonce="nonce-nonce-nonce",signature="AA=="',
    'GW1-HMAC-SHA256 key_id="k",timestamp="1",nonce="nonce-nonce-nonce",signature="%%%"',
    'GW1-HMAC-SHA256 key_id="ké",timestamp="1",nonce="nonce-nonce-nonce",signature="AA=="',
    "GW1-HMAC-SHA256 " + ",".join(f'x{i}="y"' for i in range(500)),
]


async def test_malformed_authorization_headers(client: MerchantClient, db: asyncpg.Pool) -> None:
    for header in MALFORMED_AUTHORIZATION:
        reply = await client.request("POST", "/v1/payments", payment_payload(), auth=header)
        problem = assert_problem(reply, 401)
        assert problem["code"] in ("malformed_authorization", "timestamp_out_of_window",
                                   "unknown_key"), header[:80]  # fmt: skip
    await nothing_created(db)


# ---- replayed and stale ---------------------------------------------------------------------
async def test_replayed_request_is_refused_and_creates_once(
    client: MerchantClient, db: asyncpg.Pool
) -> None:
    raw = orjson.dumps(payment_payload())
    header = client.auth_header("POST", "/v1/payments", raw)
    replies = await asyncio.gather(
        *(client.request("POST", "/v1/payments", raw=raw, auth=header) for _ in range(8))
    )
    statuses = sorted(r.status for r in replies)
    assert statuses == [201] + [401] * 7, statuses
    for reply in replies:
        if reply.status == 401:
            assert_problem(reply, 401, "nonce_replayed")
    assert await db.fetchval("SELECT count(*) FROM payments") == 1


async def test_stale_and_replayed_nonces(client: MerchantClient, db: asyncpg.Pool) -> None:
    raw = orjson.dumps(payment_payload())
    for skew in (-301, 301, -86_400 * 365, 10**10):
        header = client.auth_header("POST", "/v1/payments", raw, timestamp=int(time.time()) + skew)
        reply = await client.request("POST", "/v1/payments", raw=raw, auth=header)
        assert_problem(reply, 401, "timestamp_out_of_window")
    await nothing_created(db)
    # a stale request does not burn its nonce; a nonce re-signed for another path is a replay
    stale = client.auth_header("GET", "/v1/payments/pay_a", b"", nonce="nonce-kept-for-later",
                               timestamp=int(time.time()) - 1000)  # fmt: skip
    assert (await client.request("GET", "/v1/payments/pay_a", auth=stale)).status == 401
    fresh = client.auth_header("GET", "/v1/payments/pay_a", b"", nonce="nonce-kept-for-later")
    assert (await client.request("GET", "/v1/payments/pay_a", auth=fresh)).status == 404
    again = client.auth_header("GET", "/v1/payments/pay_b", b"", nonce="nonce-kept-for-later")
    assert_problem(await client.request("GET", "/v1/payments/pay_b", auth=again), 401,
                   "nonce_replayed")  # fmt: skip


# ---- oversized and deeply nested ------------------------------------------------------------
async def test_oversized_bodies(client: MerchantClient, db: asyncpg.Pool) -> None:
    for size in (64 * 1024 - 15, 1024 * 1024, 8 * 1024 * 1024):
        raw = b'{"description": "' + b"x" * size + b'"}'
        reply = await client.request("POST", "/v1/payments", raw=raw)
        assert_problem(reply, 413, "payload_too_large")
    # refused before the signature is even looked at
    junk = await client.request("POST", "/v1/payments", raw=b"x" * (200 * 1024), auth="GW1 junk")
    assert_problem(junk, 413, "payload_too_large")
    await nothing_created(db)


NESTED = [
    b"[" * 30_000 + b"]" * 30_000,
    b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    b'{"a":' * 1_000 + b"1" + b"}" * 1_000,  # within the parser's depth: the model refuses it
    orjson.dumps(payment_payload())[:-1] + b',"payer":' + b'{"id":' * 2000 + b'"x"' + b"}" * 2001,
    orjson.dumps(payment_payload())[:-1] + b',"metadata":{"k":' + b"[" * 500 + b"]" * 500 + b"}}",
]


async def test_deeply_nested_json(client: MerchantClient, db: asyncpg.Pool) -> None:
    for raw in NESTED:
        reply = await client.request("POST", "/v1/payments", raw=raw)
        problem = assert_problem(reply, 400)
        assert problem["code"] in ("malformed_json", "invalid_request"), raw[:40]
    await nothing_created(db)


# ---- wrong types and huge numbers -----------------------------------------------------------
WRONG = [
    ("amount", "1999"),
    ("amount", 19.99),
    ("amount", 1999.0),
    ("amount", True),
    ("amount", None),
    ("amount", [1999]),
    ("amount", {"value": 1999}),
    ("amount", -1),
    ("amount", 0),
    ("amount", 10**11 + 1),
    ("amount", 2**63 - 1),
    ("currency", 156),
    ("currency", "cny"),
    ("currency", "CNYX"),
    ("method", ["card"]),
    ("description", 7),
    ("description", ""),
    ("description", "x" * 129),
    ("merchant_order_id", 1001),
    ("merchant_order_id", "x" * 65),
    ("merchant_order_id", "../../etc/passwd"),
    ("merchant_order_id", "A 1"),
    ("expires_in", 59),
    ("expires_in", 86_401),
    ("expires_in", 10**18),
    ("expires_in", "900"),
    ("metadata", ["a", "b"]),
    ("metadata", {"k": 1}),
    ("metadata", {"k": {"nested": "x"}}),
    ("metadata", {f"k{i}": "v" for i in range(21)}),
    ("metadata", {"k": "v" * 501}),
    ("payer", "u-1"),
    ("payer", {"ip": "999.1.1.1"}),
    ("payer", {"ip": "203.0.113.9", "extra": 1}),
    ("notify_url", "javascript:alert(1)"),
    ("notify_url", "file:///etc/passwd"),
    ("notify_url", "https://user:pass@shop.example/n"),
    ("notify_url", ["https://shop.example/n"]),
]


async def test_wrong_types_and_values(client: MerchantClient, db: asyncpg.Pool) -> None:
    for field, value in WRONG:
        reply = await client.request("POST", "/v1/payments", payment_payload(**{field: value}))
        problem = assert_problem(reply, 400, "invalid_request")
        assert any(e["field"].split(".")[0] == field for e in problem["errors"]), (field, problem)
    await nothing_created(db)


BROKEN_JSON = [
    b'{"amount": 1' + b"0" * 400 + b"}",
    b'{"amount": 1e999}',
    b'{"amount": -1e999}',
    b'{"amount": NaN}',
    b'{"amount": Infinity}',
    b'{"amount": 0x10}',
    b"null",
    b"1e999",
    b'"a string"',
    b"\xff\xfe{\x00}",
    b'{"description": "\xc3\x28"}',
    b'{"description": "\\ud800"}',
    b'{"a": 1, "a": 2',
    b"{'amount': 1}",
]


async def test_huge_numbers_and_broken_json(client: MerchantClient, db: asyncpg.Pool) -> None:
    for raw in BROKEN_JSON:
        reply = await client.request("POST", "/v1/payments", raw=raw)
        problem = assert_problem(reply, 400)
        assert problem["code"] in ("malformed_json", "invalid_request"), raw[:40]
    await nothing_created(db)


HOSTILE_TARGETS = [
    "/v1/webhook-deliveries?limit=99999999999999999999999",
    "/v1/webhook-deliveries?limit=-1",
    "/v1/webhook-deliveries?limit=1e3",
    "/v1/webhook-deliveries?status=%00",
    "/v1/webhook-deliveries?event_id=%00",
    "/v1/webhook-deliveries?starting_after=%00abc",
    "/v1/webhook-deliveries?event_id=" + "e" * 5000,
    "/v1/webhook-deliveries?status=pending&status=failed",
    "/v1/webhook-deliveries?%00=1",
    "/v1/payments/%00",
    "/v1/payments/pay_%00x",
    "/v1/payments/" + "p" * 5000,
    "/v1/payments/%2e%2e%2f%2e%2e%2fadmin",
    "/v1/payments/../../admin",
    "/v1/payments/%F0%9F%92%B8",
    "/v1/payments/%ff%fe",
    "/v1/payments?merchant_order_id=%00",
    "/v1/payments?merchant_order_id=%ff",
    "/v1/payments?merchant_order_id=a&merchant_order_id=b",
    "/v1/payments/pay_x?sync=%00",
    "/v1/refunds/%00",
]


async def test_hostile_paths_and_query_parameters(client: MerchantClient) -> None:
    for target in HOSTILE_TARGETS:
        # sent exactly as written (no client-side normalisation), and signed that way
        url = yarl.URL(client.base_url + target, encoded=True)
        headers = {"Authorization": client.auth_header("GET", target, b"")}
        async with client.http.get(url, headers=headers) as r:
            reply = Reply(r.status, CIMultiDict(r.headers), await r.read())
        if reply.status != 200:
            problem = assert_problem(reply, reply.status)
            assert reply.status in (400, 404), (target[:80], problem)


# ---- unicode --------------------------------------------------------------------------------
async def test_unicode_round_trips_exactly(client: MerchantClient, db: asyncpg.Pool) -> None:
    text = "订单 💸 e\u0301 \u202eRTL\u202c ﷽ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
    reply = await client.create_payment(description=text, metadata={"备注": "加急 ✓", "k": "\t\n"})
    assert reply.status == 201, reply.body
    again = await client.request("GET", f"/v1/payments/{reply.json['id']}")
    assert again.json["description"] == text
    assert again.json["metadata"] == {"备注": "加急 ✓", "k": "\t\n"}
    assert await db.fetchval("SELECT description FROM payments") == text


async def test_nul_characters_are_refused(client: MerchantClient, db: asyncpg.Pool) -> None:
    patches: list[tuple[dict[str, Any], str]] = [
        ({"description": "nul \u0000 inside"}, "description"),
        ({"metadata": {"k": "nul \u0000"}}, "metadata.k"),
        ({"metadata": {"nul\u0000": "v"}}, "metadata.nul\u0000"),
        ({"payer": {"id": "u\u00001"}}, "payer.id"),
    ]
    for patch, field in patches:
        reply = await client.request("POST", "/v1/payments", payment_payload(**patch))
        problem = assert_problem(reply, 400, "invalid_request")
        assert [e["field"] for e in problem["errors"]] == [field]
    await nothing_created(db)
    endpoint = await client.request(
        "POST", "/v1/webhook-endpoints", {"url": "https://a.example/\u0000", "events": []}
    )
    assert_problem(endpoint, 400, "invalid_request")


async def test_non_ascii_merchant_order_ids_are_refused(
    client: MerchantClient, db: asyncpg.Pool
) -> None:
    for order_id in ("订单1", "A\u0301", "ＡＢＣ", "A\u200b1", "١٢٣", "A\u00001"):
        reply = await client.create_payment(merchant_order_id=order_id)
        assert_problem(reply, 400, "invalid_request")
    await nothing_created(db)


# ---- header injection -----------------------------------------------------------------------
INJECTED_URLS = [
    "https://shop.example/n\r\nX-Injected: 1",
    "https://shop.example/n\nLocation: https://evil.example",
    "https://shop.example\r\n\r\nGET / HTTP/1.1",
    "https://shop.example/n\x00",
    "https://shop.example/n" + "\u2028",
    "https://shop.example/n\t",
    " https://shop.example/n",
]


async def test_header_injection_in_urls_is_refused(
    client: MerchantClient, db: asyncpg.Pool
) -> None:
    for url in INJECTED_URLS:
        reply = await client.create_payment(notify_url=url)
        problem = assert_problem(reply, 400, "invalid_request")
        assert [e["field"] for e in problem["errors"]] == ["notify_url"], url
        endpoint = await client.request(
            "POST", "/v1/webhook-endpoints", {"url": url, "events": ["payment.succeeded"]}
        )
        assert_problem(endpoint, 400, "invalid_request")
    await nothing_created(db)
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoints") == 0


async def test_hostile_idempotency_keys(client: MerchantClient, db: asyncpg.Pool) -> None:
    for key in ("ключ", "k" * 256, "", " " * 300, "k\u00e9"):
        reply = await client.request(
            "POST", "/v1/payments", payment_payload(), headers={"Idempotency-Key": key}
        )
        assert_problem(reply, 400, "invalid_request")
    await nothing_created(db)


async def test_client_request_ids_and_headers_are_not_reflected(client: MerchantClient) -> None:
    reply = await client.request(
        "GET",
        "/v1/payments/pay_nope",
        headers={"X-Request-Id": "attacker-chosen", "X-Forwarded-Host": "evil.example"},
    )
    problem = assert_problem(reply, 404, "not_found")
    assert reply.headers["X-Request-Id"].startswith("req_")
    assert reply.headers["X-Request-Id"] != "attacker-chosen"
    assert "evil.example" not in reply.body.decode()
    assert problem["request_id"] == reply.headers["X-Request-Id"]


async def test_raw_http_smuggling_and_header_folding(gateway: Gateway, db: asyncpg.Pool) -> None:
    """Framing attacks at the socket (duplicate or conflicting lengths, folded or bare-CR
    headers, oversized headers, control characters in a header): refused with a 400, and
    nothing is created. These die in aiohttp's HTTP parser before a request exists, so its
    400 is text/plain, not problem+json."""
    host, port = gateway.url.removeprefix("http://").split(":")
    attacks = [
        b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\n{}",
        b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b'GET /v1/payments/x HTTP/1.1\r\nHost: x\r\nAuthorization: GW1-HMAC-SHA256\r\n key_id="k"\r\n\r\n',
        b"GET /v1/payments/x HTTP/1.1\r\nHost: x\r\nX-A: a\rX-B: b\r\n\r\n",
        b"GET /v1/payments/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k\x01\x00\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    ]
    for attack in attacks:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(attack)
        await writer.drain()
        head = await asyncio.wait_for(reader.read(200), 5)
        writer.close()
        assert head.split(b" ")[1] == b"400", (attack[:60], head)
    await nothing_created(db)


def _replace(header: str, name: str, value: str) -> str:
    start = header.index(f'{name}="') + len(name) + 2
    end = header.index('"', start)
    return header[:start] + value + header[end:]


def _flip_signature(header: str) -> str:
    start = header.index('signature="') + len('signature="')
    first = header[start]
    return header[:start] + ("B" if first != "B" else "C") + header[start + 1 :]
