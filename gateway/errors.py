"""Errors the merchant API answers with: RFC 9457 problem details with stable codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    "unauthorized": "Unauthorized",
    "internal_error": "Internal error",
}


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


@dataclass(slots=True)
class ApiError(Exception):
    """An answer to the client that is not a success. Raised anywhere below the API layer."""

    status: int
    code: str
    detail: str
    errors: Sequence[FieldError] = ()
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail}"

    def problem(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://docs.gateway.example/errors/{self.code}",
            "title": TITLES.get(self.code, self.code.replace("_", " ").capitalize()),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
        }
        if self.errors:
            body["errors"] = [{"field": e.field, "message": e.message} for e in self.errors]
        body.update(self.extra)
        return body


def invalid(field_name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", message, [FieldError(field_name, message)])


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"No such {what}.")
