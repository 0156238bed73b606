"""One driver per channel: what the contract scenarios need to know about it, as data, and the
channel-specific acts (forging a notification, breaking the adapter's trust), written with
`cryptography` directly rather than with the channel's `protocol.py`, so that a misreading of
the protocol shared by adapter and simulator is not repeated here.

A scenario never asks which channel it runs against: where channels behave differently, the
driver says what to expect (an `Expect` of outcome, decision and the channel's code, a
capability flag, a vocabulary).
"""

from __future__ import annotations

import abc
import base64
import functools
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from adapters.base import (
    Ack,
    ChannelAdapter,
    Decision,
    IncomingRequest,
    Outcome,
    ResponseVerificationError,
    StatementUnavailable,
)

if TYPE_CHECKING:
    from tests.contract.conftest import Channel

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
KEYS = CONFIG_DIR / "keys"
CHINA = timezone(timedelta(hours=8))

Expect = tuple[Outcome, Decision, str | None]
"""What a call should answer: `(outcome, decision, channel_code)` of its ChannelResult."""

WAITING, SUCCEEDED, FAILED = Outcome.WAITING, Outcome.SUCCEEDED, Outcome.FAILED
UNKNOWN, SYSTEM_ERROR = Outcome.UNKNOWN, Outcome.SYSTEM_ERROR
RETRY, FAILOVER, FINAL = Decision.RETRY, Decision.FAILOVER, Decision.FINAL


# ---- key material, read with cryptography directly ----------------------------------------


