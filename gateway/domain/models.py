"""The merchant API's bodies: requests (strict: unknown fields, floats, booleans and strings as
amounts are refused) and the objects it answers with, rendered from the store's records
(`gateway.domain.records`). The OpenAPI document is generated from these models
(`gateway.api.openapi`), so what it describes is what is sent. Callback URLs are checked
against the `DestinationPolicy` given in the validation context (`DESTINATIONS`; the strict
default when none is). Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from gateway.domain.errors import TITLES, FieldError
from gateway.domain.records import (
    CallbackAttempt,
    Delivery,
    Failure,
    Payment,
    QueuedDelivery,
    Refund,
    WebhookEndpoint,
)
from gateway.domain.states import (
    EVENT_TYPES,
    DeliveryStatus,
    EndpointStatus,
    PaymentStatus,
    RefundStatus,
)
from gateway.domain.webhooks import DestinationPolicy

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


DESTINATIONS = "destinations"
"""The validation context's key for the `DestinationPolicy` callback URLs are checked against
(`model_validate(data, context={DESTINATIONS: policy})`)."""
_STRICT_DESTINATIONS = DestinationPolicy()


def _check_url(value: str, info: ValidationInfo) -> str:
    """A callback URL (API.md §1.6): absolute http(s), no credentials, and a destination the
    policy allows (the DestinationRefused it raises is a ValueError: a field error)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        # urlsplit silently drops tabs and newlines: refuse them (header injection)
        raise ValueError("must not contain whitespace or control characters")
    context = info.context if isinstance(info.context, Mapping) else {}
    policy = context.get(DESTINATIONS, _STRICT_DESTINATIONS)
    assert isinstance(policy, DestinationPolicy), policy
    policy.check_url(value)
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
    def _notify_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_url(value, info) if value is not None else None


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
    def _url(cls, value: str, info: ValidationInfo) -> str:
        return _check_url(value, info)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)}")
        if len(set(value)) != len(value):
            raise ValueError("event types must not repeat")
        return value


# ---- the objects the API answers with ---------------------------------------------------------


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _rfc3339_ms(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_DATE_TIME = WithJsonSchema({"type": "string", "format": "date-time"})
Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str), _DATE_TIME]
"""A moment, rendered RFC 3339 in UTC to the second."""
TimestampMs = Annotated[datetime, PlainSerializer(_rfc3339_ms, return_type=str), _DATE_TIME]
"""A moment, rendered RFC 3339 in UTC to the millisecond."""


class _Object(BaseModel):
    """An object the API sends: every member always present (null when it has no value)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)


class FailureObject(_Object):
    code: str
    message: str

    @classmethod
    def of(cls, failure: Failure | None) -> FailureObject | None:
        return None if failure is None else cls(code=failure.code, message=failure.message)


class NextActionObject(_Object):
    type: Literal["qr_code", "redirect"]
    url: str


class PaymentObject(_Object):
    id: str
    object: Literal["payment"] = "payment"
    merchant_order_id: str
    status: PaymentStatus
    amount: int
    currency: str
    method: str
    description: str
    channel: str | None
    channel_order_id: str | None
    channel_trade_no: str | None
    next_action: NextActionObject | None
    """While the payment is pending; null after."""
    refunded_amount: int
    failure: FailureObject | None
    notify_url: str | None
    metadata: dict[str, str]
    created_at: Timestamp
    expires_at: Timestamp
    paid_at: Timestamp | None

    @classmethod
    def of(cls, p: Payment) -> PaymentObject:
        next_action = None
        if p.status is PaymentStatus.PENDING and p.next_action is not None:
            next_action = NextActionObject.model_validate(
                {"type": p.next_action.type, "url": p.next_action.url}
            )
        return cls(
            id=p.id,
            merchant_order_id=p.merchant_order_id,
            status=p.status,
            amount=p.amount,
            currency=p.currency,
            method=p.method,
            description=p.description,
            channel=p.channel,
            channel_order_id=p.channel_order_id,
            channel_trade_no=p.channel_trade_no,
            next_action=next_action,
            refunded_amount=p.refunded_amount,
            failure=FailureObject.of(p.failure),
            notify_url=p.notify_url,
            metadata=p.metadata,
            created_at=p.created_at,
            expires_at=p.expires_at,
            paid_at=p.paid_at,
        )


class RefundObject(_Object):
    id: str
    object: Literal["refund"] = "refund"
    payment_id: str
    merchant_refund_id: str
    amount: int
    currency: str
    reason: str | None
    status: RefundStatus
    failure: FailureObject | None
    created_at: Timestamp
    completed_at: Timestamp | None

    @classmethod
    def of(cls, r: Refund) -> RefundObject:
        return cls(
            id=r.id,
            payment_id=r.payment_id,
            merchant_refund_id=r.merchant_refund_id,
            amount=r.amount,
            currency=r.currency,
            reason=r.reason,
            status=r.status,
            failure=FailureObject.of(r.failure),
            created_at=r.created_at,
            completed_at=r.completed_at,
        )


class WebhookEndpointObject(_Object):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    status: EndpointStatus
    disabled_reason: str | None
    created_at: Timestamp

    @classmethod
    def of(cls, e: WebhookEndpoint) -> WebhookEndpointObject:
        return cls(
            id=e.id,
            url=e.url,
            events=list(e.events),
            status=e.status,
            disabled_reason=e.disabled_reason,
            created_at=e.created_at,
        )


class CallbackAttemptObject(_Object):
    attempted_at: TimestampMs
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response_body: str | None

    @classmethod
    def of(cls, a: CallbackAttempt) -> CallbackAttemptObject:
        return cls(
            attempted_at=a.attempted_at,
            status_code=a.status_code,
            latency_ms=a.latency_ms,
            error=a.error,
            response_body=a.response_body,
        )


PublicDeliveryStatus = Literal["pending", "succeeded", "failed"]
_PUBLIC_DELIVERY_STATUS: dict[DeliveryStatus, PublicDeliveryStatus] = {
    DeliveryStatus.PENDING: "pending",
    DeliveryStatus.SUCCEEDED: "succeeded",
    DeliveryStatus.FAILED: "failed",
}


class WebhookDeliveryObject(_Object):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    endpoint_id: str | None
    """Null for the payment's own notify_url."""
    url: str
    status: PublicDeliveryStatus
    attempts: int
    next_attempt_at: Timestamp | None
    """While the delivery waits for its next attempt."""
    last_status_code: int | None
    last_error: str | None
    delivered_at: Timestamp | None
    created_at: Timestamp
    attempt_log: list[CallbackAttemptObject]

    @classmethod
    def of(cls, d: Delivery) -> WebhookDeliveryObject:
        return cls(
            id=d.id,
            event_id=d.event_id,
            event_type=d.event_type,
            endpoint_id=d.endpoint_id,
            url=d.url,
            status=_PUBLIC_DELIVERY_STATUS[d.status.public],
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at if d.status is DeliveryStatus.PENDING else None,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            delivered_at=d.delivered_at,
            created_at=d.created_at,
            attempt_log=[CallbackAttemptObject.of(a) for a in d.attempt_log],
        )


