"""The one interface every channel adapter implements, and the result type every call returns.

The gateway depends on this module, `adapters.registry` (which builds adapters and simulators)
and `adapters.simkit` (to mount simulators) only. Each channel package (`adapters.bank`,
`adapters.wechat`, ...) implements `ChannelAdapter` in its `adapter.py` on the adapter kernel
(`adapters.kernel`: the one call policy and the rule on unknown outcomes), plays the channel in
its `simulator.py`, and shares the wire protocol between the two in `protocol.py`.

Amounts are always integers in minor units (fen for CNY). A protocol that carries yuan strings
converts exactly (see `adapters.money`), never through floats.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import aiohttp


class Outcome(enum.StrEnum):
    """What a channel call established (Jeepay's small result vocabulary)."""

    SUCCEEDED = "succeeded"
    """Confirmed success: the money moved (payment paid, refund done, order closed)."""
    FAILED = "failed"
    """Confirmed failure: the channel definitively refused or the payer cancelled."""
    WAITING = "waiting"
    """Accepted and waiting: for the payer to pay, or for the channel to finish processing."""
    UNKNOWN = "unknown"
    """The outcome is not known (timeout, connection dropped after sending): query later,
    never re-create elsewhere."""
    SYSTEM_ERROR = "system_error"
    """The channel failed before acting (refused connection, busy, 5xx before an order
    existed): nothing happened there, so failing over is safe when `decision` says so."""


class Decision(enum.StrEnum):
    """What the gateway may do after a failed call (Hyperswitch's error-code table)."""

    RETRY = "retry"
    """Safe to repeat the same call at the same channel (the adapter already did, with
    tenacity; the gateway only sees this when retries were exhausted)."""
    FAILOVER = "failover"
    """Nothing was created at this channel; another channel may be tried."""
    FINAL = "final"
    """A definitive answer for this payment; do not try elsewhere."""


@dataclass(frozen=True, slots=True)
class NextAction:
    type: str  # "qr_code" | "redirect"
    url: str


@dataclass(frozen=True, slots=True)
class ChannelResult:
    """What one channel call (or one notification) established."""

    outcome: Outcome
    decision: Decision = Decision.FINAL
    channel_code: str | None = None
    """The channel's own raw code (`SUCCESS`, `10000`/`ACQ.TRADE_NOT_EXIST`, `00`, `51`...)."""
    channel_message: str | None = None
    channel_trade_no: str | None = None
    """The channel's own transaction id for a payment (or refund id for a refund)."""
    next_action: NextAction | None = None
    amount: int | None = None
    """The amount the channel reports, in minor units, when it reports one."""
    currency: str | None = None
    """The currency the channel reports (ISO 4217), when it reports one. A SUCCEEDED result for
    a payment or a refund must carry `amount` and `currency`: the gateway refuses (and alerts on)
    a success whose amount or currency is missing or differs from its own."""
    paid_at: datetime | None = None
    order_may_exist: bool = False
    """With SYSTEM_ERROR + FAILOVER on a create: the channel's own answer (WeChat SYSTEM_ERROR,
    Alipay 20000 …) leaves open whether it created the order, though the payer never got a way
    to pay it. The gateway fails over and closes this order at the channel (best effort,
    retried by the status sync), never leaves it open."""
    watch_until: datetime | None = None
    """On a close that the channel cannot carry out (UnionPay has no close of an unpaid QR
    order; an Alipay QR code nobody scanned has no trade to close): SUCCEEDED, and the order
    stays payable at the channel until this moment. The gateway closes the payment and keeps
    querying the order until then; a payment in that time is a late payment."""
    needs_operator: bool = False
    """Money may have moved, but the channel reports neither success nor failure (WeChat
    REFUND.ABNORMAL, UnionPay origRespCode 42/45): never mapped to FAILED. The outcome is
    WAITING; the gateway records it for an operator and keeps the payment or refund open."""
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CreatePayment:
    channel_order_id: str
    amount: int
    currency: str
    method: str  # card | wechat_qr | alipay_qr | unionpay_qr
    description: str
    notify_url: str
    """Where the channel must send its asynchronous notification (the gateway's
    `/notify/{channel name}`)."""
    expires_at: datetime
    payer_ip: str | None = None
    return_url: str | None = None


@dataclass(frozen=True, slots=True)
class CreateRefund:
    channel_order_id: str
    channel_refund_id: str
    amount: int
    total_amount: int
    currency: str
    notify_url: str
    reason: str | None = None


class NotificationKind(enum.StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified channel notification, reduced to what the gateway applies."""

    kind: NotificationKind
    channel_order_id: str
    result: ChannelResult
    channel_refund_id: str | None = None
    notification_id: str | None = None
    """The channel's own id of this notification (WeChat's `id`, Alipay's `notify_id`), where
    the protocol has one: the gateway applies each id once. Notifications older than the
    channel's own window are refused by the adapter where the protocol carries a timestamp."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The HTTP answer a channel expects to its notification."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"


class StatementKind(enum.StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One line of a channel's daily statement, in the gateway's terms."""

    kind: StatementKind
    channel_order_id: str
    channel_trade_no: str | None
    amount: int
    status: str  # "succeeded" | "refunded" | "failed" | ... as the channel states it, lowered
    channel_refund_id: str | None = None
    fee: int | None = None
    occurred_at: datetime | None = None


class StatementUnavailable(RuntimeError):
    """The channel did not deliver the statement (not ready, refused, unreachable, or a file
    that failed its checks). Reconciliation handles it the same way for every channel."""


class NotificationRejected(Exception):
    """A notification failed verification (bad signature, unknown certificate, bad decrypt)
    or could not be parsed. It must be logged and never applied."""


class ResponseVerificationError(Exception):
    """A statement file whose signature (or signed hash) did not verify, or whose lines
    contradict its own totals: `download_statement` raises it, and nothing it holds is used.
    (An API answer that cannot be trusted is not an exception: it makes the call UNKNOWN, see
    `adapters.kernel`.)"""


@dataclass(frozen=True, slots=True)
class IncomingRequest:
    """The parts of an HTTP notification request an adapter needs, free of any web framework."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str


class ChannelAdapter(abc.ABC):
    """One channel instance (a row of `channels:` in the routing file).

    Implementations must be safe for concurrent use, keep their keys loaded once, and never log
    secrets. Every call returns a `ChannelResult`; exceptions are for programming errors only
    (and `NotificationRejected` from `parse_notification`).
    """

    adapter: str  # "bank" | "wechat" | "alipay" | "unionpay"

    def __init__(self, name: str) -> None:
        self.name = name

    def channel_order_id(self, payment_id: str, seq: int) -> str:
        """The order id this channel will know attempt `seq` of a payment by. Channels whose
        order ids allow fewer characters (UnionPay: 8-40 letters and digits) override it."""
        return f"{payment_id}_{seq}"

    def channel_refund_id(self, refund_id: str) -> str:
        """The refund id this channel will know a refund by (see `channel_order_id`)."""
        return refund_id

    @abc.abstractmethod
    async def create_payment(self, req: CreatePayment) -> ChannelResult: ...

    @abc.abstractmethod
    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        """SUCCEEDED (paid), FAILED (closed / cancelled / not existing after creation),
        WAITING (not yet paid), UNKNOWN (timeout or could not tell)."""

    @abc.abstractmethod
    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        """SUCCEEDED when the order is closed at the channel; FAILED with the channel's code
        when it refuses (e.g. already paid: the caller should query); UNKNOWN on timeout."""

    @abc.abstractmethod
    async def refund(self, req: CreateRefund) -> ChannelResult:
        """SUCCEEDED, FAILED (definitive refusal), WAITING (processing), UNKNOWN."""

    @abc.abstractmethod
    async def query_refund(
        self, channel_order_id: str, channel_refund_id: str
    ) -> ChannelResult: ...

    @abc.abstractmethod
    def parse_notification(self, request: IncomingRequest) -> Notification:
        """Verify and parse a notification. Raises `NotificationRejected`."""

    @abc.abstractmethod
    def ack(self, accepted: bool) -> Ack:
        """The channel's own acknowledgement (accepted=False asks it to send again)."""

    @abc.abstractmethod
    def download_statement(self, day: date) -> AsyncIterator[StatementLine]:
        """Stream the channel's statement for one day (do not load it whole)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release anything the adapter holds beyond the shared HTTP session."""


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What the gateway gives every adapter it builds."""

    http: aiohttp.ClientSession
    config_dir: str
    """Directory that relative key/certificate paths in credentials resolve against."""
