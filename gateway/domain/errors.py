"""The gateway's errors: one hierarchy, each kind with its stable API code (API.md §1.2). Services,
auth and risk raise these; they know nothing of HTTP. Only `gateway.api.problems` turns them into
RFC 9457 answers, with the status its one table gives each kind. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

TITLES: dict[str, str] = {
    "invalid_request": "Invalid request",
    "malformed_json": "Malformed JSON",
    "unsupported_media_type": "Unsupported media type",
    "payload_too_large": "Payload too large",
    "malformed_authorization": "Malformed authorization",
    "unknown_key": "Unknown key",
    "algorithm_mismatch": "Algorithm mismatch",
    "invalid_signature": "Invalid signature",
    "timestamp_out_of_window": "Timestamp out of window",
    "nonce_replayed": "Nonce replayed",
    "idempotency_key_reused": "Idempotency key reused",
    "idempotency_key_in_use": "Idempotency key in use",
    "duplicate_merchant_order_id": "Duplicate merchant order id",
    "duplicate_merchant_refund_id": "Duplicate merchant refund id",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "invalid_state": "Invalid state",
    "no_route": "No route",
    "risk_rejected": "Risk rejected",
    "channel_unavailable": "Channel unavailable",
    "refund_exceeds_amount": "Refund exceeds amount",
    "service_unavailable": "Service unavailable",
    "unauthenticated": "Unauthenticated",
    "forbidden": "Forbidden",
    "internal_error": "Internal error",
}
"""Every code an error answer may carry, with its problem `title`."""


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class GatewayError(Exception):
    """Something the gateway refuses or cannot do. `code` is the stable code merchants see,
    `detail` the sentence they read."""

    code: str = "internal_error"
    retry_after_s: int | None = None
    """When set: the caller may retry after this many seconds (the answer's Retry-After)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def members(self) -> dict[str, str]:
        """Extra members of the problem answer (e.g. the `payment_id` a duplicate refers to)."""
        return {}


class InvalidRequest(GatewayError):
    code = "invalid_request"

    def __init__(self, detail: str, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.errors = tuple(errors)

    @classmethod
    def field(cls, name: str, message: str, detail: str | None = None) -> InvalidRequest:
        """One field is wrong: `detail` (default: the field's message) names it."""
        return cls(detail if detail is not None else message, [FieldError(name, message)])


class MalformedJson(GatewayError):
    code = "malformed_json"


class UnsupportedMediaType(GatewayError):
    code = "unsupported_media_type"


class PayloadTooLarge(GatewayError):
    code = "payload_too_large"


AuthCode = Literal[
    "malformed_authorization",
    "unknown_key",
    "algorithm_mismatch",
    "invalid_signature",
    "timestamp_out_of_window",
    "nonce_replayed",
]


class AuthFailed(GatewayError):
    """A merchant request whose signature does not hold (API.md §1.1); `code` says why."""

    def __init__(self, code: AuthCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class Unauthenticated(GatewayError):
    """An operators' request with no identity, or an unknown, revoked or disabled one."""

    code = "unauthenticated"

    def __init__(self, detail: str, *, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.challenge = challenge
        """The authentication scheme to ask for (WWW-Authenticate), if any."""


class SignInRefused(Unauthenticated):
    """A console sign-in that did not succeed: wrong email or password (never said which), a
    disabled account, or too many failures lately (then `retry_after_s` says when to try
    again)."""

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Forbidden(GatewayError):
    """An operator whose role does not hold the permission asked for (or a console change
    without its session's CSRF token)."""

    code = "forbidden"


class NotFound(GatewayError):
    code = "not_found"

    @classmethod
    def of(cls, what: str) -> NotFound:
        return cls(f"No such {what}.")


class InvalidState(GatewayError):
    """The object exists but is not in a state that allows this."""

    code = "invalid_state"


class Conflict(GatewayError):
    """The request contradicts what an earlier request made."""


class DuplicateMerchantOrderId(Conflict):
    code = "duplicate_merchant_order_id"

    def __init__(self, merchant_order_id: str, payment_id: str) -> None:
        super().__init__(
            f"merchant_order_id {merchant_order_id!r} is already used by a payment with a "
            "different amount, currency or method."
        )
        self.payment_id = payment_id

    def members(self) -> dict[str, str]:
        return {"payment_id": self.payment_id}


class DuplicateMerchantRefundId(Conflict):
    code = "duplicate_merchant_refund_id"

    def __init__(self, merchant_refund_id: str, refund_id: str) -> None:
        super().__init__(
            f"merchant_refund_id {merchant_refund_id!r} is already used by a refund of a "
            "different amount."
        )
        self.refund_id = refund_id

    def members(self) -> dict[str, str]:
        return {"refund_id": self.refund_id}


class RefundExceedsAmount(Conflict):
    code = "refund_exceeds_amount"

    def __init__(self, total: int, amount: int, left: int) -> None:
        super().__init__(
            f"Refunds would total {total}, more than the payment's {amount} "
            f"({left} left to refund)."
        )


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"

    def __init__(self) -> None:
        super().__init__("This Idempotency-Key was used with a different request.")


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"
    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__("A request with this Idempotency-Key is still being processed.")


class NoRoute(GatewayError):
    code = "no_route"

    def __init__(self, method: str, amount: int, currency: str) -> None:
        super().__init__(f"No channel takes {method} payments of {amount} {currency}.")


class RiskRejected(GatewayError):
    code = "risk_rejected"

    def __init__(self, detail: str, rule: str) -> None:
        super().__init__(detail)
        self.rule = rule

    def members(self) -> dict[str, str]:
        return {"rule": self.rule}


class ChannelUnavailable(GatewayError):
    """No channel can take the call now; nothing was done."""

    code = "channel_unavailable"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(GatewayError):
    """Something the gateway depends on (PostgreSQL, Redis, the master key) is not there;
    nothing was done."""

    code = "service_unavailable"

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
