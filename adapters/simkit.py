"""What every channel simulator shares: fault injection, the order book, the payer page, the
notification sender with its retry schedule, and the `/control/` routes of API.md §3.

A simulator plays one channel. It keeps its own order book (the channel's view), renders a payer
page at `next_action.url`, and notifies the `notify_url` it was given per its own protocol. The
protocol-specific parts (request verification, response signing, notification format) live in
each channel's `simulator.py`, built on top of this kit.
"""

from __future__ import annotations

import asyncio
import enum
import html
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web

log = structlog.get_logger("simulator")

SIM_PREFIX = web.AppKey("sim_prefix", str)
"""The path a simulator app is mounted under (`/sim/bank`), set by `mount`."""


def mount(parent: web.Application, adapter: str, sim_app: web.Application) -> None:
    """Mount a simulator at `/sim/{adapter}` (inside the gateway or in a standalone process)."""
    prefix = f"/sim/{adapter}"
    sim_app[SIM_PREFIX] = prefix
    parent.add_subapp(prefix, sim_app)


def public_base(request: web.Request) -> str:
    """Absolute URL of the simulator's root as the caller reached it, e.g.
    `http://127.0.0.1:8080/sim/bank` (used to build payer-page URLs)."""
    return f"{request.url.origin()}{request.app[SIM_PREFIX]}"


class NotifyMode(enum.StrEnum):
    NORMAL = "normal"
    DROP = "drop"
    DUPLICATE = "duplicate"
    DELAY = "delay"


@dataclass(slots=True)
class Faults:
    latency_ms: int = 0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    notify: NotifyMode = NotifyMode.NORMAL
    notify_delay_ms: int = 0

    def update(self, patch: dict[str, Any]) -> None:
        """Apply a partial update (omitted members keep their value). Raises ValueError."""
        allowed = {"latency_ms", "error_rate", "timeout_rate", "notify", "notify_delay_ms"}
        unknown = set(patch) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        new = Faults(**asdict(self))
        for key in ("latency_ms", "notify_delay_ms"):
            if key in patch:
                value = patch[key]
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{key} must be a non-negative integer")
                setattr(new, key, value)
        for key in ("error_rate", "timeout_rate"):
            if key in patch:
                value = patch[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{key} must be a number from 0 to 1")
                if not 0 <= value <= 1:
                    raise ValueError(f"{key} must be from 0 to 1")
                setattr(new, key, float(value))
        if "notify" in patch:
            try:
                new.notify = NotifyMode(patch["notify"])
            except ValueError:
                raise ValueError("notify must be normal, drop, duplicate or delay") from None
        for key in allowed:
            setattr(self, key, getattr(new, key))


class FaultAction(enum.Enum):
    NONE = "none"
    ERROR = "error"
    TIMEOUT = "timeout"


@dataclass(slots=True)
class SimOrder:
    """The channel's view of one order. `status` uses the channel's own vocabulary; `extra`
    holds protocol-specific fields. Refunds are kept per order."""

    channel_order_id: str
    amount: int
    currency: str
    description: str
    notify_url: str
    status: str
    channel_trade_no: str
    created_at: datetime
    paid_at: datetime | None = None
    closed_at: datetime | None = None
    refunds: dict[str, SimRefund] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "channel_order_id": self.channel_order_id,
            "amount": self.amount,
            "currency": self.currency,
            "description": self.description,
            "status": self.status,
            "channel_trade_no": self.channel_trade_no,
            "created_at": self.created_at.isoformat(),
            "paid_at": self.paid_at.isoformat() if self.paid_at else None,
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "refunds": {k: r.view() for k, r in self.refunds.items()},
            "extra": self.extra,
        }


@dataclass(slots=True)
class SimRefund:
    channel_refund_id: str
    refund_no: str
    amount: int
    status: str
    created_at: datetime
    completed_at: datetime | None = None

    def view(self) -> dict[str, Any]:
        return {
            "channel_refund_id": self.channel_refund_id,
            "refund_no": self.refund_no,
            "amount": self.amount,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
        }


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """Settings every simulator takes."""

    config_dir: str = "config"
    """Where the development keys and certificates live (`config/keys/<adapter>/`)."""
    notify_time_scale: float = 1.0
    """Multiplies the channel's real notification retry schedule (tests use 0.001)."""
    timeout_sleep_s: float = 30.0
    """How long a simulated timeout hangs before answering (beyond any client timeout)."""


def now() -> datetime:
    return datetime.now(UTC)


def new_trade_no(prefix: str = "") -> str:
    return prefix + datetime.now(UTC).strftime("%Y%m%d") + secrets.token_hex(8)


Sender = Callable[[aiohttp.ClientSession, SimOrder], Awaitable[bool]]
"""Sends one notification for an order; returns True when the receiver acknowledged it."""


