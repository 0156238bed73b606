"""Load for the fault-injection scenarios: merchants' journeys (create, with retries and
concurrent duplicates; pay, cancel or close; refunds that race each other) driven with signed
requests, every answer recorded for the invariants; and the merchant's callback receiver."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from standardwebhooks import Webhook

from tests.support import Creds, MerchantClient, free_port, payment_payload

METHODS = ("card", "wechat_qr", "alipay_qr", "unionpay_qr")
RETRYABLE_CODES = {"idempotency_key_in_use"}


@dataclass(slots=True)
class Answer:
    """One HTTP exchange of the load (status None: no answer, e.g. connection refused)."""

    op: str  # create | refund | close | get | pay
    key: str  # merchant_order_id, or merchant_order_id/merchant_refund_id
    status: int | None
    obj_id: str | None = None
    obj_status: str | None = None
    code: str | None = None
    content_type: str = ""
    replayed: bool = False
    error: str | None = None
    target: str = ""
    at: float = 0.0
    done_at: float = 0.0


@dataclass
class Receipt:
    path: str
    webhook_id: str
    event_type: str
    object_id: str
    valid_signature: bool
    at: float


@dataclass
class Receiver:
    """The merchant's callback endpoints (`/notify` for notify_url, `/endpoint` for the
    subscribed webhook endpoint): records every arrival, then answers as scripted."""

    secret: str
    delay: Callable[[], float] = lambda: 0.0
    status: Callable[[], int] = lambda: 200
    receipts: list[Receipt] = field(default_factory=list)
    answered: Counter[int] = field(default_factory=Counter)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            Webhook(self.secret).verify(body, dict(request.headers))
            valid = True
        except Exception:
            valid = False
        data = orjson.loads(body)
        self.receipts.append(
            Receipt(
                path=request.path,
                webhook_id=request.headers.get("webhook-id", ""),
                event_type=data.get("type", ""),
                object_id=data.get("data", {}).get("object", {}).get("id", ""),
                valid_signature=valid,
                at=time.monotonic(),
            )
        )
        delay = self.delay()
        if delay:
            await asyncio.sleep(delay)
        status = self.status()
        self.answered[status] += 1
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return web.Response(status=status, text="ok", headers=headers)


@dataclass
class Mix:
    """What the payers and the merchant do with each payment (shares of 1)."""

    pay: float = 0.6
    cancel: float = 0.1
    close: float = 0.15
    refund: float = 0.5  # of the succeeded ones
    duplicate_create: float = 0.1
    idempotency_key: float = 0.3


class LoadDriver:
    """Runs `count` journeys with `concurrency` workers against whichever gateways
    `targets()` names, retrying through faults with the same merchant_order_id,
    Idempotency-Key or merchant_refund_id, and records every answer."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        creds: Creds,
        targets: Callable[[], list[str]],
        notify_url: str,
        *,
        tag: str,
        seed: int = 7,
        expires_in: int = 60,
        mix: Mix | None = None,
        retry_deadline_s: float = 75.0,
        request_timeout_s: float = 15.0,
    ) -> None:
        self.http = http
        self.creds = creds
        self.targets = targets
        self.notify_url = notify_url
        self.tag = tag
        self.rng = random.Random(seed)
        self.expires_in = expires_in
        self.mix = mix or Mix()
        self.retry_deadline_s = retry_deadline_s
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.answers: list[Answer] = []
        self.started = 0
        self.finished = 0
        self.longest_retry_s = 0.0
        self.progress = asyncio.Event()
        """Set whenever a journey finishes."""
        self._turn = 0

    # ---- one exchange ---------------------------------------------------------------------
    def _target(self) -> str:
        targets = self.targets()
        self._turn += 1
        return targets[self._turn % len(targets)]

    async def send(
        self,
        op: str,
        key: str,
        method: str,
        path: str,
        payload: Any = None,
        idempotency_key: str | None = None,
    ) -> tuple[Answer, Any]:
        target = self._target()
        client = MerchantClient(target, self.creds, self.http)
        answer = Answer(op, key, None, target=target, at=time.monotonic())
        try:
            async with asyncio.timeout(self.timeout.total):
                reply = await client.request(method, path, payload, idempotency_key=idempotency_key)
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer.error = type(exc).__name__
            answer.done_at = time.monotonic()
            self.answers.append(answer)
            return answer, None
        answer.done_at = time.monotonic()
        answer.status = reply.status
        answer.content_type = reply.headers.get("Content-Type", "")
        answer.replayed = reply.headers.get("Idempotent-Replayed") == "true"
        body: Any = None
        try:
            body = reply.json
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            if reply.status < 400:
                answer.obj_id = body.get("id")
                answer.obj_status = body.get("status")
            else:
                answer.code = body.get("code")
        self.answers.append(answer)
        return answer, body

    async def retrying(
        self,
        op: str,
        key: str,
        method: str,
        path: str,
        payload: Any = None,
        idempotency_key: str | None = None,
    ) -> tuple[Answer, Any]:
        """Send until an answer that is not a fault (no answer, 5xx, key in use) or the
        deadline; the same request each time (a merchant retrying)."""
        started = time.monotonic()
        deadline = started + self.retry_deadline_s
        pause = 0.2
        while True:
            answer, body = await self.send(op, key, method, path, payload, idempotency_key)
            fault = (
                answer.status is None
                or answer.status >= 500
                or (answer.status == 409 and answer.code in RETRYABLE_CODES)
            )
            if not fault or time.monotonic() > deadline:
                if op == "create":
                    took = round(time.monotonic() - started, 2)
                    self.longest_retry_s = max(self.longest_retry_s, took)
                return answer, body
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    # ---- journeys -------------------------------------------------------------------------
    async def create(self, payload: dict[str, Any], idem: str | None) -> dict[str, Any] | None:
        answer, body = await self.retrying(
            "create", payload["merchant_order_id"], "POST", "/v1/payments", payload, idem
        )
        if answer.status in (200, 201) and isinstance(body, dict):
            return body
        return None

    async def pay(self, url: str, action: str, key: str) -> int | None:
        """The payer acts on the channel's page (retrying while the channel is unreachable)."""
        deadline = time.monotonic() + self.retry_deadline_s
        while True:
            answer = Answer("pay", key, None, target=url, at=time.monotonic())
            try:
                async with self.http.post(url, json={"action": action}, timeout=self.timeout) as r:
                    answer.status = r.status
                    await r.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer.error = type(exc).__name__
            answer.done_at = time.monotonic()
            self.answers.append(answer)
            if (answer.status is not None and answer.status < 500) or time.monotonic() > deadline:
                return answer.status
            await asyncio.sleep(0.3)

    async def wait_final(self, payment_id: str, key: str, within: float = 8.0) -> Any:
        deadline = time.monotonic() + within
        body: Any = None
        while time.monotonic() < deadline:
            answer, body = await self.send("get", key, "GET", f"/v1/payments/{payment_id}")
            if answer.status == 200 and body["status"] != "pending":
                return body
            await asyncio.sleep(0.3)
        return body

    async def refunds(self, payment: dict[str, Any], key: str) -> None:
        """Two refunds of 60 % each, at once: at most one may pass; then a repeat of the
        first one (same merchant_refund_id), which must answer the same refund."""
        part = max(1, payment["amount"] * 6 // 10)
        path = f"/v1/payments/{payment['id']}/refunds"
        first = {"merchant_refund_id": f"{key}-r1", "amount": part, "reason": "chaos"}
        second = {"merchant_refund_id": f"{key}-r2", "amount": part}
        await asyncio.gather(
            self.retrying("refund", f"{key}/{key}-r1", "POST", path, first),
            self.retrying("refund", f"{key}/{key}-r2", "POST", path, second),
        )
        await self.retrying("refund", f"{key}/{key}-r1", "POST", path, first)

    async def journey(self, i: int) -> None:
        rng = self.rng
        key = f"{self.tag}-{i}"
        payload = payment_payload(
            merchant_order_id=key,
            amount=rng.randint(100, 200_000),
            method=rng.choice(METHODS),
            description=f"Chaos order {i}",
            expires_in=self.expires_in,
            notify_url=self.notify_url,
        )
        idem = f"idem-{key}" if rng.random() < self.mix.idempotency_key else None
        if rng.random() < self.mix.duplicate_create:
            results = await asyncio.gather(self.create(payload, idem), self.create(payload, None))
        else:
            results = [await self.create(payload, idem)]
        payment = next((r for r in results if r is not None), None)
        if payment is None or payment["status"] != "pending" or not payment["next_action"]:
            return
        roll = rng.random()
        m = self.mix
        if roll < m.pay:
            status = await self.pay(payment["next_action"]["url"], "pay", key)
            if status == 200:
                final = await self.wait_final(payment["id"], key)
                if final and final.get("status") == "succeeded" and rng.random() < m.refund:
                    await self.refunds(final, key)
        elif roll < m.pay + m.cancel:
            await self.pay(payment["next_action"]["url"], "cancel", key)
        elif roll < m.pay + m.cancel + m.close:
            await self.retrying("close", key, "POST", f"/v1/payments/{payment['id']}/close")
        # else: left pending, for the expiry (or the settle step) to close

    async def run(self, count: int, concurrency: int) -> float:
        """Run `count` journeys; returns the wall time."""
        started = time.monotonic()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                self.started += 1
                await self.journey(i)
                self.finished += 1
                self.progress.set()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - started

    async def close_pending(self, payment_ids: list[str]) -> None:
        """The settle step of the short form: the merchant closes what is still pending."""
        sem = asyncio.Semaphore(8)

        async def one(pid: str) -> None:
            async with sem:
                await self.retrying("close", pid, "POST", f"/v1/payments/{pid}/close")

        await asyncio.gather(*(one(p) for p in payment_ids))

    def outage(self, since: float, until: float | None = None) -> dict[str, Any]:
        """What the merchant saw of a fault that struck at `since` (and ended by `until`):
        API requests that failed (no answer or 5xx), and the seconds from `since` to the
        answer of the last one: the time to recover, as a merchant measures it."""
        api = [
            a
            for a in self.answers
            if a.op in ("create", "refund", "close", "get")
            and a.at >= since
            and (until is None or a.at <= until)
        ]
        failed = [a for a in api if a.status is None or a.status >= 500]
        last = max((a.done_at for a in failed), default=since)
        return {
            "failed_requests": len(failed),
            "failed_by": dict(Counter(f"{a.op} {a.status or a.error}" for a in failed)),
            "failed_at": dict(Counter(a.target for a in failed)),
            "recovered_after_s": round(last - since, 2),
        }
