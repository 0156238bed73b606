"""Test helpers: a signing merchant client, free ports, and small receivers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from multidict import CIMultiDict

from gateway.auth.signature import KeyType, authorization_header, sign, signed_message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Creds:
    merchant_id: str
    key_id: str
    key_type: KeyType
    secret: str | None = None
    private_key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | None = None
    webhook_secret: str | None = None


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class MerchantClient:
    base_url: str
    creds: Creds
    http: aiohttp.ClientSession

    def auth_header(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> str:
        ts = int(time.time()) if timestamp is None else timestamp
        nonce = nonce or secrets.token_urlsafe(18)
        message = signed_message(method, path, ts, nonce, body)
        signature = sign(
            self.creds.key_type,
            message,
            secret=self.creds.secret,
            private_key=self.creds.private_key,
        )
        return authorization_header(self.creds.key_type, self.creds.key_id, ts, nonce, signature)

    async def request(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: str | None = None,
        idempotency_key: str | None = None,
        content_type: str = "application/json",
    ) -> Reply:
        body = raw if raw is not None else (orjson.dumps(payload) if payload is not None else b"")
        hdrs = {"Authorization": auth if auth is not None else self.auth_header(method, path, body)}
        if body:
            hdrs["Content-Type"] = content_type
        if idempotency_key is not None:
            hdrs["Idempotency-Key"] = idempotency_key
        hdrs.update(headers or {})
        async with self.http.request(method, self.base_url + path, data=body, headers=hdrs) as r:
            return Reply(r.status, CIMultiDict(r.headers), await r.read())

    async def create_payment(self, **overrides: Any) -> Reply:
        payload = payment_payload(**overrides)
        return await self.request("POST", "/v1/payments", payload)


def payment_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "merchant_order_id": "ord_" + secrets.token_hex(6),
        "amount": 1999,
        "currency": "CNY",
        "method": "card",
        "description": "Order for tests",
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


@dataclass
class Receiver:
    """A merchant's callback endpoint: records every request; answers from a script."""

    received: list[dict[str, Any]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    default_status: int = 200
    url: str = ""
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append({"headers": dict(request.headers), "body": body, "path": request.path})
        self.event.set()
        status = self.script.pop(0) if self.script else self.default_status
        return web.Response(status=status, text="ok")

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while len(self.received) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"expected {count} callbacks, got {len(self.received)}")
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), remaining)


async def wait_until(predicate: Any, within: float = 10.0, interval: float = 0.05) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
