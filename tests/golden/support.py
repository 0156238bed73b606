"""What every golden-vector test shares: the data files, and a capturing HTTP server that
records exactly what an adapter sent and answers with what the test gives it.

Deliberately free of the adapters' protocol code: the server knows nothing of any channel.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

DATA = Path(__file__).resolve().parent / "data"
OPENSSL = shutil.which("openssl") or "openssl"


def vectors(channel: str) -> dict[str, Any]:
    """The vectors of one channel (`tests/golden/data/<channel>.json`)."""
    loaded: dict[str, Any] = json.loads((DATA / f"{channel}.json").read_text(encoding="utf-8"))
    return loaded


def openssl_sign(key_pem: Path, message: bytes) -> str:
    """`openssl dgst -sha256 -sign KEY` (SHA256withRSA, PKCS#1 v1.5), base64."""
    signed = subprocess.run(
        [OPENSSL, "dgst", "-sha256", "-sign", str(key_pem)],
        input=message,
        capture_output=True,
        check=True,
    )
    return base64.b64encode(signed.stdout).decode()


def openssl_verify(public_pem: Path, message: bytes, signature: str, workdir: Path) -> bool:
    """`openssl dgst -sha256 -verify PUB -signature SIG`."""
    sig = workdir / "signature.bin"
    sig.write_bytes(base64.b64decode(signature))
    checked = subprocess.run(
        [OPENSSL, "dgst", "-sha256", "-verify", str(public_pem), "-signature", str(sig)],
        input=message,
        capture_output=True,
        check=False,
    )
    return checked.returncode == 0 and checked.stdout.strip() == b"Verified OK"


@dataclass(frozen=True, slots=True)
class Captured:
    """One request as it arrived on the wire."""

    method: str
    path_qs: str
    """The path and query exactly as sent (not decoded)."""
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer the test wants the channel to give."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Responder = Callable[[Captured], Reply]


class CapturingServer:
    """An aiohttp server on 127.0.0.1 that records every request and answers each with
    `responder(captured)`."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.requests: list[Captured] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        captured = Captured(
            method=request.method,
            path_qs=request.raw_path,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=await request.read(),
        )
        self.requests.append(captured)
        reply = self.responder(captured)
        response = web.Response(status=reply.status, body=reply.body)
        for name, value in reply.headers.items():
            response.headers[name] = value
        return response

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def only_request(self) -> Captured:
        assert len(self.requests) == 1, [r.path_qs for r in self.requests]
        return self.requests[0]


StartServer = Callable[[Responder], Awaitable[CapturingServer]]