class SimulatorCore:
    """State and behaviour shared by one simulator instance."""

    def __init__(
        self,
        adapter: str,
        settings: SimulatorSettings,
        notify_schedule_s: Sequence[float],
    ) -> None:
        self.adapter = adapter
        self.settings = settings
        self.faults = Faults()
        self.orders: dict[str, SimOrder] = {}
        self.notify_schedule_s = list(notify_schedule_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self.notifications_sent = 0
        self.statement_faults = StatementFaults()

    # ---- faults -------------------------------------------------------------------------
    async def inject(self) -> FaultAction:
        """Call at the start of every API handler. Sleeps for latency (and for a timeout,
        long enough that the caller gives up), and says whether to answer with an error."""
        f = self.faults
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        roll = random.random()
        if roll < f.timeout_rate:
            await asyncio.sleep(self.settings.timeout_sleep_s)
            return FaultAction.TIMEOUT
        if roll < f.timeout_rate + f.error_rate:
            return FaultAction.ERROR
        return FaultAction.NONE

    # ---- notifications ------------------------------------------------------------------
    def notify(self, order: SimOrder, send: Sender) -> None:
        """Send the order's notification in the background per the fault mode and the
        channel's retry schedule (until acknowledged or the schedule runs out)."""
        mode = self.faults.notify
        if mode is NotifyMode.DROP:
            log.info("sim_notify_dropped", adapter=self.adapter, order=order.channel_order_id)
            return
        delay = self.faults.notify_delay_ms / 1000 if mode is NotifyMode.DELAY else 0.0
        copies = 2 if mode is NotifyMode.DUPLICATE else 1
        for _ in range(copies):
            self._spawn(self._deliver(order, send, delay))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, order: SimOrder, send: Sender, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        schedule = [0.0, *self.notify_schedule_s]
        for wait in schedule:
            if wait:
                await asyncio.sleep(wait * self.settings.notify_time_scale)
            try:
                ok = await send(self.http, order)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("sim_notify_failed", adapter=self.adapter, error=repr(exc))
                ok = False
            self.notifications_sent += 1
            if ok:
                return
        log.warning("sim_notify_gave_up", adapter=self.adapter, order=order.channel_order_id)

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    # ---- routes -------------------------------------------------------------------------
    def add_control_routes(self, app: web.Application) -> None:
        app.router.add_put("/control/faults", self._put_faults)
        app.router.add_get("/control/faults", self._get_faults)
        app.router.add_get("/control/orders/{channel_order_id}", self._get_order)
        app.router.add_put("/control/statement", self._put_statement_faults)

        async def _cleanup(_: web.Application) -> None:
            await self.aclose()

        app.on_cleanup.append(_cleanup)

    async def _put_faults(self, request: web.Request) -> web.Response:
        try:
            patch = await request.json()
            if not isinstance(patch, dict):
                raise ValueError("body must be a JSON object")
            self.faults.update(patch)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self._faults_view())

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults_view())

    def _faults_view(self) -> dict[str, Any]:
        view = asdict(self.faults)
        view["notify"] = self.faults.notify.value
        return view

    async def _put_statement_faults(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            self.statement_faults = StatementFaults.parse(data)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(self.statement_faults))

    async def _get_order(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["channel_order_id"])
        if order is None:
            return web.json_response({"error": "order not found"}, status=404)
        return web.json_response(order.view())


@dataclass(slots=True)
class StatementFaults:
    """Discrepancies a simulator puts into its next statements, so that reconciliation can be
    tested (`PUT /sim/{adapter}/control/statement`):

    - `missing`: channel order ids left out of the statement;
    - `extra`: lines the gateway never saw, `{"channel_order_id", "amount"}` (a paid payment);
    - `amount`: `{channel_order_id: amount in minor units}` to report instead of the real one;
    - `status`: `{channel_order_id: status}` in the channel's own vocabulary.
    """

    missing: list[str] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    amount: dict[str, int] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any) -> StatementFaults:
        if not isinstance(data, dict) or set(data) - {"missing", "extra", "amount", "status"}:
            raise ValueError("expected an object with missing, extra, amount and status")
        missing = data.get("missing", [])
        extra = data.get("extra", [])
        amount = data.get("amount", {})
        status = data.get("status", {})
        if not isinstance(missing, list) or not all(isinstance(x, str) for x in missing):
            raise ValueError("missing must be a list of channel order ids")
        if not isinstance(extra, list) or not all(
            isinstance(x, dict)
            and isinstance(x.get("channel_order_id"), str)
            and type(x.get("amount")) is int
            for x in extra
        ):
            raise ValueError("extra must be a list of {channel_order_id, amount}")
        if not isinstance(amount, dict) or not all(type(v) is int for v in amount.values()):
            raise ValueError("amount must map channel order ids to integer amounts")
        if not isinstance(status, dict) or not all(isinstance(v, str) for v in status.values()):
            raise ValueError("status must map channel order ids to statuses")
        return cls(missing=missing, extra=extra, amount=amount, status=status)


async def read_payer_action(request: web.Request) -> str | None:
    """`action=pay|cancel` from a form or a JSON body."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            return None
        action = data.get("action") if isinstance(data, dict) else None
    else:
        form = await request.post()
        action = form.get("action")
    return action if action in ("pay", "cancel") else None


def render_payer_page(title: str, order: SimOrder, amount_text: str, action_url: str) -> str:
    """A minimal hosted payer page: the order, and two buttons that POST `action`."""
    esc = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:28em;margin:3em auto}}
button{{font-size:1.1em;margin:.3em;padding:.4em 1.2em}}</style></head>
<body><h1>{esc(title)}</h1>
<p>Order <code>{esc(order.channel_order_id)}</code></p>
<p>{esc(order.description)}</p>
<p><strong>{esc(amount_text)}</strong></p>
<p>Status: <em>{esc(order.status)}</em></p>
<form method="post" action="{esc(action_url)}">
<button name="action" value="pay">Pay</button>
<button name="action" value="cancel">Cancel</button>
</form></body></html>"""