@functools.cache
def private_key(relative: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((KEYS / relative).read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.cache
def certificate(relative: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((KEYS / relative).read_bytes())


@functools.cache
def foreign_key() -> rsa.RSAPrivateKey:
    """A key nobody trusts (made once per run: RSA key generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def rsa_sha256(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_public(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def self_signed(
    key: rsa.RSAPrivateKey, common_name: str, serial: int | None = None
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def form_fields(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("ascii"), keep_blank_values=True))


def header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def without_header(headers: Mapping[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != name.lower()}


@dataclass(frozen=True, slots=True)
class StatementFault:
    """A status the simulator's statement can be told to report for a paid order, in the
    channel's vocabulary, and the status the adapter's statement line then carries."""

    channel_status: str
    line_status: str


class Driver(abc.ABC):
    """What the contract scenarios need of one channel. Subclasses set every attribute."""

    name: ClassVar[str]
    method: ClassVar[str]
    other_method: ClassVar[str]
    """A payment method this channel does not take."""
    other_merchant: ClassVar[str]
    """A merchant id (app id) that is not the one the adapter is configured with."""
    notify_schedule_s: ClassVar[tuple[float, ...]]
    """The channel's notification retry schedule, before the simulators' time scale."""
    notification_content_type: ClassVar[str]
    per_delivery_fields: ClassVar[frozenset[str]]
    """Raw notification fields the channel sets afresh on every delivery of one event."""

    # the payer page and the simulator's order book
    next_action_type: ClassVar[str]
    payer_path: ClassVar[str]
    """Where the payer page lives below the simulator root."""
    payer_url_names_order: ClassVar[bool]
    """True when the payer page's URL ends in the order id (else in a token)."""
    payer_status_field: ClassVar[str]
    """The payer page's JSON member that says the order's state."""
    payer_paid: ClassVar[str]
    payer_cancelled: ClassVar[str]
    payer_closed: ClassVar[str]
    cancel_page_text: ClassVar[str]
    """What the HTML page says after the payer pressed cancel."""
    sim_waiting: ClassVar[str]
    sim_paid: ClassVar[str]
    sim_closed: ClassVar[str]

    # create and query
    created: ClassVar[Expect]
    create_gives_trade_no: ClassVar[bool]
    """Whether the create's answer carries the channel's transaction id."""
    repeat_create: ClassVar[Expect]
    repeat_create_same_answer: ClassVar[bool]
    """Whether a repeated create answers with the same payer URL and transaction id."""
    conflicting_create: ClassVar[Expect]
    """The same order id again with another amount."""
    create_after_paid: ClassVar[Expect]
    waiting_query: ClassVar[Expect]
    waiting_query_has_amount: ClassVar[bool]
    waiting_query_has_trade_no: ClassVar[bool]
    paid_query: ClassVar[Expect]
    unknown_query: ClassVar[Expect]
    other_method_create: ClassVar[Expect]
    unsupported_currency_create: ClassVar[Expect]
    """A create in a currency no channel takes (XTS, ISO 4217's code for tests)."""

    # cancel and close
    cancel_notifies: ClassVar[bool]
    """Whether the channel notifies a payer's cancel (with `cancelled_query`'s result)."""
    cancelled_query: ClassVar[Expect]
    close_after_cancel: ClassVar[Expect]
    closed: ClassVar[Expect]
    closed_again: ClassVar[Expect]
    closed_query: ClassVar[Expect]
    create_after_close: ClassVar[Expect]
    close_paid: ClassVar[Expect]
    close_unknown: ClassVar[Expect]
    """A close of an order id the channel never saw."""
    create_after_close_unknown: ClassVar[Expect]

    # refunds
    refund_accepted: ClassVar[Expect]
    refund_has_own_trade_no: ClassVar[bool]
    """Whether a refund's channel_trade_no is its own (not the payment's)."""
    refund_notification_has_amount: ClassVar[bool]
    refund_query: ClassVar[Expect]
    """A completed refund, by query and by notification."""
    refund_repeated: ClassVar[Expect]
    partly_refunded_query: ClassVar[Expect]
    refund_discordant: ClassVar[Expect]
    """The same refund id again with another amount."""
    refund_too_much: ClassVar[Expect]
    fully_refunded_query: ClassVar[Expect]
    refund_after_full: ClassVar[Expect]
    unknown_refund_query: ClassVar[Expect]
    refund_unpaid: ClassVar[Expect]
    refund_unknown_order: ClassVar[Expect]

    # faults (attempts: the requests one call sends, retries included)
    error_create: ClassVar[Expect]
    error_create_attempts: ClassVar[int]
    error_query: ClassVar[Expect]
    error_query_attempts: ClassVar[int]
    error_refund: ClassVar[Expect]
    timeout_create: ClassVar[Expect]
    timeout_refund: ClassVar[Expect]
    refused_create: ClassVar[Expect]
    refused_query: ClassVar[Expect]
    dropped_create: ClassVar[Expect]
    dropped_create_attempts: ClassVar[int]
    dropped_query: ClassVar[Expect]
    dropped_refund: ClassVar[Expect]
    bad_gateway_create: ClassVar[Expect]
    """An unsigned HTTP 502 from a front door, on every request."""
    bad_gateway_create_attempts: ClassVar[int]
    bad_gateway_query: ClassVar[Expect]
    bad_gateway_refund: ClassVar[Expect]
    unsigned_refusals: ClassVar[tuple[tuple[int, Expect, int], ...]]
    """An unsigned 401, 403 or 429 from a front door on every request: (the status, what a
    create gets, how many requests it sent)."""
    untrusted_create: ClassVar[Expect]
    untrusted_query: ClassVar[Expect]
    untrusted_close: ClassVar[Expect]
    untrusted_refund: ClassVar[Expect]
    untrusted_log_event: ClassVar[str]
    untrusted_statement_error: ClassVar[type[Exception]]
    wrong_key_create: ClassVar[Expect]

    # notifications
    ack_accepted: ClassVar[Ack]
    ack_refused: ClassVar[Ack]

    # statements
    statement_paid_status: ClassVar[str]
    statement_refund_statuses: ClassVar[frozenset[str]]
    statement_status_fault: ClassVar[StatementFault]
    future_statement_unavailable: ClassVar[bool]

    # configuration
    private_key_field: ClassVar[str]
    """The config member naming the merchant's private key file."""
    bad_configs: ClassVar[tuple[tuple[dict[str, Any], str], ...]]
    """Channel-specific configs the adapter refuses: (overrides, a fragment of the error)."""
    inline_secrets: ClassVar[tuple[tuple[dict[str, Any], str, str], ...]]
    """Refused configs with a secret inline: (overrides, a fragment of the error, the member
    holding the secret, which must not appear in any error)."""

    @abc.abstractmethod
    def config(self, base_url: str) -> dict[str, Any]:
        """The adapter's `config:` for a simulator at `base_url`."""

    @abc.abstractmethod
    def fee(self, amount: int) -> int:
        """The channel's fee on a payment, as its statement carries it."""

    @abc.abstractmethod
    def amount_text(self, amount: int) -> str:
        """How the payer page shows an amount."""

    @abc.abstractmethod
    def paid_answer(self, order_id: str, view: Mapping[str, Any]) -> dict[str, Any]:
        """The payer page's JSON answer to a successful payment (`view`: the order)."""

    def notify_retry_after_s(self, scale: float) -> float:
        """When the simulator sends an unacknowledged notification again."""
        return self.notify_schedule_s[0] * scale

    # ---- notifications, forged and tampered ----------------------------------------------
    @abc.abstractmethod
    def event_id(self, request: IncomingRequest) -> str | None:
        """The channel's id of the event a notification delivers (the same on every delivery
        of one event), or None when its notifications carry none."""

    @abc.abstractmethod
    def tamper_amount(self, request: IncomingRequest) -> IncomingRequest:
        """The notification with its amount changed to 1 fen, the signature left as it was."""

    @abc.abstractmethod
    def unsigned(self, request: IncomingRequest) -> IncomingRequest:
        """The notification without its signature."""

    @abc.abstractmethod
    def resign(
        self, request: IncomingRequest, *, foreign: bool = False, merchant: str | None = None
    ) -> IncomingRequest:
        """The notification signed afresh: with the channel's own (development) key, or with
        a key nobody trusts when `foreign`; addressed to `merchant` when given."""

    # ---- adapters the channel must refuse, or that must not believe it -------------------
    @abc.abstractmethod
    def wrong_merchant_key(self, tmp_path: Path) -> dict[str, Any]:
        """Config overrides that sign the adapter's requests with a key the channel does not
        know."""

    @abc.abstractmethod
    async def distrustful_adapter(self, channel: Channel, tmp_path: Path) -> ChannelAdapter:
        """An adapter that cannot verify the channel's answers (it trusts another key, or the
        answers are altered on the way), talking to the real simulator."""


# ---- bank -------------------------------------------------------------------------------------


class BankDriver(Driver):
    name = "bank"
    method = "card"
    other_method = "wechat_qr"
    notify_schedule_s = (15, 60, 300, 1800, 3600, 21600)
    merchant_id = "M100200300"
    other_merchant = "M999"
    notification_content_type = "application/json"
    per_delivery_fields = frozenset({"notify_time"})

    next_action_type = "redirect"
    payer_path = "/pay/"
    payer_url_names_order = True
    payer_status_field = "status"
    payer_paid, payer_cancelled, payer_closed = "SUCCESS", "FAILED", "CLOSED"
    cancel_page_text = "Customer cancellation (17)"
    sim_waiting, sim_paid, sim_closed = "CREATED", "SUCCESS", "CLOSED"

    created = (WAITING, RETRY, "09")
    create_gives_trade_no = True
    repeat_create = (WAITING, RETRY, "09")
    repeat_create_same_answer = True
    conflicting_create = (FAILED, FINAL, "94")
    create_after_paid = (SUCCEEDED, FINAL, "00")
    waiting_query = (WAITING, RETRY, "09")
    waiting_query_has_amount = True
    waiting_query_has_trade_no = True
    paid_query = (SUCCEEDED, FINAL, "00")
    unknown_query = (FAILED, FINAL, "25")
    other_method_create = (SYSTEM_ERROR, FAILOVER, "UNSUPPORTED_METHOD")
    unsupported_currency_create = (FAILED, FINAL, "30")

    cancel_notifies = True
    cancelled_query = (FAILED, FINAL, "17")
    close_after_cancel = (FAILED, FINAL, "17")
    closed = closed_again = (SUCCEEDED, FINAL, "CLOSED")
    closed_query = (FAILED, FINAL, "CLOSED")
    create_after_close = (FAILED, FINAL, "CLOSED")
    close_paid = (FAILED, FINAL, "12")
    close_unknown = (SUCCEEDED, FINAL, "CLOSED")
    create_after_close_unknown = (FAILED, FINAL, "12")  # the close reserved the number

    refund_accepted = (SUCCEEDED, FINAL, "00")
    refund_has_own_trade_no = True
    refund_notification_has_amount = True
    refund_query = refund_repeated = (SUCCEEDED, FINAL, "00")
    partly_refunded_query = fully_refunded_query = (SUCCEEDED, FINAL, "00")
    refund_discordant = (FAILED, FINAL, "94")
    refund_too_much = refund_after_full = (FAILED, FINAL, "13")
    unknown_refund_query = (FAILED, FINAL, "25")
    refund_unpaid = (FAILED, FINAL, "12")
    refund_unknown_order = (FAILED, FINAL, "25")

    error_create = (SYSTEM_ERROR, FAILOVER, "96")
    error_create_attempts = 1
    error_query = (UNKNOWN, RETRY, "96")
    error_query_attempts = 2
    error_refund = (SYSTEM_ERROR, RETRY, "96")
    timeout_create = timeout_refund = (UNKNOWN, RETRY, "TIMEOUT")
    refused_create = (SYSTEM_ERROR, FAILOVER, "CONNECTION_ERROR")
    refused_query = (UNKNOWN, RETRY, "CONNECTION_ERROR")
    dropped_create = dropped_query = (UNKNOWN, RETRY, "CONNECTION_DROPPED")
    dropped_create_attempts = 2
    dropped_refund = (UNKNOWN, RETRY, "CONNECTION_DROPPED")
    bad_gateway_create = bad_gateway_query = bad_gateway_refund = (UNKNOWN, RETRY, "HTTP_5XX")
    bad_gateway_create_attempts = 2
    unsigned_refusals = (
        (401, (SYSTEM_ERROR, FAILOVER, "HTTP_STATUS"), 1),
        (403, (SYSTEM_ERROR, FAILOVER, "HTTP_STATUS"), 1),
        (429, (SYSTEM_ERROR, FAILOVER, "HTTP_STATUS"), 2),
    )
    untrusted_create = untrusted_query = untrusted_close = untrusted_refund = (
        UNKNOWN,
        RETRY,
        "INVALID_SIGNATURE",
    )
    untrusted_log_event = "bank_response_signature_invalid"
    untrusted_statement_error = ResponseVerificationError
    wrong_key_create = (SYSTEM_ERROR, FAILOVER, "63")

    ack_accepted = Ack(200, b'{"code":"SUCCESS"}', "application/json")
    ack_refused = Ack(500, b'{"code":"FAIL","message":"not accepted"}', "application/json")

    statement_paid_status = "succeeded"
    statement_refund_statuses = frozenset({"succeeded"})
    statement_status_fault = StatementFault("FAILED", "failed")
    future_statement_unavailable = True

    private_key_field = "merchant_private_key"
    bad_configs = (({"merchant_id": ""}, "merchant_id"),)
    inline_secrets = ()

    def config(self, base_url: str) -> dict[str, Any]:
        return {
            "base_url": base_url,
            "merchant_id": self.merchant_id,
            "merchant_private_key": "keys/bank/merchant_private.pem",
            "bank_public_key": "keys/bank/bank_public.pem",
        }

    def paid_answer(self, order_id: str, view: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "message": "Payment approved.",
            "order_no": order_id,
            "status": "SUCCESS",
            "resp_code": "00",
            "return_url": "https://shop.example/done",
        }

    def amount_text(self, amount: int) -> str:
        return f"CNY {amount // 100}.{amount % 100:02d}"

    def fee(self, amount: int) -> int:
        return (amount * 6 + 500) // 1000  # 0.6 %, half up

    def event_id(self, request: IncomingRequest) -> str | None:
        return str(json.loads(request.body)["notify_id"])

    def tamper_amount(self, request: IncomingRequest) -> IncomingRequest:
        data = json.loads(request.body)
        data["amount"] = 1
        return replace(request, body=json.dumps(data, separators=(",", ":")).encode())

    def unsigned(self, request: IncomingRequest) -> IncomingRequest:
        return replace(request, headers=without_header(request.headers, "X-Bank-Signature"))

    def resign(
        self, request: IncomingRequest, *, foreign: bool = False, merchant: str | None = None
    ) -> IncomingRequest:
        body = request.body
        addressee = self.merchant_id
        if merchant is not None:
            data = json.loads(body)
            data["merchant_id"] = addressee = merchant
            body = json.dumps(data, separators=(",", ":")).encode()
        key = foreign_key() if foreign else private_key("bank/bank_private.pem")
        timestamp, nonce = str(int(time.time())), secrets.token_urlsafe(24)
        # NOTIFY \n merchant \n timestamp \n nonce \n body \n, SHA256withRSA
        message = b"NOTIFY\n%s\n%s\n%s\n%s\n" % (
            addressee.encode(),
            timestamp.encode(),
            nonce.encode(),
            body,
        )
        headers = {
            "Content-Type": "application/json",
            "X-Bank-Timestamp": timestamp,
            "X-Bank-Nonce": nonce,
            "X-Bank-Signature": rsa_sha256(key, message),
        }
        return replace(request, headers=headers, body=body)

    def wrong_merchant_key(self, tmp_path: Path) -> dict[str, Any]:
        return {"merchant_private_key": write(tmp_path, "other.pem", pem_private(foreign_key()))}

    async def distrustful_adapter(self, channel: Channel, tmp_path: Path) -> ChannelAdapter:
        pem = write(tmp_path, "not_the_bank.pem", pem_public(foreign_key()))
        return channel.build(bank_public_key=pem)


# ---- wechat -----------------------------------------------------------------------------------


class WechatDriver(Driver):
    name = "wechat"
    method = "wechat_qr"
    other_method = "alipay_qr"
    notify_schedule_s = (
        15,
        15,
        30,
        180,
        600,
        1200,
        1800,
        1800,
        1800,
        3600,
        10800,
        10800,
        10800,
        21600,
        21600,
    )
    mchid = "1900000109"
    other_merchant = "1900000999"
    notification_content_type = "application/json"
    per_delivery_fields = frozenset()

    next_action_type = "qr_code"
    payer_path = "/qr/"
    payer_url_names_order = False
    payer_status_field = "trade_state"
    payer_paid, payer_cancelled, payer_closed = "SUCCESS", "PAYERROR", "CLOSED"
    cancel_page_text = "PAYERROR"
    sim_waiting, sim_paid, sim_closed = "NOTPAY", "SUCCESS", "CLOSED"

    created = (WAITING, FINAL, "SUCCESS")
    create_gives_trade_no = False
    repeat_create = (WAITING, FINAL, "SUCCESS")
    repeat_create_same_answer = True
    conflicting_create = (FAILED, FINAL, "OUT_TRADE_NO_USED")
    create_after_paid = (FAILED, FINAL, "ORDERPAID")
    waiting_query = (WAITING, FINAL, "NOTPAY")
    waiting_query_has_amount = True
    waiting_query_has_trade_no = False
    paid_query = (SUCCEEDED, FINAL, "SUCCESS")
    unknown_query = (FAILED, FINAL, "ORDER_NOT_EXIST")
    other_method_create = (SYSTEM_ERROR, FAILOVER, "METHOD_NOT_SUPPORTED")
    unsupported_currency_create = (FAILED, FINAL, "PARAM_ERROR")

    cancel_notifies = False  # WeChat Pay notifies successes only
    cancelled_query = (FAILED, FINAL, "PAYERROR")
    close_after_cancel = (SUCCEEDED, FINAL, "CLOSED")
    closed = closed_again = (SUCCEEDED, FINAL, "CLOSED")
    closed_query = (FAILED, FINAL, "CLOSED")
    create_after_close = (FAILED, FINAL, "ORDER_CLOSED")
    close_paid = (FAILED, FINAL, "ORDERPAID")
    close_unknown = (FAILED, FINAL, "ORDER_NOT_EXIST")
    create_after_close_unknown = (WAITING, FINAL, "SUCCESS")

    refund_accepted = (WAITING, FINAL, "PROCESSING")
    refund_has_own_trade_no = True
    refund_notification_has_amount = True
    refund_query = refund_repeated = (SUCCEEDED, FINAL, "SUCCESS")
    partly_refunded_query = fully_refunded_query = (SUCCEEDED, FINAL, "REFUND")
    refund_discordant = (FAILED, FINAL, "INVALID_REQUEST")
    refund_too_much = refund_after_full = (FAILED, FINAL, "INVALID_REQUEST")
    unknown_refund_query = (FAILED, FINAL, "RESOURCE_NOT_EXISTS")
    refund_unpaid = (FAILED, FINAL, "INVALID_REQUEST")
    refund_unknown_order = (FAILED, FINAL, "RESOURCE_NOT_EXISTS")

    error_create = (SYSTEM_ERROR, FAILOVER, "SYSTEM_ERROR")
    error_create_attempts = 1  # a signed system error on a create fails over at once
    error_query = (UNKNOWN, RETRY, "SYSTEM_ERROR")
    error_query_attempts = 3
    error_refund = (UNKNOWN, RETRY, "SYSTEM_ERROR")
    timeout_create = timeout_refund = (UNKNOWN, RETRY, "TIMEOUT")
    refused_create = (SYSTEM_ERROR, FAILOVER, "CONNECTION_REFUSED")
    refused_query = (UNKNOWN, RETRY, "CONNECTION_REFUSED")
    dropped_create = dropped_query = (UNKNOWN, RETRY, "CONNECTION_ERROR")
    dropped_create_attempts = 3  # retried: a create is idempotent by out_trade_no
    dropped_refund = (UNKNOWN, RETRY, "CONNECTION_ERROR")
    # an unsigned 5xx may come after WeChat Pay acted: repeated (idempotent), then UNKNOWN
    bad_gateway_create = bad_gateway_query = bad_gateway_refund = (UNKNOWN, RETRY, "HTTP_5XX")
    bad_gateway_create_attempts = 3
    unsigned_refusals = (
        (401, (SYSTEM_ERROR, FAILOVER, "SIGN_ERROR"), 1),  # WeChat Pay's unsigned 401
        (403, (SYSTEM_ERROR, FAILOVER, "HTTP_STATUS"), 1),
        (429, (SYSTEM_ERROR, FAILOVER, "FREQUENCY_LIMITED"), 3),
    )
    untrusted_create = untrusted_query = untrusted_close = untrusted_refund = (
        UNKNOWN,
        RETRY,
        "INVALID_SIGNATURE",
    )
    untrusted_log_event = "wechat_bad_response_signature"
    untrusted_statement_error = StatementUnavailable
    wrong_key_create = (SYSTEM_ERROR, FAILOVER, "SIGN_ERROR")

    ack_accepted = Ack(200, b"", "text/plain")
    ack_refused = Ack(500, '{"code":"FAIL","message":"失败"}'.encode(), "application/json")

    statement_paid_status = "success"
    statement_refund_statuses = frozenset({"success"})
    statement_status_fault = StatementFault("REVOKED", "revoked")
    future_statement_unavailable = True

    private_key_field = "merchant_private_key_path"
    bad_configs = (
        ({"merchant_cert_serial_no": "ABCDEF"}, "does not match"),
        ({"apiv3_key": "short", "apiv3_key_path": None}, "32 bytes"),
        ({"merchant_cert_path": None}, "merchant_cert_serial_no"),
        ({"platform_cert_path": "keys/wechat/nope.pem"}, "platform_cert_path"),
    )
    # both the inline key and the key file
    inline_secrets = (
        ({"apiv3_key": "S3cretS3cretS3cretS3cretS3cret!!"}, "exactly one", "apiv3_key"),
    )

    def config(self, base_url: str) -> dict[str, Any]:
        return {
            "base_url": base_url,
            "mchid": self.mchid,
            "appid": "wxd678efh567hg6787",
            "merchant_private_key_path": "keys/wechat/apiclient_key.pem",
            "merchant_cert_path": "keys/wechat/apiclient_cert.pem",
            "platform_cert_path": "keys/wechat/platform_cert.pem",
            "apiv3_key_path": "keys/wechat/apiv3_key.txt",
        }

    def amount_text(self, amount: int) -> str:
        return f"{amount // 100}.{amount % 100:02d}"

    def paid_answer(self, order_id: str, view: Mapping[str, Any]) -> dict[str, Any]:
        return {"out_trade_no": order_id, "trade_state": "SUCCESS"}

    def fee(self, amount: int) -> int:
        return (amount * 6 + 500) // 1000  # 0.60 %, to the fen

    @staticmethod
    def apiv3_key() -> bytes:
        return (KEYS / "wechat" / "apiv3_key.txt").read_text().strip().encode()

    def event_id(self, request: IncomingRequest) -> str | None:
        return str(json.loads(request.body)["id"])

    def open(self, body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
        envelope = json.loads(body)
        res = envelope["resource"]
        plain = AESGCM(self.apiv3_key()).decrypt(
            res["nonce"].encode(),
            base64.b64decode(res["ciphertext"]),
            res["associated_data"].encode(),
        )
        return envelope, json.loads(plain)

    def seal(
        self, envelope: dict[str, Any], resource: dict[str, Any], apiv3_key: bytes | None = None
    ) -> bytes:
        """A notification body: `envelope` with `resource` encrypted (AEAD_AES_256_GCM) with
        the APIv3 key (the development one unless given)."""
        res = envelope["resource"]
        nonce = secrets.token_hex(6)
        plain = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        sealed = AESGCM(apiv3_key or self.apiv3_key()).encrypt(
            nonce.encode(), plain, res["associated_data"].encode()
        )
        envelope = {
            **envelope,
            "resource": {**res, "nonce": nonce, "ciphertext": base64.b64encode(sealed).decode()},
        }
        return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()

    def tamper_amount(self, request: IncomingRequest) -> IncomingRequest:
        envelope, resource = self.open(request.body)
        amount = resource["amount"]
        if "refund" in amount:
            amount["refund"] = 1
        else:
            amount["total"] = amount["payer_total"] = 1
        return replace(request, body=self.seal(envelope, resource))

    def unsigned(self, request: IncomingRequest) -> IncomingRequest:
        return replace(request, headers=without_header(request.headers, "Wechatpay-Signature"))

    def resign(
        self, request: IncomingRequest, *, foreign: bool = False, merchant: str | None = None
    ) -> IncomingRequest:
        body = request.body
        if merchant is not None:
            envelope, resource = self.open(body)
            resource["mchid"] = merchant
            body = self.seal(envelope, resource)
        key = foreign_key() if foreign else private_key("wechat/platform_key.pem")
        return self.signed(request, body, key)

    def signed(
        self,
        request: IncomingRequest,
        body: bytes,
        key: rsa.RSAPrivateKey,
        timestamp: int | None = None,
    ) -> IncomingRequest:
        """`request` with `body`, signed by `key` at `timestamp` (now unless given)."""
        stamp, nonce = str(timestamp or int(time.time())), secrets.token_hex(16)
        # TIMESTAMP \n NONCE \n BODY \n, SHA256withRSA; the serial names the platform
        # certificate (a forger claims the real one)
        message = f"{stamp}\n{nonce}\n".encode() + body + b"\n"
        headers = {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": stamp,
            "Wechatpay-Nonce": nonce,
            "Wechatpay-Signature": rsa_sha256(key, message),
            "Wechatpay-Serial": header(request.headers, "Wechatpay-Serial") or "",
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        }
        return replace(request, headers=headers, body=body)

    def wrong_merchant_key(self, tmp_path: Path) -> dict[str, Any]:
        serial = format(certificate("wechat/apiclient_cert.pem").serial_number, "X")
        return {
            "merchant_private_key_path": write(tmp_path, "other.pem", pem_private(foreign_key())),
            "merchant_cert_path": None,
            "merchant_cert_serial_no": serial,
        }

    async def distrustful_adapter(self, channel: Channel, tmp_path: Path) -> ChannelAdapter:
        # a certificate with the platform's serial but another key
        serial = certificate("wechat/platform_cert.pem").serial_number
        impostor = self_signed(foreign_key(), "impostor", serial)
        pem = write(tmp_path, "impostor.pem", impostor.public_bytes(serialization.Encoding.PEM))
        return channel.build(platform_cert_path=pem)


# ---- alipay -----------------------------------------------------------------------------------


class AlipayDriver(Driver):
    name = "alipay"
    method = "alipay_qr"
    other_method = "wechat_qr"
    notify_schedule_s = (240, 600, 600, 3600, 7200, 21600, 54000)
    app_id = "2021000000000001"
    other_merchant = "2021999999999999"
    notification_content_type = "application/x-www-form-urlencoded"
    per_delivery_fields = frozenset({"notify_time"})

    next_action_type = "qr_code"
    payer_path = "/qr/"
    payer_url_names_order = False
    payer_status_field = "trade_status"
    payer_paid, payer_cancelled, payer_closed = "TRADE_SUCCESS", "TRADE_CLOSED", "TRADE_CLOSED"
    cancel_page_text = "TRADE_CLOSED"
    sim_waiting, sim_paid, sim_closed = "WAIT_BUYER_PAY", "TRADE_SUCCESS", "TRADE_CLOSED"

    created = (WAITING, FINAL, "10000")
    create_gives_trade_no = False
    repeat_create = (WAITING, FINAL, "10000")
    repeat_create_same_answer = True
    conflicting_create = (FAILED, FINAL, "ACQ.CONTEXT_INCONSISTENT")
    create_after_paid = (SUCCEEDED, FINAL, "TRADE_SUCCESS")  # paid already: says so
    waiting_query = (WAITING, FINAL, "WAIT_BUYER_PAY")
    waiting_query_has_amount = True
    waiting_query_has_trade_no = True
    paid_query = (SUCCEEDED, FINAL, "TRADE_SUCCESS")
    # the real Alipay creates a trade when the payer scans: unknown until then
    unknown_query = (WAITING, RETRY, "ACQ.TRADE_NOT_EXIST")
    other_method_create = (SYSTEM_ERROR, FAILOVER, "UNSUPPORTED")
    unsupported_currency_create = (SYSTEM_ERROR, FAILOVER, "UNSUPPORTED")

    cancel_notifies = True
    cancelled_query = (FAILED, FINAL, "TRADE_CLOSED")
    close_after_cancel = (SUCCEEDED, FINAL, "TRADE_CLOSED")
    closed = (SUCCEEDED, FINAL, "10000")
    closed_again = (SUCCEEDED, FINAL, "TRADE_CLOSED")
    closed_query = (FAILED, FINAL, "TRADE_CLOSED")
    create_after_close = (FAILED, FINAL, "ACQ.TRADE_HAS_CLOSE")
    close_paid = (FAILED, FINAL, "ACQ.TRADE_STATUS_ERROR")
    close_unknown = (SUCCEEDED, FINAL, "ACQ.TRADE_NOT_EXIST")
    create_after_close_unknown = (WAITING, FINAL, "10000")

    refund_accepted = (SUCCEEDED, FINAL, "10000")
    refund_has_own_trade_no = False  # Alipay's refund answers carry the trade's trade_no
    refund_notification_has_amount = False  # it carries the total refunded (refund_fee)
    refund_query = refund_repeated = (SUCCEEDED, FINAL, "REFUND_SUCCESS")
    partly_refunded_query = (SUCCEEDED, FINAL, "TRADE_SUCCESS")
    fully_refunded_query = (SUCCEEDED, FINAL, "TRADE_CLOSED")
    refund_discordant = (FAILED, FINAL, "ACQ.DISCORDANT_REPEAT_REQUEST")
    refund_too_much = (FAILED, FINAL, "ACQ.REASON_TRADE_REFUND_FEE_ERR")
    refund_after_full = (FAILED, FINAL, "ACQ.TRADE_HAS_CLOSE")
    unknown_refund_query = (FAILED, RETRY, "REFUND_NOT_EXIST")
    refund_unpaid = (FAILED, FINAL, "ACQ.TRADE_STATUS_ERROR")
    refund_unknown_order = (FAILED, FINAL, "ACQ.TRADE_NOT_EXIST")

    error_create = (SYSTEM_ERROR, FAILOVER, "isp.unknow-error")
    error_create_attempts = 1
    error_query = (UNKNOWN, RETRY, "isp.unknow-error")
    error_query_attempts = 2
    error_refund = (UNKNOWN, RETRY, "isp.unknow-error")
    timeout_create = timeout_refund = (UNKNOWN, RETRY, "TIMEOUT")
    refused_create = (SYSTEM_ERROR, FAILOVER, "CONNECT_ERROR")
    refused_query = (UNKNOWN, RETRY, "CONNECT_ERROR")
    dropped_create = dropped_query = (UNKNOWN, RETRY, "CONNECTION_DROPPED")
    dropped_create_attempts = 2  # retried: a precreate is idempotent by out_trade_no
    dropped_refund = (UNKNOWN, RETRY, "CONNECTION_DROPPED")
    # an unsigned 5xx may come after Alipay acted (a front door that passed the request on)
    bad_gateway_create = bad_gateway_query = bad_gateway_refund = (UNKNOWN, RETRY, "HTTP_ERROR")
    bad_gateway_create_attempts = 2
    unsigned_refusals = (
        (401, (SYSTEM_ERROR, FAILOVER, "HTTP_ERROR"), 1),
        (403, (SYSTEM_ERROR, FAILOVER, "HTTP_ERROR"), 1),
        (429, (SYSTEM_ERROR, FAILOVER, "HTTP_ERROR"), 2),
    )
    untrusted_create = untrusted_query = untrusted_close = untrusted_refund = (
        UNKNOWN,
        RETRY,
        "INVALID_SIGNATURE",
    )
    untrusted_log_event = "alipay_response_signature_invalid"
    untrusted_statement_error = StatementUnavailable
    wrong_key_create = (SYSTEM_ERROR, FAILOVER, "isv.invalid-signature")

    ack_accepted = Ack(200, b"success")
    ack_refused = Ack(200, b"failure")

    statement_paid_status = "succeeded"
    statement_refund_statuses = frozenset({"succeeded"})
    statement_status_fault = StatementFault("TRADE_CLOSED", "trade_closed")
    future_statement_unavailable = True

    private_key_field = "app_private_key_path"
    bad_configs = (({"app_id": ""}, "app_id"),)
    inline_secrets = ()

    def config(self, base_url: str) -> dict[str, Any]:
        return {
            "base_url": base_url,
            "app_id": self.app_id,
            "app_private_key_path": "keys/alipay/app_private_key.pem",
            "alipay_public_key_path": "keys/alipay/alipay_public_key.pem",
        }

    def amount_text(self, amount: int) -> str:
        return f"{amount // 100}.{amount % 100:02d}"

    def paid_answer(self, order_id: str, view: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "out_trade_no": order_id,
            "trade_no": view["channel_trade_no"],
            "trade_status": "TRADE_SUCCESS",
        }

    def fee(self, amount: int) -> int:
        return (amount * 6 + 500) // 1000

    def event_id(self, request: IncomingRequest) -> str | None:
        return form_fields(request.body)["notify_id"]

    @staticmethod
    def _encode(fields: Mapping[str, str]) -> bytes:
        return urlencode(fields).encode()

    def tamper_amount(self, request: IncomingRequest) -> IncomingRequest:
        fields = form_fields(request.body)
        fields["total_amount"] = fields["receipt_amount"] = "0.01"
        return replace(request, body=self._encode(fields))

    def unsigned(self, request: IncomingRequest) -> IncomingRequest:
        fields = form_fields(request.body)
        del fields["sign"]
        return replace(request, body=self._encode(fields))

    def resign(
        self, request: IncomingRequest, *, foreign: bool = False, merchant: str | None = None
    ) -> IncomingRequest:
        fields = {k: v for k, v in form_fields(request.body).items() if k not in ("sign",)}
        if merchant is not None:
            fields["app_id"] = merchant
        fields["sign_type"] = "RSA2"
        # every non-empty parameter but sign and sign_type, sorted, raw values
        content = "&".join(
            f"{k}={fields[k]}" for k in sorted(fields) if k != "sign_type" and fields[k] != ""
        )
        key = foreign_key() if foreign else private_key("alipay/alipay_private_key.pem")
        fields["sign"] = rsa_sha256(key, content.encode())
        return replace(request, body=self._encode(fields))

    def wrong_merchant_key(self, tmp_path: Path) -> dict[str, Any]:
        return {"app_private_key_path": write(tmp_path, "other.pem", pem_private(foreign_key()))}

    async def distrustful_adapter(self, channel: Channel, tmp_path: Path) -> ChannelAdapter:
        return channel.build(alipay_public_key_path="keys/alipay/app_public_key.pem")


# ---- unionpay ---------------------------------------------------------------------------------


class UnionPayDriver(Driver):
    name = "unionpay"
    method = "unionpay_qr"
    other_method = "card"
    notify_schedule_s = (60, 120, 240, 480, 960)
    mer_id = "777290000000001"
    other_merchant = "777290000000999"
    notification_content_type = "application/x-www-form-urlencoded"
    per_delivery_fields = frozenset()

    next_action_type = "qr_code"
    payer_path = "/qr/"
    payer_url_names_order = True
    payer_status_field = "status"
    payer_paid, payer_cancelled, payer_closed = "PAID", "FAILED", "CLOSED"
    cancel_page_text = "FAILED"
    sim_waiting, sim_paid, sim_closed = "WAITING", "PAID", "CLOSED"

    created = (WAITING, FINAL, "00")
    create_gives_trade_no = False  # the real answer has no queryId
    # UnionPay refuses a repeated orderId (12): what that order is, a later query tells
    repeat_create = conflicting_create = create_after_paid = (UNKNOWN, RETRY, "12")
    repeat_create_same_answer = False
    waiting_query = (WAITING, RETRY, "05")
    waiting_query_has_amount = False
    waiting_query_has_trade_no = True
    paid_query = (SUCCEEDED, FINAL, "00")
    unknown_query = (FAILED, FINAL, "34")
    other_method_create = (SYSTEM_ERROR, FAILOVER, "UNSUPPORTED_METHOD")
    unsupported_currency_create = (SYSTEM_ERROR, FAILOVER, "UNSUPPORTED_CURRENCY")

    cancel_notifies = True
    cancelled_query = (FAILED, FINAL, "01")
    close_after_cancel = (SUCCEEDED, FINAL, "01")
    closed = (SUCCEEDED, FINAL, "00")
    closed_again = (SUCCEEDED, FINAL, "45")
    closed_query = (FAILED, FINAL, "45")
    create_after_close = (UNKNOWN, RETRY, "12")
    close_paid = (FAILED, FINAL, "ORDER_PAID")
    close_unknown = (SUCCEEDED, FINAL, "34")
    create_after_close_unknown = (WAITING, FINAL, "00")

    refund_accepted = (WAITING, RETRY, "00")
    refund_has_own_trade_no = True
    refund_notification_has_amount = True
    refund_query = refund_repeated = (SUCCEEDED, FINAL, "00")
    partly_refunded_query = fully_refunded_query = (SUCCEEDED, FINAL, "00")
    # answered 12, the adapter reports the refund that exists under that orderId
    refund_discordant = (SUCCEEDED, FINAL, "00")
    refund_too_much = refund_after_full = (FAILED, FINAL, "36")
    unknown_refund_query = (FAILED, FINAL, "34")
    refund_unpaid = refund_unknown_order = (FAILED, FINAL, "35")

    error_create = (SYSTEM_ERROR, FAILOVER, "96")
    error_create_attempts = 1
    error_query = (UNKNOWN, RETRY, "96")
    error_query_attempts = 2
    error_refund = (SYSTEM_ERROR, RETRY, "96")  # its query of the payment failed first
    timeout_create = (UNKNOWN, RETRY, "NO_ANSWER")
    # a refund starts with a query of the payment (for its queryId): that timed out, so the
    # refund was never sent
    timeout_refund = (SYSTEM_ERROR, RETRY, "NO_ANSWER")
    refused_create = (SYSTEM_ERROR, FAILOVER, "CONNECTION_FAILED")
    refused_query = (UNKNOWN, RETRY, "CONNECTION_FAILED")
    dropped_create = (UNKNOWN, RETRY, "NO_ANSWER")
    dropped_create_attempts = 1  # a repeated orderId would be refused: not repeated
    dropped_query = (UNKNOWN, RETRY, "NO_ANSWER")
    dropped_refund = (SYSTEM_ERROR, RETRY, "NO_ANSWER")
    bad_gateway_create = (UNKNOWN, RETRY, "HTTP_5XX")
    bad_gateway_create_attempts = 1  # not repeated, and left for the status sync to query
    bad_gateway_query = (UNKNOWN, RETRY, "HTTP_5XX")
    bad_gateway_refund = (SYSTEM_ERROR, RETRY, "HTTP_5XX")  # its query of the payment failed
    unsigned_refusals = (
        (401, (SYSTEM_ERROR, FAILOVER, "HTTP_STATUS"), 1),
        (403, (SYSTEM_ERROR, FAILOVER, "HTTP_STATUS"), 1),
        (429, (SYSTEM_ERROR, FAILOVER, "HTTP_STATUS"), 2),
    )
    untrusted_create = untrusted_query = untrusted_close = (UNKNOWN, RETRY, "INVALID_SIGNATURE")
    untrusted_refund = (SYSTEM_ERROR, RETRY, "INVALID_SIGNATURE")  # its query was not trusted
    untrusted_log_event = "unionpay_response_signature_invalid"
    untrusted_statement_error = StatementUnavailable
    wrong_key_create = (SYSTEM_ERROR, FAILOVER, "11")

    ack_accepted = Ack(200, b"ok")
    ack_refused = Ack(500, b"fail")

    statement_paid_status = "succeeded"
    statement_refund_statuses = frozenset({"succeeded"})
    statement_status_fault = StatementFault("01", "failed")
    future_statement_unavailable = False  # settleDate is MMDD: a later day of another year

    private_key_field = "sign_key_path"
    bad_configs = (
        ({"mer_id": "123"}, "mer_id"),
        ({"sign_cert_path": "keys/unionpay/unionpay_sign_cert.pem"}, "does not match"),
        ({"root_cert_path": "keys/unionpay/middle_ca.pem"}, "root"),
    )
    # a password for the development key, which is not encrypted: refused by the key file (a
    # YAML password of digits is a number, taken as its digits like every config string)
    inline_secrets = (
        (
            {"sign_key_password": "S3cret-pw"},
            "sign_key_path: not a readable private key",
            "sign_key_password",
        ),
        (
            {"sign_key_password": 987654321},
            "sign_key_path: not a readable private key",
            "sign_key_password",
        ),
    )
    signer_cn = "041@8310000000000001@中国银联股份有限公司@00000009"

    def config(self, base_url: str) -> dict[str, Any]:
        return {"base_url": base_url, "mer_id": self.mer_id}

    def amount_text(self, amount: int) -> str:
        return f"¥{amount // 100}.{amount % 100:02d}"

    def paid_answer(self, order_id: str, view: Mapping[str, Any]) -> dict[str, Any]:
        return {"orderId": order_id, "status": "PAID"}

    def fee(self, amount: int) -> int:
        return amount * 38 // 10_000  # 0.38 %

    def event_id(self, request: IncomingRequest) -> str | None:
        return None

    @staticmethod
    def _encode(fields: Mapping[str, str]) -> bytes:
        return urlencode(list(fields.items()), encoding="utf-8").encode("ascii")

    def tamper_amount(self, request: IncomingRequest) -> IncomingRequest:
        fields = form_fields(request.body)
        fields["txnAmt"] = "1"
        return replace(request, body=self._encode(fields))

    def unsigned(self, request: IncomingRequest) -> IncomingRequest:
        fields = form_fields(request.body)
        del fields["signature"]
        return replace(request, body=self._encode(fields))

    @functools.cached_property
    def _foreign_signer(self) -> x509.Certificate:
        """UnionPay's CN on a certificate that does not chain to the trusted root."""
        return self_signed(foreign_key(), self.signer_cn)

    def resign(
        self, request: IncomingRequest, *, foreign: bool = False, merchant: str | None = None
    ) -> IncomingRequest:
        fields = {k: v for k, v in form_fields(request.body).items() if k != "signature"}
        if merchant is not None:
            fields["merId"] = merchant
        if foreign:
            key, cert = foreign_key(), self._foreign_signer
        else:
            key = private_key("unionpay/unionpay_sign_key.pem")
            cert = certificate("unionpay/unionpay_sign_cert.pem")
        pem = cert.public_bytes(serialization.Encoding.PEM).decode().strip()
        fields["signPubKeyCert"] = "\r\n".join(pem.splitlines())
        # signMethod 01: SHA256withRSA over the hex SHA-256 of the sorted k=v&k=v string
        content = "&".join(f"{k}={fields[k]}" for k in sorted(fields))
        digest = hashlib.sha256(content.encode()).hexdigest().encode()
        fields["signature"] = rsa_sha256(key, digest)
        return replace(request, body=self._encode(fields))

    def wrong_merchant_key(self, tmp_path: Path) -> dict[str, Any]:
        key = foreign_key()
        cert = self_signed(key, f"041@{self.mer_id}@someone@00000001")
        return {
            "sign_key_path": write(tmp_path, "key.pem", pem_private(key)),
            "sign_cert_path": write(
                tmp_path, "cert.pem", cert.public_bytes(serialization.Encoding.PEM)
            ),
        }

    async def distrustful_adapter(self, channel: Channel, tmp_path: Path) -> ChannelAdapter:
        # answers altered on the way, after UnionPay signed them
        def alter(path: str, body: bytes) -> bytes:
            return body.replace(b"respMsg=", b"respMsg=tampered ", 1)

        proxy = await channel.proxy(alter)
        return channel.build(base_url=proxy.base_url)


BANK, WECHAT, ALIPAY, UNIONPAY = BankDriver(), WechatDriver(), AlipayDriver(), UnionPayDriver()
DRIVERS: tuple[Driver, ...] = (BANK, WECHAT, ALIPAY, UNIONPAY)
