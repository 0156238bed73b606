"""Merchant request bodies (strict: unknown fields, floats, booleans and strings as amounts are
refused) and the rendering of stored rows into the API's objects. Pure."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from gateway.domain.states import EVENT_TYPES

METHODS = ("card", "wechat_qr", "alipay_qr", "unionpay_qr")
MAX_AMOUNT = 10**11

OrderId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Amount = Annotated[StrictInt, Field(ge=1, le=MAX_AMOUNT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Payer(_Strict):
    ip: StrictStr | None = Field(None, max_length=45)
    id: StrictStr | None = Field(None, min_length=1, max_length=64)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be an IPv4 or IPv6 address") from None
        return value


def _check_url(value: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in value):
        # urlsplit silently drops tabs and newlines: refuse them (header injection)
        raise ValueError("must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    return value


class CreatePaymentRequest(_Strict):
    merchant_order_id: OrderId
    amount: Amount
    currency: Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
    method: Literal["card", "wechat_qr", "alipay_qr", "unionpay_qr"]
    description: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    notify_url: Annotated[StrictStr, Field(max_length=2048)] | None = None
    expires_in: Annotated[StrictInt, Field(ge=60, le=86400)] = 900
    metadata: dict[
        Annotated[StrictStr, Field(min_length=1, max_length=40)],
        Annotated[StrictStr, Field(max_length=500)],
    ] = Field(default_factory=dict, max_length=20)
    payer: Payer | None = None

    @field_validator("notify_url")
    @classmethod
    def _notify_url(cls, value: str | None) -> str | None:
        return _check_url(value) if value is not None else None


class CreateRefundRequest(_Strict):
    merchant_refund_id: OrderId
    amount: Amount
    reason: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None


class EmptyRequest(_Strict):
    pass


class CreateWebhookEndpointRequest(_Strict):
    url: Annotated[StrictStr, Field(max_length=2048)]
    events: Annotated[list[StrictStr], Field(min_length=1, max_length=len(EVENT_TYPES))]

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)}")
        if len(set(value)) != len(value):
            raise ValueError("event types must not repeat")
        return value


class Row(Protocol):
    """A stored row: a dict or a database record."""

    def __getitem__(self, key: str, /) -> Any: ...


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def payment_view(row: Row) -> dict[str, Any]:
    failure = None
    if row["failure_code"]:
        failure = {"code": row["failure_code"], "message": row["failure_message"] or ""}
    pending = row["status"] == "pending"
    return {
        "id": row["id"],
        "object": "payment",
        "merchant_order_id": row["merchant_order_id"],
        "status": row["status"],
        "amount": row["amount"],
        "currency": row["currency"],
        "method": row["method"],
        "description": row["description"],
        "channel": row["channel"],
        "channel_order_id": row["channel_order_id"],
        "channel_trade_no": row["channel_trade_no"],
        "next_action": row["next_action"] if pending else None,
        "refunded_amount": row["refunded_amount"],
        "failure": failure,
        "notify_url": row["notify_url"],
        "metadata": row["metadata"] or {},
        "created_at": rfc3339(row["created_at"]),
        "expires_at": rfc3339(row["expires_at"]),
        "paid_at": rfc3339(row["paid_at"]),
    }


def refund_view(row: Row) -> dict[str, Any]:
    failure = None
    if row["failure_code"]:
        failure = {"code": row["failure_code"], "message": row["failure_message"] or ""}
    return {
        "id": row["id"],
        "object": "refund",
        "payment_id": row["payment_id"],
        "merchant_refund_id": row["merchant_refund_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "reason": row["reason"],
        "status": row["status"],
        "failure": failure,
        "created_at": rfc3339(row["created_at"]),
        "completed_at": rfc3339(row["completed_at"]),
    }


def event_body(
    event_id: str, event_type: str, created_at: datetime, obj: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": event_id,
        "type": event_type,
        "created_at": rfc3339(created_at),
        "data": {"object": obj},
    }


def endpoint_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "webhook_endpoint",
        "url": row["url"],
        "events": list(row["events"]),
        "status": row["status"],
        "disabled_reason": row["disabled_reason"],
        "created_at": rfc3339(row["created_at"]),
    }


def delivery_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "webhook_delivery",
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "endpoint_id": row["endpoint_id"],
        "url": row["url"],
        "status": "pending" if row["status"] == "delivering" else row["status"],
        "attempts": row["attempts"],
        "next_attempt_at": rfc3339(row["next_attempt_at"]) if row["status"] == "pending" else None,
        "last_status_code": row["last_status_code"],
        "last_error": row["last_error"],
        "delivered_at": rfc3339(row["delivered_at"]),
        "created_at": rfc3339(row["created_at"]),
        "attempt_log": row["attempt_log"],
    }