class QueuedDeliveryObject(_Object):
    """The answer to a retry: the delivery waits for its next attempt, which is now."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    status: Literal["pending"] = "pending"
    event_id: str

    @classmethod
    def of(cls, q: QueuedDelivery) -> QueuedDeliveryObject:
        return cls(id=q.id, event_id=q.event_id)


class WebhookEndpointList(_Object):
    data: list[WebhookEndpointObject]
    has_more: bool


class WebhookDeliveryList(_Object):
    data: list[WebhookDeliveryObject]
    has_more: bool


class FieldErrorObject(_Object):
    field: str
    message: str


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details, API.md §1.2). The members after `request_id`
    are present only when they apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    title: str
    status: int
    detail: str
    code: Annotated[str, Field(json_schema_extra={"enum": sorted(TITLES)})]
    request_id: str
    errors: list[FieldErrorObject] | None = None
    """Field errors (400 invalid_request)."""
    payment_id: str | None = None
    """The payment a duplicate merchant_order_id belongs to."""
    refund_id: str | None = None
    """The refund a duplicate merchant_refund_id belongs to."""
    rule: str | None = None
    """The risk rule that refused the payment."""

    @classmethod
    def of(
        cls,
        status: int,
        code: str,
        detail: str,
        request_id: str,
        errors: Sequence[FieldError] = (),
        members: Mapping[str, str] | None = None,
    ) -> Problem:
        return cls.model_validate(
            {
                "type": f"https://docs.gateway.example/errors/{code}",
                "title": TITLES.get(code, code.replace("_", " ").capitalize()),
                "status": status,
                "detail": detail,
                "code": code,
                "request_id": request_id,
                "errors": [{"field": e.field, "message": e.message} for e in errors] or None,
                **(members or {}),
            }
        )

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, exclude_none=True)


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    PaymentObject,
    RefundObject,
    WebhookEndpointObject,
    WebhookEndpointList,
    WebhookDeliveryObject,
    WebhookDeliveryList,
    QueuedDeliveryObject,
    Problem,
)
"""Every body the merchant API answers with (the OpenAPI document describes each)."""


def event_body(
    event_id: str, event_type: str, created_at: datetime, obj: PaymentObject | RefundObject
) -> dict[str, Any]:
    """A callback's body (API.md §2): the event and the object as it is after the event."""
    return {
        "id": event_id,
        "type": event_type,
        "created_at": rfc3339(created_at),
        "data": {"object": obj.model_dump(mode="json")},
    }
